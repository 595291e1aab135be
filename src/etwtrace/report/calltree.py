"""Call trees from instrumented-mode events (PythonFunctionPush/Pop).

The C decoder (etwtrace._ctfdecode.fold) folds each thread's pushes and pops
into a tree of call paths with calls and inclusive/exclusive nanoseconds;
this module merges the threads of each process into one tree per process,
names the nodes and gives the views.  Memory grows with the number of
distinct call paths, not with the number of calls.

A process recorded without call times (--no-call-times) adds its calls
but no durations; when no call has a duration, the folded view weighs call
paths by calls instead.

With timelines, each thread's opens and closes of calls are kept as the
decoder's packed records (16 bytes each), in time order and properly nested.
"""

import struct
from collections import Counter

from ..trace import TASK_FILE

TIMELINE_RECORD = struct.Struct("<QII")     # ts, node, kind (0 open, 1 close)


class TimelineRecords:
    """One thread's opens and closes of calls, in a file the decoder wrote
    (etwtrace._ctfdecode.fold): read back in chunks, so a timeline export
    holds a chunk at a time, whatever the size of the trace."""

    CHUNK = 1 << 16     # records per read

    def __init__(self, file, info):
        self.file = file
        self.count = info["count"]
        self.first = info["first"]
        self.last = info["last"]

    def __bool__(self):
        return self.count > 0

    def close(self):
        self.file.close()

    def __iter__(self):
        return self.between(0, self.count)

    def between(self, first, end):
        """The records from index `first` to before `end` (each 16 bytes:
        a stretch of them is read without the ones before)."""
        size = TIMELINE_RECORD.size
        self.file.seek(first * size)
        left = end - first
        while left > 0:
            data = self.file.read(min(left, self.CHUNK) * size)
            if not data:
                return
            left -= len(data) // size
            yield from TIMELINE_RECORD.iter_unpack(data[:len(data) - len(data) % size])


# Control characters as escapes: a newline in a name must not end a line of
# folded output (or of a table).
_CONTROL = {i: f"\\x{i:02x}" for i in list(range(32)) + [127]}
_CONTROL.update({9: "\\t", 10: "\\n", 13: "\\r"})


def shown(text):
    """`text` as a report shows it: bytes that are not UTF-8 (kept as
    surrogates by the reader) as \\xNN, control characters escaped."""
    if text.isprintable():
        return text
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL)


def is_task(fields):
    """Whether a PythonFunction event describes an asyncio task's frame."""
    return fields.get("SourceFile") == TASK_FILE


def label_of(fields):
    """`qualname (file:line)` of a PythonFunction event's fields; an asyncio
    task's frame is its `task:NAME`."""
    if is_task(fields):
        return shown(fields["Name"])
    return f"{shown(fields['Name'])} ({shown(fields['SourceFile'])}:{fields['LineNumber']})"


class _Node:
    __slots__ = ("parent", "key", "calls", "inclusive", "exclusive", "children")

    def __init__(self, parent, key):
        self.parent = parent
        self.key = key          # (pid, FunctionID)
        self.calls = 0
        self.inclusive = 0
        self.exclusive = 0
        self.children = {}


