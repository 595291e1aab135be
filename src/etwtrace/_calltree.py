"""Call trees from instrumented-mode events (PythonFunctionPush/Pop).

The C decoder (etwtrace._ctfdecode.fold) folds each thread's pushes and pops
into a tree of call paths with calls and inclusive/exclusive nanoseconds;
this module merges the threads of each process into one tree per process,
names the nodes and gives the views.  Memory grows with the number of
distinct call paths, not with the number of calls.

With timelines, every call is also kept as a slice
(pid, tid, start, end, depth, (pid, FunctionID)).
"""

from collections import Counter


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


class CallTree:
    def __init__(self, timeline=False):
        self.roots = {}             # (pid, FunctionID) -> _Node
        self.labels = {}            # (pid, FunctionID) -> label
        self.slices = [] if timeline else None
        self.unmatched_pops = 0
        self.mismatched_pops = 0
        self.calls = 0

    def function(self, pid, fields):
        self.labels[(pid, fields["FunctionID"])] = label_of(fields)

    def add_thread(self, pid, tid, folded):
        """Merges one thread's folded stream (from _ctfdecode.fold)."""
        mine = []
        for parent, fid, calls, inclusive, exclusive in folded["nodes"]:
            siblings = mine[parent].children if parent >= 0 else self.roots
            key = (pid, fid)
            node = siblings.get(key)
            if node is None:
                node = siblings[key] = _Node(mine[parent] if parent >= 0 else None, key)
            node.calls += calls
            node.inclusive += inclusive
            node.exclusive += exclusive
            mine.append(node)
        self.calls += folded["calls"]
        self.unmatched_pops += folded["unmatched_pops"]
        self.mismatched_pops += folded["mismatched_pops"]
        if self.slices is not None and folded["slices"]:
            nodes = folded["nodes"]
            self.slices.extend((pid, tid, start, end, depth, (pid, nodes[n][1]))
                               for start, end, depth, n in folded["slices"])

    def labelled_slices(self):
        """The slices with each call's label in place of its key."""
        label = self.label
        return [(pid, tid, start, end, depth, label(key))
                for pid, tid, start, end, depth, key in self.slices or ()]

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
