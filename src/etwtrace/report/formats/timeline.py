"""Timeline exports: speedscope's file format and Chrome's Trace Event JSON.

Both are written in chunks straight to the output, so a large trace never
needs its whole JSON text in memory at once.  Their `scan` is a report's
View (_view.py), which holds the Scan's tree, threads and timeline under
the Scan's names.
"""

import json

from ..scan import process_name


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


def _thread_title(scan, proc, tid):
    return f"pid {process_name(proc)} {scan.threads.get((proc, tid), tid)}"


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


def timeline_samples(scan, view):
    """{(process, tid): [(stack, weight), ...] in time order} of a stack view:
    one entry per CPU sample or stack mark (weight 1), or per off-CPU wait
    (its nanoseconds)."""
    threads = {}
    if view == "off-cpu":
        points = sorted((start, pid, tid, frames, end - start)
                        for pid, tid, start, end, frames in scan.offcpu_slices)
    else:
        kind = "SampledProfile" if view == "samples" else "PythonStackSample"
        points = sorted((ts, pid, tid, frames, 1)
                        for pid, tid, ts, frames, k in scan.sample_points if k == kind)
    for _ts, pid, tid, frames, weight in points:
        threads.setdefault((pid, tid), []).append((frames, weight))
    return threads


def write_speedscope(out, scan, view, unit, title):
    """One profile per thread (per process): evented for instrumented
    calls, else sampled with that thread's samples in time order."""
    frames = _Frames()
    out.write('{"$schema": %s, "exporter": "etwtrace", "name": %s, "activeProfileIndex": 0, '
              '"profiles": [' % (json.dumps(SPEEDSCOPE_SCHEMA), json.dumps(title)))
    if view == "calls":
        first = True
        for proc, tid, keys, records in sorted(scan.tree.timelines, key=lambda t: t[:2]):
            frame_of = [frames(scan.tree.label(k)) for k in keys]
            start, end = records.first, records.last
            out.write(("" if first else ", ") + json.dumps(
                {"type": "evented", "name": _thread_title(scan, proc, tid),
                 "unit": "nanoseconds", "startValue": start, "endValue": end})[:-1]
                + ', "events": [')
            parts = []
            sep = ""
            for ts, node, kind in records:
                parts.append('{"type":"%s","frame":%d,"at":%d}' % ("OC"[kind], frame_of[node], ts))
                if len(parts) == CHUNK:
                    out.write(sep + ",".join(parts))
                    parts.clear()
                    sep = ","
            out.write((sep if parts else "") + ",".join(parts) + "]}")
            first = False
    else:
        unit = "nanoseconds" if unit == "ns" else "none"
        for i, ((proc, tid), samples) in enumerate(sorted(timeline_samples(scan, view).items())):
            out.write(("" if i == 0 else ", ") + json.dumps(
                _sampled_profile(_thread_title(scan, proc, tid), samples, frames, unit)))
    out.write('], "shared": {"frames": ')
    out.write(json.dumps(frames.records))
    out.write("}}\n")


class _StackFrames:
    """The Trace Event Format's stackFrames: one node per distinct
    (parent, name), ids as strings."""

    def __init__(self):
        self.ids = {}
        self.records = {}

    def leaf(self, stack):
        parent = None
        for name in stack:
            key = (parent, name)
            node = self.ids.get(key)
            if node is None:
                node = self.ids[key] = str(len(self.ids) + 1)
                record = {"name": name, "category": "python" if name.endswith(")") else "native"}
                if parent is not None:
                    record["parent"] = parent
                self.records[node] = record
            parent = node
        return parent


def write_chrome(out, scan, title):
    """Chrome Trace Event JSON (opens in Perfetto UI and chrome://tracing):
    process and thread names, calls as nested begin/end events, marks as
    instant events, mark ranges and off-CPU waits as slices, stack marks
    as instant events named by their text and carrying their stack, and
    CPU samples as the format's `samples` on each thread, their stacks in
    `stackFrames`."""
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
    for proc, tid, keys, records in scan.tree.timelines or ():
        # Begin/end pairs straight from the decoder's records (properly
        # nested per thread).
        names = [json.dumps(scan.tree.label(k)) for k in keys]
        pid = chrome_pid(proc)
        begin = '{"ph":"B","cat":"python","pid":%d,"tid":%d,' % (pid, tid)
        end = '{"ph":"E","cat":"python","pid":%d,"tid":%d,' % (pid, tid)
        for ts, node, kind in records:
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
             "pid": chrome_pid(proc), "tid": tid, "ts": us(start),
             "dur": round((end - start) / 1000, 3), "args": {"stack": ";".join(frames)}})
    stack_frames = _StackFrames()
    samples = []
    for proc, tid, ts, frames, kind in sorted(scan.sample_points, key=lambda p: p[2]):
        if kind == "SampledProfile":
            samples.append('{"cpu":0,"pid":%d,"tid":%d,"ts":%s,"name":"cpu-clock","sf":"%s",'
                           '"weight":1}' % (chrome_pid(proc), tid, json.dumps(us(ts)),
                                            stack_frames.leaf(frames)))
        else:
            # A stack mark: named by its text (the stack's last frame).
            add({"ph": "i", "s": "t", "cat": "stack-mark", "name": frames[-1],
                 "pid": chrome_pid(proc), "tid": tid, "ts": us(ts),
                 "args": {"stack": ";".join(frames)}})
    flush()
    out.write("\n],\n")
    out.write('"stackFrames": ')
    json.dump(stack_frames.records, out, separators=(",", ":"))
    out.write(',\n"samples": [\n')
    for i in range(0, len(samples), CHUNK):
        out.write((",\n" if i else "") + ",\n".join(samples[i:i + CHUNK]))
    out.write("\n]}\n")