class CallTree:
    def __init__(self, timeline=False):
        # A process is (pid, image) (_scan.process_name); FunctionIDs are its own.
        self.roots = {}             # (process, tid, FunctionID) -> _Node (a tree per thread)
        self.labels = {}            # (process, FunctionID) -> label
        self.timelines = [] if timeline else None   # (process, tid, node keys, records)
        self.unmatched_pops = 0
        self.mismatched_pops = 0    # returns past calls whose pops were lost
        self.unnested_pops = 0      # the same where nothing was lost: the
                                    # program switched stacks (greenlets)
        self.calls = 0
        self.timed_calls = 0
        self.untimed_pids = set()   # processes recorded without call times
        self.task_keys = set()      # (process, FunctionID) of asyncio task frames

    def function(self, pid, fields):
        self.labels[(pid, fields["FunctionID"])] = label_of(fields)
        if is_task(fields):
            self.task_keys.add((pid, fields["FunctionID"]))

    def drop_tasks(self):
        """Takes the asyncio task frames out of the tree (a report without
        --async): each one's calls go to its caller, merged with the calls
        made there outside tasks; its own time goes to the caller."""
        tasks = self.task_keys
        if not tasks:
            return
        todo = [(self.roots, None, True)]
        while todo:
            siblings, parent, at_root = todo.pop()
            while True:
                found = [(slot, n) for slot, n in siblings.items() if n.key in tasks]
                if not found:
                    break
                for slot, node in found:
                    siblings.pop(slot, None)
                    if parent is not None:
                        parent.exclusive += node.exclusive
                    for child in node.children.values():
                        # A root's slot names its thread: (process, tid, FunctionID).
                        cslot = (slot[0], slot[1], child.key[1]) if at_root else child.key
                        _merge(siblings, cslot, child, parent)
            todo.extend((n.children, n, False) for n in siblings.values())

    @property
    def has_times(self):
        """Whether any call has a duration (else only counts are known)."""
        return self.timed_calls > 0 or not self.untimed_pids

    def add_thread(self, pid, tid, folded, timed=True):
        """Merges one thread's folded stream (from _ctfdecode.fold); with
        `timed` false its calls count but their durations do not.  A return
        that closed more than the innermost open call is put down to lost
        events only when the stream lost some (folded["discarded"])."""
        if not timed and folded["calls"]:
            self.untimed_pids.add(pid)
        mine = []
        for parent, fid, calls, inclusive, exclusive in folded["nodes"]:
            key = (pid, fid)
            if parent >= 0:
                siblings, slot = mine[parent].children, key
            else:
                siblings, slot = self.roots, (pid, tid, fid)
            node = siblings.get(slot)
            if node is None:
                node = siblings[slot] = _Node(mine[parent] if parent >= 0 else None, key)
            node.calls += calls
            if timed:
                node.inclusive += inclusive
                node.exclusive += exclusive
            mine.append(node)
        self.calls += folded["calls"]
        if timed:
            self.timed_calls += folded["calls"]
        self.unmatched_pops += folded["unmatched_pops"]
        if folded.get("discarded", 0):
            self.mismatched_pops += folded["mismatched_pops"]
        else:
            self.unnested_pops += folded["mismatched_pops"]
        if self.timelines is not None and folded["timeline"] and timed:
            keys = [(pid, fid) for _parent, fid, *_ in folded["nodes"]]
            self.timelines.append((pid, tid, keys, folded["timeline"]))

    def timeline_span(self):
        """(first, last) timestamp of the calls on the timelines, or None."""
        spans = [(r.first, r.last) for _pid, _tid, _keys, r in self.timelines or ()]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def label(self, key):
        return self.labels.get(key) or f"function #{key[1]}"

    # ---- views ----

    def _walk(self):
        """((pid, tid), node, path of labels) of every node, parents first."""
        todo = [((pid, tid), n, (self.label(n.key),))
                for (pid, tid, _), n in self.roots.items()]
        while todo:
            thread, node, path = todo.pop()
            yield thread, node, path
            todo.extend((thread, c, path + (self.label(c.key),))
                        for c in node.children.values())

    def folded(self, by_thread=False):
        """Counter: root-first path of labels (with by_thread, ((pid, tid),
        path)) -> exclusive nanoseconds, or -> calls of that path when no
        call has a duration."""
        out = Counter()
        by_calls = not self.has_times
        for thread, node, path in self._walk():
            value = node.calls if by_calls else node.exclusive
            if value:
                out[(thread, path) if by_thread else path] += value
        return out

    def paths(self):
        """{((pid, tid), root-first labels): (calls, exclusive ns)} of every
        call path that was called."""
        out = {}
        for thread, node, path in self._walk():
            if node.calls or node.exclusive:
                calls, exclusive = out.get((thread, path), (0, 0))
                out[(thread, path)] = (calls + node.calls, exclusive + node.exclusive)
        return out

    def functions(self):
        """label -> FunctionStats.  Inclusive time counts each call once
        even when the function is on the stack more than once (recursion)."""
        stats = {}

        def get(label):
            s = stats.get(label)
            if s is None:
                s = stats[label] = FunctionStats(label)
            return s

        # Depth-first with a count of each label on the current path, so a
        # recursive call's inclusive time is not added twice.
        on_path = Counter()
        todo = [(n, False) for n in self.roots.values()]
        while todo:
            node, leaving = todo.pop()
            label = self.label(node.key)
            if leaving:
                on_path[label] -= 1
                continue
            s = get(label)
            s.calls += node.calls
            s.exclusive += node.exclusive
            if not on_path[label]:
                s.inclusive += node.inclusive
            if node.parent is not None:
                parent = self.label(node.parent.key)
                s.callers[parent] += node.calls
                get(parent).callees[label] += node.calls
            on_path[label] += 1
            todo.append((node, True))
            todo.extend((c, False) for c in node.children.values())
        return stats


def _merge(siblings, slot, node, parent):
    """Puts `node` (with its subtree) at `slot` of `siblings` under
    `parent`, adding it to the node already there."""
    todo = [(siblings, slot, node, parent)]
    while todo:
        siblings, slot, node, parent = todo.pop()
        have = siblings.get(slot)
        if have is None:
            siblings[slot] = node
            node.parent = parent
            continue
        have.calls += node.calls
        have.inclusive += node.inclusive
        have.exclusive += node.exclusive
        todo.extend((have.children, s, c, have) for s, c in node.children.items())


class FunctionStats:
    __slots__ = ("label", "calls", "inclusive", "exclusive", "callers", "callees")

    def __init__(self, label):
        self.label = label
        self.calls = 0
        self.inclusive = 0
        self.exclusive = 0
        self.callers = Counter()
        self.callees = Counter()
