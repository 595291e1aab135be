"""Call trees from instrumented-mode events (PythonFunctionPush/Pop).

Every thread's pushes and pops are folded into one tree per process: a node
per distinct call path, holding its call count and its inclusive and
exclusive nanoseconds.  Memory grows with the number of distinct call paths,
not with the number of calls.  Pops are matched as `CallStacks` matches
them: a pop with no open push (a call entered before tracing started) is
counted and ignored; a pop of a call further down the stack closes the calls
above it (events were lost).  Calls still open at the end of the trace are
closed at their thread's last event.

With `timeline=True` every closed call is also kept as a slice
(pid, tid, start, end, depth, label) for the timeline exports.
"""

from collections import Counter, defaultdict

ROOT = -1


def label_of(fields):
    """`qualname (file:line)` of a PythonFunction event's fields."""
    return f"{fields['Name']} ({fields['SourceFile']}:{fields['LineNumber']})"


class _Node:
    __slots__ = ("parent", "key", "calls", "inclusive", "exclusive", "children")

    def __init__(self, parent, key):
        self.parent = parent
        self.key = key          # (pid, FunctionID)
        self.calls = 0
        self.inclusive = 0
        self.exclusive = 0
        self.children = {}


class _Open:
    __slots__ = ("node", "start", "child_time")

    def __init__(self, node, start):
        self.node = node
        self.start = start
        self.child_time = 0


class CallTree:
    def __init__(self, timeline=False):
        self.roots = {}             # (pid, FunctionID) -> _Node
        self.labels = {}            # (pid, FunctionID) -> label
        self.slices = [] if timeline else None
        self.unmatched_pops = 0
        self.mismatched_pops = 0
        self.calls = 0
        self._stacks = defaultdict(list)    # (pid, tid) -> [_Open]
        self._last_seen = {}                # (pid, tid) -> last timestamp

    def function(self, pid, fields):
        self.labels[(pid, fields["FunctionID"])] = label_of(fields)

    def push(self, pid, tid, fid, ts):
        stack = self._stacks[(pid, tid)]
        key = (pid, fid)
        siblings = stack[-1].node.children if stack else self.roots
        node = siblings.get(key)
        if node is None:
            node = siblings[key] = _Node(stack[-1].node if stack else None, key)
        node.calls += 1
        self.calls += 1
        stack.append(_Open(node, ts))
        self._last_seen[(pid, tid)] = ts

    def pop(self, pid, tid, fid, ts):
        self._last_seen[(pid, tid)] = ts
        stack = self._stacks.get((pid, tid))
        if not stack:
            self.unmatched_pops += 1
            return
        key = (pid, fid)
        if stack[-1].node.key != key:
            self.mismatched_pops += 1
            if not any(o.node.key == key for o in stack):
                return
            while stack[-1].node.key != key:
                self._close(pid, tid, stack, ts)
        self._close(pid, tid, stack, ts)

    def _close(self, pid, tid, stack, ts):
        call = stack.pop()
        duration = max(ts - call.start, 0)
        node = call.node
        node.inclusive += duration
        node.exclusive += max(duration - call.child_time, 0)
        if stack:
            stack[-1].child_time += duration
        if self.slices is not None:
            self.slices.append((pid, tid, call.start, ts, len(stack), self.label(node.key)))

    def seen(self, pid, tid, ts):
        """Any event of a thread: calls left open end no earlier than this."""
        self._last_seen[(pid, tid)] = ts

    def open_labels(self, pid, tid):
        """Root-first labels of the thread's open calls."""
        return tuple(self.label(o.node.key) for o in self._stacks.get((pid, tid), ()))

    def finish(self):
        """Closes the calls still open at their thread's last event."""
        for (pid, tid), stack in self._stacks.items():
            end = self._last_seen.get((pid, tid), 0)
            while stack:
                self._close(pid, tid, stack, end)

    def label(self, key):
        return self.labels.get(key) or f"function #{key[1]}"

    # ---- views ----

    def _walk(self):
        """(node, path of labels) of every node, parents first."""
        todo = [(n, (self.label(n.key),)) for n in self.roots.values()]
        while todo:
            node, path = todo.pop()
            yield node, path
            todo.extend((c, path + (self.label(c.key),)) for c in node.children.values())

    def folded(self):
        """Counter: root-first path of labels -> exclusive nanoseconds."""
        out = Counter()
        for node, path in self._walk():
            if node.exclusive:
                out[path] += node.exclusive
        return out

    def call_paths(self):
        """Counter: root-first path of labels -> calls."""
        out = Counter()
        for node, path in self._walk():
            out[path] += node.calls
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


class FunctionStats:
    __slots__ = ("label", "calls", "inclusive", "exclusive", "callers", "callees", "samples")

    def __init__(self, label):
        self.label = label
        self.calls = 0
        self.inclusive = 0
        self.exclusive = 0
        self.callers = Counter()
        self.callees = Counter()
        self.samples = 0
