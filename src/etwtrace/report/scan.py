"""One pass over a capture, gathering what every report view needs.

Stacks (CPU samples, stack marks, off-CPU waits) are counted raw and named
once the whole capture is read: a perf sample can be stamped a few
microseconds before the PythonFunction event of the trampoline it hit (the
two recorders read their clocks apart), and a trampoline names one function
for its process's life, so naming at the end is exact.

Instrumented captures have no trampolines: there the Python part of a
native stack is the thread's open calls at the sample's time (replayed by
the C decoder once the capture is read), and goes where the evaluator is in
the native stack.

The built-in recorder's streams are decoded in C (etwtrace._ctfdecode),
which folds pushes and pops into call trees as it reads; only the other
events come back to Python, merged in time order with perf's.
"""

import bisect
import fnmatch
import os
import re
import tempfile
import warnings
from collections import Counter

from .calltree import CallTree, TimelineRecords, is_task, label_of, shown
from ..errors import Error, UsageError

# Native frames where CPython runs a Python frame: where the Python part of
# an instrumented capture's stack goes.
EVAL_SYMBOLS = ("_PyEval_EvalFrameDefault", "_PyEval_EvalFrame", "PyEval_EvalCode")


_AT = object()     # marks a stack whose Python calls are looked up by time
_TASK = object()   # the range of an asyncio task's frame, in a view without --async

# The root of a stack that perf's unwind cut short (_perfscript.whole_stack):
# shown above what was recorded, never as a shorter stack.
TRUNCATED_FRAME = "[truncated]"
_TRUNCATED = (-1, "", "")       # its raw frame, outermost

# Suffixes GCC gives the copies it makes of a function (LTO-local, ISRA,
# constant-propagated, split cold parts): one function to a reader.
_CLONE_SUFFIX = re.compile(r"(\.(lto_priv|isra|constprop|part|cold|llvm)(\.\d+)?)+$")


def clean_symbol(sym):
    return _CLONE_SUFFIX.sub("", sym)


class ReportError(Error):
    pass


def process_name(process):
    """How every view names a process, (pid, image): its pid, and for the
    programs it exec'd into, which one: `123`, `123 (exec 2)`."""
    pid, image = process
    return f"{pid}" if image == 1 else f"{pid} (exec {image})"


# The stack views, by the event that makes their stacks.
_VIEWS = {"SampledProfile": "samples", "PythonStackSample": "marks", "CSwitch": "offcpu"}


def mark_frame(text):
    """The frame a stack mark's text becomes, atop the stack it took."""
    return f"mark: {shown(text)}"


def load_stacktags(path):
    """(module glob, method glob) of every Entrypoint in a stack-tags file."""
    import xml.dom.minidom      # (5 ms to import: not for a session's commands)
    try:
        doc = xml.dom.minidom.parse(path)
    except Exception as ex:
        raise UsageError(f"cannot read stack tags {path}: {ex}") from None
    return [(e.getAttribute("Module") or "*", e.getAttribute("Method") or "*")
            for e in doc.getElementsByTagName("Entrypoint")]


class _Ranges:
    """Address ranges of one process's PythonFunction events."""

    def __init__(self):
        self.begins = []
        self.items = []

    def add(self, begin, end, label):
        if begin >= end:
            return
        i = bisect.bisect_left(self.begins, begin)
        if i < len(self.begins) and self.begins[i] == begin:
            self.items[i] = (begin, end, label)
            return
        self.begins.insert(i, begin)
        self.items.insert(i, (begin, end, label))

    def find(self, ip):
        i = bisect.bisect_right(self.begins, ip) - 1
        if i >= 0:
            begin, end, label = self.items[i]
            if begin <= ip < end:
                return label
        return None


