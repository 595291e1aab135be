"""Timeline exports: speedscope's file format and Chrome's Trace Event JSON.

Both are written in chunks straight to the output, so a large trace never
needs its whole JSON text in memory at once.  Their `scan` is a report's
View (_view.py), which holds the Scan's tree, threads and timeline under
the Scan's names.
"""

import json

from ..scan import process_name
from .tracks import Tracks, each_step, outside


CHUNK = 8192    # events per write

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def _frame_record(label):
    """speedscope frame: `qualname (file:line)` split into its parts."""
    if label.endswith(")") and " (" in label:
        name, where = label[:-1].rsplit(" (", 1)
        file, _, line = where.rpartition(":")
        if file and line.isdigit():
            return {"name": name, "file": file, "line": int(line)}
    return {"name": label}


class _Frames:
    def __init__(self):
        self.index = {}
        self.records = []

    def __call__(self, label):
        i = self.index.get(label)
        if i is None:
            i = self.index[label] = len(self.records)
            self.records.append(_frame_record(label))
        return i


# Chrome's pid is a number: a process's first program keeps its own, the
# ones it exec'd into get one above every real pid (Linux's are below 2**22)
# and are named by their process_name.
_IMAGE_PID_STEP = 1 << 22


def chrome_pid(proc):
    pid, image = proc
    return pid + (image - 1) * _IMAGE_PID_STEP


def _sampled_profile(name, samples, frames, unit):
    """A speedscope sampled profile: (frames, weight) in time order."""
    stacks = []
    weights = []
    for stack, weight in samples:
        stacks.append([frames(f) for f in stack])
        weights.append(weight)
    return {"type": "sampled", "name": name, "unit": unit, "startValue": 0,
            "endValue": sum(weights), "samples": stacks, "weights": weights}


def timeline_samples(scan, view, tracks):
    """{track: [(ts, stack, weight), ...] in time order} of a stack view:
    one entry per CPU sample or stack mark (weight 1), or per off-CPU wait
    (its nanoseconds); a track is a thread's, or a task's (tracks.py)."""
    threads = {}
    if view == "off-cpu":
        points = sorted((start, pid, tid, frames, end - start)
                        for pid, tid, start, end, frames in scan.offcpu_slices)
    else:
        kind = "SampledProfile" if view == "samples" else "PythonStackSample"
        points = sorted((ts, pid, tid, frames, 1)
                        for pid, tid, ts, frames, k in scan.sample_points if k == kind)
    for ts, pid, tid, frames, weight in points:
        threads.setdefault(tracks.of_stack(pid, tid, frames), []).append((ts, frames, weight))
    return threads


