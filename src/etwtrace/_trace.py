"""open_trace(): the events of a capture, from every recorder, in time order."""

import heapq
import json
import os

from . import _ctf, _perf
from ._ctf import TraceError

MANIFEST = "etwtrace-capture.json"
PERF_SCRIPT = "perf.script"


class Event:
    """One event.  `fields` is keyed by the schema's field names; `stack`
    holds instruction addresses, innermost first (empty when none)."""

    __slots__ = ("name", "opcode", "pid", "tid", "timestamp", "fields", "stack", "frames")

    def __init__(self, name, opcode, pid, tid, timestamp, fields, stack):
        self.name = name
        self.opcode = opcode
        self.pid = pid
        self.tid = tid
        self.timestamp = timestamp
        self.fields = fields
        self.stack = stack
        self.frames = ()

    def __repr__(self):
        op = f"/{self.opcode}" if self.opcode else ""
        return (f"<Event {self.name}{op} pid={self.pid} tid={self.tid} "
                f"t={self.timestamp} {self.fields!r} stack={len(self.stack)}>")


def is_capture(path):
    return os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path):
    try:
        with open(os.path.join(path, MANIFEST), "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_own_capture(path):
    """Whether etwtrace wrote this directory's manifest (its own, or one of
    an earlier etwtrace, which had no "tool" key)."""
    data = read_manifest(path)
    if data.get("tool") == "etwtrace":
        return True
    return "tool" not in data and {"format", "mode", "command", "started"} <= data.keys()


def recorded_losses(path):
    """{pid: events lost} of the capture's built-in traces (only pids that
    lost any), from the streams' packet headers."""
    ctf_root = os.path.join(path, "ctf")
    if not os.path.isdir(ctf_root):
        return {}
    losses = {}
    for pid, trace_dir in _ctf.trace_dirs(ctf_root):
        try:
            version = _ctf.trace_version(trace_dir)
        except TraceError:
            continue
        for stream in _ctf.stream_files(trace_dir):
            lost = _ctf.stream_losses(stream, version)
            if lost:
                losses[pid] = losses.get(pid, 0) + lost
    return losses


def describe_losses(losses):
    return ", ".join(f"process {pid}: {n:,}" for pid, n in sorted(losses.items()))


def _builtin_streams(path, progress=None, fold=None):
    ctf_root = os.path.join(path, "ctf")
    if not os.path.isdir(ctf_root):
        return []
    streams = []
    for pid, trace_dir in _ctf.trace_dirs(ctf_root):
        version = _ctf.trace_version(trace_dir)
        for stream in _ctf.stream_files(trace_dir):
            if fold is not None:
                streams.append(fold(pid, stream, version))
                update = progress and progress.reader(stream)
                if update:
                    update(os.path.getsize(stream))
                continue
            streams.append(_ctf.read_stream(
                stream, pid, Event, version, progress and progress.reader(stream)))
    return streams


def _dedupe_stack_samples(events, builtin_pids):
    """The USDT stack-sample probe that perf recorded duplicates the
    built-in recorder's PythonStackSample (which carries the Mark text):
    keep perf's copy only for processes the built-in recorder missed."""
    for e in events:
        if e.name == "PythonStackSample":
            if e.pid in builtin_pids:
                continue
            e.fields = {"Mark": ""}
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

    def events(self, progress=None, fold=None):
        """The events in timestamp order.  `progress`, if given, has a
        `reader(file)` method returning a callback that each reader calls
        with how many bytes of that file it has read.  `fold(pid, stream, version)`,
        if given, decodes each built-in stream itself and returns the events
        to merge (the report folds pushes and pops in C); `version` is the
        stream's format version."""
        if self._closed:
            raise ValueError("trace is closed")
        sources = _builtin_streams(self.path, progress, fold)
        script = os.path.join(self.path, PERF_SCRIPT)
        if os.path.isfile(script):
            ctf_root = os.path.join(self.path, "ctf")
            pids = ({pid for pid, _ in _ctf.trace_dirs(ctf_root)}
                    if os.path.isdir(ctf_root) else set())
            reader = _perf.read_script(script, Event, progress and progress.reader(script))
            sources.append(_dedupe_stack_samples(reader, pids))
        return heapq.merge(*sources, key=lambda e: e.timestamp)


__all__ = ["open_trace", "Event", "TraceError"]