class Cut:
    """The part of a capture a report shows: processes, threads (None for
    all) and a time window [start, end) in absolute nanoseconds, or
    `since`/`until` seconds after the capture's first event (None for
    open), which the Scan turns into the absolute window."""

    def __init__(self, pids=None, tids=None, start=0, end=2**64 - 1, since=None, until=None):
        self.pids, self.tids, self.start, self.end = pids, tids, start, end
        self.since, self.until = since, until

    def every_thread(self):
        """The same time window over every process and thread."""
        return Cut(start=self.start, end=self.end, since=self.since, until=self.until)

    def from_origin(self, origin):
        """The cut with its seconds made absolute from `origin` (None, a
        capture without events: unchanged)."""
        cut = Cut(self.pids, self.tids, self.start, self.end)
        if origin is not None:
            if self.since is not None:
                cut.start = origin + int(self.since * 1e9)
            if self.until is not None:
                cut.end = origin + int(self.until * 1e9)
        return cut

    def process(self, pid):
        return self.pids is None or pid in self.pids

    def thread(self, pid, tid):
        return self.process(pid) and (self.tids is None or tid in self.tids)

    def holds(self, pid, tid, ts):
        return self.start <= ts < self.end and self.thread(pid, tid)


ALL = Cut()


class Scan:
    """Reads a capture (a trace.capture.Capture) once, the part `cut`
    selects.  Views:

    samples / marks / offcpu: Counter of root-first frame tuples (count, count,
        blocked ns); by_thread: the same per thread, {view name: Counter of
        ((process, tid), frames)}; stack marks end with a `mark: TEXT` frame;
    tree: the instrumented call tree (CallTree), empty without pushes;
    threads: {(process, tid): name} (its Python name where the capture has
        one, else MainThread or `thread TID`); instants: (process, tid, ts, text);
    ranges: (process, tid, start, end, text); offcpu_slices: (process, tid,
        start, end, frames); sample_points: (process, tid, ts, frames, event
        name) of CPU samples and stack marks (timeline only);
    problems: one line for each trace (or part) that could not be read.

    With `tasks` (report --async) asyncio task frames (`task:NAME`) stay in
    every view, and `offcpu` is the time tasks waited, by the chain of awaits
    each waited at (PythonTask suspend to resume); without, they are taken
    out.

    A process is (pid, image): a process that exec'd is one per program
    (see process_name), each with its own FunctionIDs.
    """

    def __init__(self, capture, tags, timeline=False, progress=None, cut=ALL, tasks=False):
        self.capture = capture
        self.tasks = tasks
        self.task_waits = []        # (process, tid, start, end, FunctionIDs)
        self._suspended = {}        # (process, TaskId) -> (tid, start, FunctionIDs)
        self._last_waits = {}       # (process, TaskId) -> FunctionIDs of its last wait
        self.tags = tags
        if progress is not None:
            progress.expect(capture.files())
        if cut.since is not None or cut.until is not None:
            cut = cut.from_origin(capture.start)
        self.cut = cut
        self.timeline = timeline
        self.tree = CallTree(timeline=timeline)
        self.threads = {}
        self.instants = []
        self.ranges = []
        self.offcpu_slices = []
        self.sample_points = []
        self.first = None
        self.last = None
        self._ranges = {}
        self._raw = {"SampledProfile": Counter(), "PythonStackSample": Counter(), "CSwitch": Counter()}
        self._timeline_files = []     # closed by close()
        self._raw_points = []
        self._open_ranges = {}
        self._call_streams = {}     # (process, tid) -> stream with pushes
        self._names = {}            # (process, tid) -> its Python name
        self.problems = []
        try:
            self._read(progress)
        finally:
            if progress is not None:
                progress.close()
        if not tasks:
            self.tree.drop_tasks()
        self._name_all()

    def close(self):
        """Lets go of the timelines' temporary files."""
        for f in self._timeline_files:
            f.close()
        self._timeline_files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def lost_events(self):
        """Words for the events the recorder could not keep (and why
        recording stopped early, if it did), or None."""
        return self.capture.lost_events()

    def untraced_children(self):
        """One line naming the child processes the capture says were
        started but not traced (trace/children.py), or None."""
        from ..trace.children import describe
        return describe(self.capture.untraced_children())

    # ---- reading ----

    def _read(self, progress):
        from ..trace.capture import TraceError
        from .._ctfdecode import Merge
        capture = self.capture
        tree = self.tree
        cut = self.cut
        sources = []
        for problem in capture.problems:
            self._problem(problem)
        streams = capture.streams
        # Each built-in stream is folded in C (pushes and pops into the call
        # tree); its other events are merged in time order with perf's.
        readable = 0
        for s in streams:
            pid, proc = s.pid, s.process
            if not cut.process(pid):
                readable += 1
                continue
            # A thread's timeline goes to a file of its own, read back as it
            # is written out: memory does not grow with the trace.
            records = tempfile.TemporaryFile() if self.timeline else None
            if records is not None:
                self._timeline_files.append(records)
            try:
                # What the reader warns of (damage, a ring left out) is kept,
                # for the report to say.
                with warnings.catch_warnings(record=True) as said:
                    warnings.simplefilter("always")
                    folded, events = s.fold(timeline=records, start=cut.start, end=cut.end)
            except TraceError as ex:
                self._problem(f"process {process_name(proc)} thread left out: {ex}")
                continue
            finally:
                for w in said:
                    self._problem(str(w.message))
            if not folded["error"] or folded["nodes"] or events:
                readable += 1       # damage at its very start leaves nothing of it
            if records is not None:
                folded["timeline"] = TimelineRecords(records, folded["timeline"])
            sources.append(events)
            if not cut.thread(pid, folded["tid"]):
                continue    # its PythonFunction events still name others' frames
            tree.add_thread(proc, folded["tid"], folded, timed=s.call_times)
            if folded["calls"]:
                self._call_streams[(proc, folded["tid"])] = s
                self.threads.setdefault((proc, folded["tid"]),
                                        self._thread_name(proc, folded["tid"]))
            update = progress and progress.reader(s.path)
            if update:
                update(os.path.getsize(s.path))
        perf = capture.perf_events(progress and capture.perf_script
                                   and progress.reader(capture.perf_script))
        if self.problems and not readable and perf is None:
            raise TraceError(f"{capture.path}: no process's trace could be read: "
                             f"{self.problems[0]}")
        if perf is not None:
            sources.append(perf)
        for e in Merge(sources):
            name = e.name
            if name == "PythonThreadName":
                # Names a thread whenever it was written (often at the end).
                if cut.process(e.pid) and e.fields.get("Name"):
                    self._names[((e.pid, e.image), e.tid)] = e.fields["Name"]
                continue
            if name != "PythonFunction" and not cut.holds(e.pid, e.tid, e.timestamp):
                continue
            if self.first is None:
                self.first = e.timestamp
            self.last = e.timestamp
            proc = (e.pid, e.image)
            if name == "PythonFunction":
                if not cut.process(e.pid):
                    continue
                f = e.fields
                tree.function(proc, f)
                if is_task(f) and not self.tasks:
                    named = _TASK
                elif f.get("IsPythonCode", 1):
                    named = label_of(f)
                else:
                    # A native function the BPF sampler's samples land in:
                    # named as perf names native frames.
                    named = (f["Name"], f["SourceFile"])
                self._ranges.setdefault(proc, _Ranges()).add(
                    f["BeginAddress"], f["EndAddress"], named)
            elif name in self._raw:
                self._stack_event(e, proc)
            elif name == "PythonThread":
                if e.opcode == "start":
                    self.threads.setdefault((proc, e.tid), self._thread_name(proc, e.tid))
            elif name == "PythonMark":
                self._mark(e, proc)
            elif name == "PythonTask":
                self._task_event(e, proc)
        span = tree.timeline_span()
        if span:
            self.first = span[0] if self.first is None else min(self.first, span[0])
            self.last = span[1] if self.last is None else max(self.last, span[1])

    def _problem(self, text):
        if text not in self.problems:
            self.problems.append(text)

    def _thread_name(self, process, tid):
        return "MainThread" if process[0] == tid else f"thread {tid}"

    def _stack_event(self, e, proc):
        if e.name == "CSwitch":
            wait = e.fields.get("OffCpuTime")
            if not wait or e.fields.get("Preempted"):
                return      # still runnable, or never ran again: not a wait
            weight = wait
        else:
            weight = 1
        frames = getattr(e, "frames", ())
        raw = tuple((ip, *(frames[i] if i < len(frames) else ("", "")))
                    for i, ip in enumerate(e.stack))
        if e.fields.get("Truncated"):
            raw += (_TRUNCATED,)
        # The thread's open Python calls, when it made any: looked up by
        # time once the capture is read (_resolve_open_calls).
        python = (_AT, e.tid, e.timestamp) if (proc, e.tid) in self._call_streams else ()
        if not raw and not python:
            return
        mark = e.fields.get("Mark") if e.name == "PythonStackSample" else None
        key = (proc, e.tid, raw, python, mark)
        self._raw[e.name][key] += weight
        if self.timeline:
            end = e.timestamp + (weight if e.name == "CSwitch" else 0)
            self._raw_points.append((e.name, proc, e.tid, e.timestamp, end, key))

    def _mark(self, e, proc):
        text = e.fields.get("Mark", "")
        key = (proc, e.tid)
        self.threads.setdefault(key, self._thread_name(proc, e.tid))
        if e.opcode is None:
            self.instants.append((proc, e.tid, e.timestamp, text))
        elif e.opcode == "start":
            self._open_ranges.setdefault(key, []).append((text, e.timestamp))
        else:
            opened = self._open_ranges.get(key, [])
            for i in range(len(opened) - 1, -1, -1):
                if opened[i][0] == text:
                    _, start = opened.pop(i)
                    self.ranges.append((proc, e.tid, start, e.timestamp, text))
                    break

    def _task_event(self, e, proc):
        """A task's step ends waiting (suspend) or begins (resume): the
        wait between them is the task's, at the awaits the suspend names."""
        key = (proc, e.fields.get("TaskId"))
        if e.opcode == "suspend":
            # An empty chain: where the task waited the last time.
            fids = tuple(e.stack) or self._last_waits.get(key, ())
            self._last_waits[key] = fids
            self._suspended[key] = (e.tid, e.timestamp, fids)
            return
        waited = self._suspended.pop(key, None)
        if waited is not None:
            tid, start, fids = waited
            self.task_waits.append((proc, tid, start, e.timestamp, fids))

    # ---- naming ----

    def _resolve_open_calls(self):
        """Replaces each stack's (_AT, tid, ts) placeholder by the labels
        of the calls open on that thread at that time."""
        wanted = {}
        for raw in self._raw.values():
            for proc, _tid, _stack, python, _mark in raw:
                if python and python[0] is _AT:
                    wanted.setdefault((proc, python[1]), set()).add(python[2])
        if not wanted:
            return
        open_at = {}
        for (proc, tid), times in wanted.items():
            times = sorted(times)
            stacks = self._call_streams[(proc, tid)].stacks_at(times)
            tasks = () if self.tasks else self.tree.task_keys
            for ts, fids in zip(times, stacks):
                open_at[(proc, tid, ts)] = tuple(self.tree.label((proc, f)) for f in fids
                                                 if (proc, f) not in tasks)
        renamed = {}
        for kind, raw in self._raw.items():
            resolved = Counter()
            for key, weight in raw.items():
                proc, tid, stack, python, mark = key
                if python and python[0] is _AT:
                    new = renamed[key] = (proc, tid, stack, open_at[(proc, python[1], python[2])],
                                          mark)
                    resolved[new] += weight
                else:
                    resolved[key] += weight
            self._raw[kind] = resolved
        self._raw_points = [(kind, proc, tid, start, end, renamed.get(key, key))
                            for kind, proc, tid, start, end, key in self._raw_points]

    def _name_all(self):
        self._resolve_open_calls()
        if self.tasks:
            self._take_task_waits()
        for (proc, tid), opened in self._open_ranges.items():
            for text, start in opened:
                self.ranges.append((proc, tid, start, self.last, text))
        names = {}
        views = {}
        self.by_thread = {}
        for kind, raw in self._raw.items():
            named = Counter()
            threads = Counter()
            for key, weight in raw.items():
                frames = names.get(key)
                if frames is None:
                    frames = names[key] = self._name(*key)
                if frames:
                    named[frames] += weight
                    threads[((key[0], key[1]), frames)] += weight
                    self.threads.setdefault(key[:2], self._thread_name(*key[:2]))
            views[kind] = named
            self.by_thread[_VIEWS[kind]] = threads
        self.samples = views["SampledProfile"]
        self.marks = views["PythonStackSample"]
        self.offcpu = views["CSwitch"]
        # What of each view is under TRUNCATED_FRAME (count, or ns off-CPU).
        self.truncated = {_VIEWS[kind]: sum(w for frames, w in named.items()
                                            if frames[0] == TRUNCATED_FRAME)
                          for kind, named in views.items()}
        for kind, proc, tid, start, end, key in self._raw_points:
            frames = names.get(key)
            if not frames:
                continue
            self.threads.setdefault((proc, tid), self._thread_name(proc, tid))
            if kind == "CSwitch":
                self.offcpu_slices.append((proc, tid, start, end, frames))
            else:
                self.sample_points.append((proc, tid, start, frames, kind))
        self._raw = self._raw_points = None
        for key in self.threads:
            if key in self._names:
                self.threads[key] = self._names[key]

    def _take_task_waits(self):
        """--async: the off-CPU view becomes the time each task waited,
        from suspend to resume, its stack the chain it waited at (as the
        Python part of a stack with no native frames).  A task still
        waiting when the capture ends waited until its end."""
        waits = self.task_waits
        for (proc, _task), (tid, start, fids) in self._suspended.items():
            if self.last is not None and self.last > start:
                waits.append((proc, tid, start, self.last, fids))
        self._suspended = {}
        raw = Counter()
        points = [p for p in self._raw_points if p[0] != "CSwitch"]
        for proc, tid, start, end, fids in waits:
            key = (proc, tid, (), tuple(self.tree.label((proc, f)) for f in fids), None)
            raw[key] += end - start
            if self.timeline:
                points.append(("CSwitch", proc, tid, start, end, key))
        self._raw["CSwitch"] = raw
        self._raw_points = points

    def _name(self, proc, tid, raw, python, mark):
        """Root-first frame labels of one raw stack (a stack mark's text
        last)."""
        ranges = self._ranges.get(proc)
        tags = self.tags
        frames = []
        for ip, sym, dso in reversed(raw):
            if ip == 0xFFFFFFFFFFFFFFFF:
                continue    # perf's marker for an unwind that stopped early
            if ip == _TRUNCATED[0]:
                frames.append(TRUNCATED_FRAME)
                continue
            label = ranges.find(ip) if ranges else None
            if label is _TASK:
                continue
            if isinstance(label, tuple):
                sym, dso = label        # a native function the sampler described
            elif label is not None:
                frames.append(label)
                continue
            sym = clean_symbol(sym)
            if python and sym in EVAL_SYMBOLS:
                if frames[:1] == [TRUNCATED_FRAME]:
                    del frames[0]   # the Python calls, from the root, are whole
                frames.extend(python)
                python = ()
                continue
            if tags is not None and _folded_by_tags(sym, dso, tags):
                continue
            if sym and sym != "[unknown]":
                frames.append(f"{sym} [{os.path.basename(dso)}]")
            else:
                frames.append(f"0x{ip:x}")
        if python:
            # No evaluator frame seen (a stack mark, or a short native
            # stack): the Python calls go first.
            if frames[:1] == [TRUNCATED_FRAME]:
                del frames[0]
            frames[:0] = python
        if mark and frames:
            frames.append(mark_frame(mark))
        return tuple(frames)


def interpreter_fold():
    """fold(frame) of a live sample's frame (sampled/live.Frame: top's and
    record --every's): whether the bundled stack tags fold it (the
    interpreter's own functions: their time goes to the Python function
    they run), or it is a native frame without a name."""
    from ..profiles import stacktags_path
    tags = load_stacktags(stacktags_path())

    def fold(frame):
        if frame.python:
            return False
        if not frame.file:
            return True
        module = os.path.basename(frame.file)
        return any(fnmatch.fnmatchcase(module, m) and fnmatch.fnmatchcase(frame.name, f)
                   for m, f in tags)
    return fold


def _folded_by_tags(sym, dso, tags):
    """Whether stack tags fold this frame: an interpreter-internal function,
    or a nameless frame of a module they cover (an interpreter built
    without local symbols, as Debian's 3.15)."""
    if not sym or sym == "[unknown]":
        if not dso or dso == "[unknown]":
            return True
        module = os.path.basename(dso)
        return any(fnmatch.fnmatchcase(module, m) for m, _ in tags)
    module = os.path.basename(dso)
    return any(fnmatch.fnmatchcase(module, m) and fnmatch.fnmatchcase(sym, f) for m, f in tags)
