"""Which track of a timeline an event goes on.

A thread's events go on the thread's own track.  With report --async,
what a thread ran inside an asyncio task goes on a track of that task
(one per task and thread: a task runs on its loop's thread), named by its
`task:NAME`, so the tasks that take turns on one loop each read as a
timeline of their own, and the loop's thread keeps what ran outside them.

A sample (or a task's wait) belongs to the innermost task frame of its
stack.  A thread's calls are split into steps: from the open of a task
frame outside any task to its close, the stretch of records one step of
a task made (its awaiting tasks' frames, then its own, then its calls).
"""

from array import array

from ..scan import process_name

# Chrome's tid of a task's track: above every real tid (Linux's are below
# 2**22), one per task and thread.
_TASK_TID_BASE = 1 << 22


class Tracks:
    """The tracks of a view: keys (process, tid, task label or None)."""

    def __init__(self, view):
        self.view = view
        tree = view.tree
        if getattr(view, "tasks", False):
            self.task_keys = set(tree.task_keys)
            self.task_labels = {tree.label(k) for k in self.task_keys}
        else:
            self.task_keys, self.task_labels = set(), set()
        self._tids = {}

    def of_stack(self, proc, tid, frames):
        """The track of a stack: its innermost task's, else its thread's."""
        if self.task_labels:
            for label in reversed(frames):
                if label in self.task_labels:
                    return (proc, tid, label)
        return (proc, tid, None)

    def tid(self, track):
        """The number Chrome's events give the track as their tid."""
        proc, tid, task = track
        if task is None:
            return tid
        number = self._tids.get(track)
        if number is None:
            number = self._tids[track] = _TASK_TID_BASE + len(self._tids)
        return number

    def name(self, track):
        """A track's name within its process: the thread's name, or the
        task's label with its thread's."""
        proc, tid, task = track
        thread = self.view.threads.get((proc, tid), f"thread {tid}")
        if task is None:
            return thread
        where = thread if thread == f"thread {tid}" else f"{thread}, tid {tid}"
        return f"{task} (on {where})"

    def title(self, track):
        """`pid P NAME`: a speedscope profile's name, with the tid after a
        thread name that does not say it (other than MainThread)."""
        proc, tid, task = track
        name = self.name(track)
        if task is None and name not in ("MainThread", f"thread {tid}"):
            name = f"{name} (tid {tid})"
        return f"pid {process_name(proc)} {name}"

    def steps(self, keys, records):
        """(first record, record after the last, node index of the innermost
        task frame) of each step of a task in one thread's call records (none
        without --async): an array of triples, the records read once."""
        out = array("q")
        if not self.task_keys:
            return out
        is_task = [k in self.task_keys for k in keys]
        start = depth = 0
        inner = None          # the innermost task frame of the step's chain
        chain = False         # still opening the step's task frames
        for i, (_ts, node, kind) in enumerate(records):
            if depth == 0:
                if kind == 0 and is_task[node]:
                    start, depth, inner, chain = i, 1, node, True
                continue
            if chain and kind == 0 and is_task[node]:
                inner = node
            else:
                chain = False
            depth += -1 if kind else 1
            if depth == 0:
                out.extend((start, i + 1, inner))
        if depth:
            out.extend((start, records.count, inner))
        return out


def each_step(steps):
    """(first, end, node) of each step of Tracks.steps."""
    return zip(steps[0::3], steps[1::3], steps[2::3])


def outside(steps, count):
    """(first, end) of the stretches of a thread's records between steps."""
    at = 0
    for first, end, _node in each_step(steps):
        if first > at:
            yield at, first
        at = end
    if count > at:
        yield at, count
