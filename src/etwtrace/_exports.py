"""Timeline exports: speedscope's file format and Chrome's Trace Event JSON.

Both are written in chunks straight to the output, so a large trace never
needs its whole JSON text in memory at once.
"""

import json


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


def _sampled(name, stacks, frames, unit):
    samples = []
    weights = []
    for stack, weight in sorted(stacks.items()):
        samples.append([frames(f) for f in stack])
        weights.append(weight)
    return {"type": "sampled", "name": name, "unit": unit, "startValue": 0,
            "endValue": sum(weights), "samples": samples, "weights": weights}


def write_speedscope(out, scan, view, stacks, unit, title):
    """Evented profiles (one per thread) for instrumented calls, else one
    sampled profile of the chosen stack view."""
    frames = _Frames()
    out.write('{"$schema": %s, "exporter": "etwtrace", "name": %s, "activeProfileIndex": 0, '
              '"profiles": [' % (json.dumps(SPEEDSCOPE_SCHEMA), json.dumps(title)))
    if view == "calls":
        first = True
        for pid, tid, keys, records in sorted(scan.tree.timelines, key=lambda t: t[:2]):
            frame_of = [frames(scan.tree.label(k)) for k in keys]
            start, end = records.first, records.last
            out.write(("" if first else ", ") + json.dumps(
                {"type": "evented", "name": f"pid {pid} {scan.threads.get((pid, tid), tid)}",
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
        out.write(json.dumps(_sampled(title, stacks, frames,
                                      "nanoseconds" if unit == "ns" else "none")))
    out.write('], "shared": {"frames": ')
    out.write(json.dumps(frames.records))
    out.write("}}\n")


def write_chrome(out, scan, title):
    """Chrome Trace Event JSON (opens in Perfetto UI and chrome://tracing):
    process and thread names, calls as nested begin/end events, marks as
    instant events, mark ranges and off-CPU waits as slices, CPU samples
    and stack marks as instant events carrying their stack."""
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
    for pid in sorted({pid for pid, _ in scan.threads}):
        add({"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
             "args": {"name": f"python {pid}"}})
    for (pid, tid), name in sorted(scan.threads.items()):
        add({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
             "args": {"name": name}})
    for pid, tid, keys, records in scan.tree.timelines or ():
        # Begin/end pairs straight from the decoder's records (properly
        # nested per thread).
        names = [json.dumps(scan.tree.label(k)) for k in keys]
        begin = '{"ph":"B","cat":"python","pid":%d,"tid":%d,' % (pid, tid)
        end = '{"ph":"E","cat":"python","pid":%d,"tid":%d,' % (pid, tid)
        for ts, node, kind in records:
            when = '"ts":%d.%03d' % divmod(ts - t0, 1000)
            if kind:
                add_text(end + when + "}")
            else:
                add_text(begin + when + ',"name":' + names[node] + "}")
    for pid, tid, start, end, text in scan.ranges:
        add({"ph": "X", "cat": "mark", "name": text, "pid": pid, "tid": tid,
             "ts": us(start), "dur": round((end - start) / 1000, 3)})
    for pid, tid, ts, text in scan.instants:
        add({"ph": "i", "s": "t", "cat": "mark", "name": text, "pid": pid, "tid": tid,
             "ts": us(ts)})
    for pid, tid, start, end, label in scan.offcpu_slices:
        add({"ph": "X", "cat": "off-cpu", "name": f"blocked: {label}", "pid": pid, "tid": tid,
             "ts": us(start), "dur": round((end - start) / 1000, 3)})
    for pid, tid, ts, frames, kind in scan.sample_points:
        cat = "cpu-sample" if kind == "SampledProfile" else "stack-mark"
        add({"ph": "i", "s": "t", "cat": cat, "name": frames[-1], "pid": pid,
             "tid": tid, "ts": us(ts), "args": {"stack": ";".join(frames)}})
    flush()
    out.write("\n]}\n")