def sample_interval(threads):
    """The sampling interval (ns) of CPU samples: the lower quartile of the
    gaps between a thread's consecutive samples, over every thread (gaps
    while a thread waits are longer); 1 ms when no thread has two."""
    gaps = sorted(b[0] - a[0] for samples in threads.values()
                  for a, b in zip(samples, samples[1:]) if b[0] > a[0])
    return gaps[len(gaps) // 4] if gaps else 1_000_000


def _timed_profile(name, samples, frames, origin, interval):
    """A speedscope sampled profile of CPU samples in real time (ns from
    `origin`, the trace's first event): a sample stands for the time to the
    next one; of a gap longer than 1.5 intervals, for one interval, the
    rest (and the time before the first sample) being an empty stack, so
    the thread's idle time stays on its timeline."""
    stacks = []
    weights = []
    at = origin
    for i, (ts, stack, _) in enumerate(samples):
        if ts > at:
            stacks.append([])
            weights.append(ts - at)
        gap = samples[i + 1][0] - ts if i + 1 < len(samples) else interval
        span = gap if gap <= interval * 3 // 2 else interval     # (a late sample is no wait)
        stacks.append([frames(f) for f in stack])
        weights.append(max(span, 1))
        at = ts + weights[-1]
    return {"type": "sampled", "name": name, "unit": "nanoseconds", "startValue": 0,
            "endValue": at - origin, "samples": stacks, "weights": weights}


def _evented_profile(out, sep, name, records, parts, frame_of):
    """Writes a speedscope evented profile of the records in `parts`
    ((first, end) stretches of one thread's records, each properly nested),
    in chunks."""
    (start, _, _), = records.between(parts[0][0], parts[0][0] + 1)
    (end, _, _), = records.between(parts[-1][1] - 1, parts[-1][1])
    out.write(sep + json.dumps({"type": "evented", "name": name, "unit": "nanoseconds",
                                "startValue": start, "endValue": end})[:-1] + ', "events": [')
    pieces = []
    joiner = ""
    for first, last in parts:
        for ts, node, kind in records.between(first, last):
            pieces.append('{"type":"%s","frame":%d,"at":%d}' % ("OC"[kind], frame_of[node], ts))
            if len(pieces) == CHUNK:
                out.write(joiner + ",".join(pieces))
                pieces.clear()
                joiner = ","
    out.write((joiner if pieces else "") + ",".join(pieces) + "]}")


def write_speedscope(out, scan, view, unit, title):
    """One profile per thread (per process): evented for instrumented
    calls, else sampled with that thread's samples in time order (CPU
    samples in real time, _timed_profile)."""
    frames = _Frames()
    tracks = Tracks(scan)
    out.write('{"$schema": %s, "exporter": "etwtrace", "name": %s, "activeProfileIndex": 0, '
              '"profiles": [' % (json.dumps(SPEEDSCOPE_SCHEMA), json.dumps(title)))
    if view == "calls":
        first = True
        for proc, tid, keys, records in sorted(scan.tree.timelines, key=lambda t: t[:2]):
            frame_of = [frames(scan.tree.label(k)) for k in keys]
            steps = tracks.steps(keys, records)
            stretches = {None: list(outside(steps, records.count))}
            for start, end, node in each_step(steps):
                stretches.setdefault(scan.tree.label(keys[node]), []).append((start, end))
            for task, parts in sorted(stretches.items(), key=lambda t: t[0] or ""):
                if parts:
                    _evented_profile(out, "" if first else ", ", tracks.title((proc, tid, task)),
                                     records, parts, frame_of)
                    first = False
    else:
        unit = "nanoseconds" if unit == "ns" else "none"
        threads = timeline_samples(scan, view, tracks)
        interval = sample_interval(threads)
        origin = scan.first or 0
        for i, (track, samples) in enumerate(sorted(threads.items(),
                                                    key=lambda t: (*t[0][:2], t[0][2] or ""))):
            name = tracks.title(track)
            if view == "samples":
                profile = _timed_profile(name, samples, frames, origin, interval)
            else:
                profile = _sampled_profile(name, [(stack, w) for _, stack, w in samples],
                                           frames, unit)
            out.write(("" if i == 0 else ", ") + json.dumps(profile))
    out.write('], "shared": {"frames": ')
    out.write(json.dumps(frames.records))
    out.write("}}\n")


class _CpuProfile:
    """One thread's CPU samples as a V8 CPU profile: the `Profile` and
    `ProfileChunk` sample events (ph "P") Chrome's DevTools traces carry,
    which Perfetto UI imports as CPU samples (a "CPU Stack Samples" track
    per thread, a flame graph of a selection) and chrome://tracing as the
    thread's samples.  (The Trace Event Format's top-level `samples` and
    `stackFrames` are read by chrome://tracing only.)

    A node per distinct (parent, frame), ids from 2 (chrome://tracing takes
    node 1 for V8's own root); sample times as whole microseconds after
    `startTime` 0 (the trace's own `ts` origin), each a delta from the one
    before."""

    def __init__(self, ident, pid, tid):
        self.ident, self.pid, self.tid = ident, pid, tid
        self.ids = {}
        self.new_nodes = []     # nodes not yet written in a chunk
        self.samples = []
        self.deltas = []
        self.last = 0           # µs of the last sample

    def start_event(self):
        return {"ph": "P", "cat": "cpu-profile", "name": "Profile", "id": self.ident,
                "pid": self.pid, "tid": self.tid, "ts": 0, "args": {"data": {"startTime": 0}}}

    def add(self, us, stack):
        parent = None
        for name in stack:
            key = (parent, name)
            node = self.ids.get(key)
            if node is None:
                node = self.ids[key] = len(self.ids) + 2
                record = {"id": node, "callFrame": _call_frame(name)}
                if parent is not None:
                    record["parent"] = parent
                self.new_nodes.append(record)
            parent = node
        when = max(round(us), self.last)
        self.samples.append(parent)
        self.deltas.append(when - self.last)
        self.last = when

    def chunk_event(self):
        """The samples added since the last chunk, with the nodes they
        brought."""
        event = {"ph": "P", "cat": "cpu-profile", "name": "ProfileChunk", "id": self.ident,
                 "pid": self.pid, "tid": self.tid, "ts": self.last,
                 "args": {"data": {"cpuProfile": {"nodes": self.new_nodes,
                                                  "samples": self.samples},
                                   "timeDeltas": self.deltas}}}
        self.new_nodes, self.samples, self.deltas = [], [], []
        return event


def _call_frame(label):
    """A V8 profile node's callFrame: the frame's label as its function
    name (as every other export names it), its file as its url."""
    frame = _frame_record(label)
    return {"functionName": label, "url": frame.get("file", "")}


_NO_STEP = (float("inf"), float("inf"), None)


def write_chrome(out, scan, title):
    """Chrome Trace Event JSON (opens in Perfetto UI and chrome://tracing):
    process and thread names, calls as nested begin/end events, marks as
    instant events, mark ranges and off-CPU waits as slices, stack marks
    as instant events named by their text and carrying their stack, and
    CPU samples as each thread's V8 CPU profile (_CpuProfile)."""
    t0 = scan.first or 0

    def us(ns):
        return round((ns - t0) / 1000, 3)

    parts = []          # JSON text of events not yet written
    started = []        # whether an event was written (for the separators)

    def flush():
        if parts:
            out.write((",\n" if started else "") + ",\n".join(parts))
            started.append(True)
            parts.clear()

    def add_text(text):
        parts.append(text)
        if len(parts) >= CHUNK:
            flush()

    def add(event):
        add_text(json.dumps(event, separators=(",", ":")))

    out.write('{"displayTimeUnit": "ns", "otherData": {"title": %s},\n"traceEvents": [\n'
              % json.dumps(title))
    for proc in sorted({proc for proc, _ in scan.threads}):
        add({"ph": "M", "name": "process_name", "pid": chrome_pid(proc), "tid": proc[0],
             "args": {"name": f"python {process_name(proc)}"}})
    for (proc, tid), name in sorted(scan.threads.items()):
        add({"ph": "M", "name": "thread_name", "pid": chrome_pid(proc), "tid": tid,
             "args": {"name": name}})
    tracks = Tracks(scan)
    named = set()

    def track_tid(track):
        """The track's tid, named (once) where it is a task's."""
        tid = tracks.tid(track)
        if track[2] is not None and track not in named:
            named.add(track)
            add({"ph": "M", "name": "thread_name", "pid": chrome_pid(track[0]), "tid": tid,
                 "args": {"name": tracks.name(track)}})
        return tid

    for proc, tid, keys, records in scan.tree.timelines or ():
        # Begin/end pairs straight from the decoder's records (properly
        # nested per thread, and per task within a thread's steps).
        names = [json.dumps(scan.tree.label(k)) for k in keys]
        pid = chrome_pid(proc)
        steps = each_step(tracks.steps(keys, records))
        step = next(steps, _NO_STEP)
        step_tid = current = None
        for i, (ts, node, kind) in enumerate(records):
            if i == step[1]:
                step, step_tid = next(steps, _NO_STEP), None
            if step[0] <= i:
                if step_tid is None:
                    step_tid = track_tid((proc, tid, scan.tree.label(keys[step[2]])))
                where = step_tid
            else:
                where = tid
            if where != current:
                current = where
                begin = '{"ph":"B","cat":"python","pid":%d,"tid":%d,' % (pid, where)
                end = '{"ph":"E","cat":"python","pid":%d,"tid":%d,' % (pid, where)
            when = '"ts":%d.%03d' % divmod(ts - t0, 1000)
            if kind:
                add_text(end + when + "}")
            else:
                add_text(begin + when + ',"name":' + names[node] + "}")
    for proc, tid, start, end, text in scan.ranges:
        add({"ph": "X", "cat": "mark", "name": text, "pid": chrome_pid(proc), "tid": tid,
             "ts": us(start), "dur": round((end - start) / 1000, 3)})
    for proc, tid, ts, text in scan.instants:
        add({"ph": "i", "s": "t", "cat": "mark", "name": text, "pid": chrome_pid(proc),
             "tid": tid, "ts": us(ts)})
    for proc, tid, start, end, frames in scan.offcpu_slices:
        add({"ph": "X", "cat": "off-cpu", "name": f"blocked: {frames[-1]}",
             "pid": chrome_pid(proc), "tid": track_tid(tracks.of_stack(proc, tid, frames)),
             "ts": us(start),
             "dur": round((end - start) / 1000, 3), "args": {"stack": ";".join(frames)}})
    profiles = {}
    for proc, tid, ts, frames, kind in sorted(scan.sample_points, key=lambda p: p[2]):
        if kind == "SampledProfile":
            pid = chrome_pid(proc)
            where = track_tid(tracks.of_stack(proc, tid, frames))
            profile = profiles.get((pid, where))
            if profile is None:
                profile = profiles[(pid, where)] = _CpuProfile(hex(len(profiles) + 1), pid, where)
                add(profile.start_event())
            profile.add((ts - t0) / 1000, frames)
            if len(profile.samples) == CHUNK:
                add(profile.chunk_event())
        else:
            # A stack mark: named by its text (the stack's last frame).
            add({"ph": "i", "s": "t", "cat": "stack-mark", "name": frames[-1],
                 "pid": chrome_pid(proc), "tid": track_tid(tracks.of_stack(proc, tid, frames)),
                 "ts": us(ts),
                 "args": {"stack": ";".join(frames)}})
    for profile in profiles.values():
        if profile.samples:
            add(profile.chunk_event())
    flush()
    out.write("\n]}\n")
