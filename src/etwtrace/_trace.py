"""open_trace(): the events of a capture, from every recorder, in time order.

The built-in recorder's streams are decoded, made into Event objects and
merged in C (etwtrace._ctfdecode's Reader and Merge); perf's saved script
text is read in Python (_perfscript.py) and merged with them."""

import os

from . import _ctf, _perfscript
from ._ctf import TraceError
from ._ctfdecode import Event, Merge, Reader
from ._manifest import PERF_SCRIPT, read_manifest


def builtin_streams(path):
    """(pid, stream file, format version) of every stream of the capture's
    built-in traces."""
    ctf_root = os.path.join(path, "ctf")
    if not os.path.isdir(ctf_root):
        return []
    streams = []
    for pid, trace_dir in _ctf.trace_dirs(ctf_root):
        version = _ctf.trace_version(trace_dir)
        streams.extend((pid, stream, version) for stream in _ctf.stream_files(trace_dir))
    return streams


def capture_start(path):
    """The timestamp of the capture's first event (of any recorder), or
    None for a capture without events: the origin of report's --from/--to."""
    starts = [_ctf.stream_start(stream, version) for _, stream, version in builtin_streams(path)]
    perf = perf_events(path)
    if perf is not None:
        starts.append(next((e.timestamp for e in perf), None))
    starts = [s for s in starts if s is not None]
    return min(starts) if starts else None


def perf_events(path, progress=None):
    """The events of the capture's perf.script (None when perf did not
    record), without the stack-sample probe's copies of the built-in
    recorder's events."""
    script = os.path.join(path, PERF_SCRIPT)
    if not os.path.isfile(script):
        return None
    ctf_root = os.path.join(path, "ctf")
    pids = {pid for pid, _ in _ctf.trace_dirs(ctf_root)} if os.path.isdir(ctf_root) else set()
    return _dedupe_stack_samples(_perfscript.read_script(script, Event, progress), pids)


def _dedupe_stack_samples(events, builtin_pids):
    """The USDT stack-sample probe that perf recorded duplicates the
    built-in recorder's PythonStackSample (which carries the Mark text):
    keep perf's copy only for processes the built-in recorder missed."""
    for e in events:
        if e.name == "PythonStackSample":
            if e.pid in builtin_pids:
                continue
            e.fields = {"Mark": "", "Truncated": e.fields.get("Truncated", False)}
        yield e


class open_trace:
    """Iterates over the events of a capture directory in timestamp order.

    Usable as a context manager.  Raises TraceError for a missing or
    corrupt capture."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise TraceError(f"{self.path}: no such capture")
        if not os.path.isdir(self.path):
            raise TraceError(f"{self.path}: not a capture directory")
        has_ctf = os.path.isdir(os.path.join(self.path, "ctf"))
        has_perf = os.path.isfile(os.path.join(self.path, PERF_SCRIPT))
        if not (has_ctf or has_perf):
            raise TraceError(f"{self.path}: not an etwtrace capture (no ctf/ or {PERF_SCRIPT})")
        self.manifest = read_manifest(self.path)
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._closed = True

    def __iter__(self):
        return self.events()

    def files(self):
        """Every file the events are read from."""
        found = []
        ctf_root = os.path.join(self.path, "ctf")
        if os.path.isdir(ctf_root):
            for _pid, trace_dir in _ctf.trace_dirs(ctf_root):
                found.extend(_ctf.stream_files(trace_dir))
        script = os.path.join(self.path, PERF_SCRIPT)
        if os.path.isfile(script):
            found.append(script)
        return found

    def events(self):
        """The events in timestamp order."""
        if self._closed:
            raise ValueError("trace is closed")
        sources = []
        for pid, stream, version in builtin_streams(self.path):
            parts = _ctf.StreamParts(stream, version)
            sources.append(Reader(stream, pid, version, parts.length, parts.tail))
        perf = perf_events(self.path)
        if perf is not None:
            sources.append(perf)
        return Merge(sources)


__all__ = ["open_trace", "Event", "TraceError"]
