"""open_trace(): the events of a capture, from every recorder, in time order.

The built-in recorder's streams are decoded, made into Event objects and
merged in C (etwtrace._ctfdecode's Reader and Merge); perf's saved script
text is read in Python (perfscript.py) and merged with them.

A process that exec'd another program left one trace per program
(pid-PID, pid-PID.2, ...): each is a process of its own, told apart by
Event.image (1, 2, ...), with its own FunctionIDs.  One process's trace
that cannot be read (damaged, or not a trace at all) is left out with a
RuntimeWarning naming it; the others are read."""

import bisect
import os
import warnings

from . import files as _capfile, ctf as _ctf, perfscript as _perfscript
from .files import NoCapture
from .ctf import TraceError
from .._ctfdecode import Event, Merge, Reader
from .manifest import PERF_SCRIPT, load_manifest


def _warn(message):
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class Stream:
    """One thread's stream of a per-process trace."""

    __slots__ = ("pid", "image", "path", "version")

    def __init__(self, pid, image, path, version):
        self.pid, self.image, self.path, self.version = pid, image, path, version

    @property
    def process(self):
        """(pid, image): which process, and which of its programs."""
        return self.pid, self.image


def builtin_streams(path, problem=_warn):
    """The Streams of the capture's built-in traces.  A per-process trace
    that cannot be read is left out; problem(message) is told why."""
    ctf_root = os.path.join(path, "ctf")
    if not os.path.isdir(ctf_root) or os.path.islink(ctf_root):
        return []
    streams = []
    for pid, trace_dir in _ctf.trace_dirs(ctf_root):
        try:
            version = _ctf.trace_version(trace_dir)
            files = _ctf.stream_files(trace_dir)
        except TraceError as ex:
            problem(f"process {pid} left out: {ex}")
            continue
        image = _ctf.trace_image(trace_dir)
        streams.extend(Stream(pid, image, f, version) for f in files)
    return streams


def image_starts(streams):
    """{pid: sorted [(first timestamp, image)]} of the processes that
    exec'd (more than one image): perf's events, which name only the pid,
    belong to the image running at their time."""
    images = {}
    for s in streams:
        images.setdefault(s.pid, {}).setdefault(s.image, []).append(s)
    starts = {}
    for pid, by_image in images.items():
        if len(by_image) < 2:
            continue
        found = []
        for image, members in by_image.items():
            times = []
            for s in members:
                try:
                    times.append(_ctf.stream_start(s.path, s.version))
                except TraceError:
                    pass
            times = [t for t in times if t is not None]
            if times:
                found.append((min(times), image))
        starts[pid] = sorted(found)
    return starts


def image_at(starts, pid, ts):
    """The image of process `pid` running at time `ts` (image_starts)."""
    found = starts.get(pid)
    if not found:
        return 1
    i = bisect.bisect_right(found, (ts, float("inf"))) - 1
    return found[max(i, 0)][1]


def capture_start(path):
    """The timestamp of the capture's first event (of any recorder), or
    None for a capture without events: the origin of report's --from/--to."""
    starts = []
    for s in builtin_streams(path, problem=lambda message: None):
        try:
            starts.append(_ctf.stream_start(s.path, s.version))
        except TraceError:
            pass        # left out of the report, which says why
    perf = perf_events(path)
    if perf is not None:
        starts.append(next((e.timestamp for e in perf), None))
    starts = [s for s in starts if s is not None]
    return min(starts) if starts else None


def perf_events(path, progress=None, streams=None):
    """The events of the capture's perf.script (None when perf did not
    record), without the stack-sample probe's copies of the built-in
    recorder's events; each in the image of its process running then
    (of `streams`, the capture's built-in streams)."""
    script = os.path.join(path, PERF_SCRIPT)
    if not _capfile.exists(script):
        return None
    if streams is None:
        streams = builtin_streams(path, problem=lambda message: None)
    pids = {s.pid for s in streams}
    events = _perfscript.read_script(script, Event, progress)
    starts = image_starts(streams)
    if starts:
        events = _in_images(events, starts)
    return _dedupe_stack_samples(events, pids)


def _in_images(events, starts):
    for e in events:
        e.image = image_at(starts, e.pid, e.timestamp)
        yield e


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


def check_capture(path):
    """TraceError unless `path` is a capture directory; returns its
    manifest ({} when it has none)."""
    if not os.path.exists(path):
        raise NoCapture(f"{path}: no such capture")
    if not os.path.isdir(path):
        raise NoCapture(f"{path}: not a capture directory")
    ctf_root = os.path.join(path, "ctf")
    if os.path.islink(ctf_root):
        raise TraceError(f"{ctf_root}: a symbolic link; not followed")
    has_ctf = os.path.isdir(ctf_root)
    has_perf = _capfile.exists(os.path.join(path, PERF_SCRIPT))
    if not (has_ctf or has_perf):
        raise NoCapture(f"{path}: not an etwtrace capture (no ctf/ or {PERF_SCRIPT})")
    return load_manifest(path)


class open_trace:
    """Iterates over the events of a capture directory in timestamp order.

    Usable as a context manager.  Raises TraceError for a missing capture,
    or one that is not a capture at all; a process whose trace cannot be
    read is left out with a RuntimeWarning.  A process that exec'd is one
    process per program: (event.pid, event.image)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.manifest = check_capture(self.path)
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
        found = [s.path for s in builtin_streams(self.path, problem=lambda message: None)]
        script = os.path.join(self.path, PERF_SCRIPT)
        if _capfile.exists(script):
            found.append(script)
        return found

    def events(self):
        """The events in timestamp order."""
        if self._closed:
            raise ValueError("trace is closed")
        sources = []
        streams = builtin_streams(self.path)
        for s in streams:
            try:
                parts = _ctf.StreamParts(s.path, s.version)
                fd = _ctf.open_stream(s.path)
            except TraceError as ex:
                _warn(f"process {s.pid} thread left out: {ex}")
                continue
            try:
                sources.append(Reader(s.path, s.pid, s.version, parts.length, parts.tail,
                                      fd=fd, image=s.image, partial=True))
            except (OSError, ValueError) as ex:
                _warn(f"process {s.pid} thread left out: {s.path}: {ex}")
            finally:
                os.close(fd)
        perf = perf_events(self.path, streams=streams)
        if perf is not None:
            sources.append(perf)
        return Merge(sources)


__all__ = ["open_trace", "Event", "TraceError"]
