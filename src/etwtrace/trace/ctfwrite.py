"""Writes per-thread CTF streams of etwtrace's format from Python: the BPF
sampler's captures (the recorder writes its own in C).  Every event gets
an extended header (its full id and timestamp); packets are at most 64 KiB,
as the recorder's, so every reader of captures reads these unchanged.

With a budget (_budget.WriterBudget), a process's metadata and each packet
are claimed before they are filled and checked against the reserve before
they are written; what the budget refuses is counted there, not written:
no file is made for a process or a thread after the capture stopped."""

import errno
import os
import struct

from .._ctfdecode import EVENTS

MAGIC = 0xC1FC1FC1
HEAD = struct.Struct("<IIQQQQQQI")     # format version 2 (trace_format.h)
PACKET_BYTES = 64 * 1024
EXTENDED_ID = 31
_EXTENDED = struct.Struct("<BIQ")

EVENT_ID = {ctf_name: event_id for event_id, ctf_name, *_ in EVENTS}


class TraceWriter:
    """ctf/pid-PID/ of one process: its metadata and a stream per thread;
    nothing at all (`recording` False) when the budget has no room left."""

    def __init__(self, ctf_root, pid, budget=None):
        from .._etwtrace import ctf_metadata
        self.budget = budget
        self.streams = {}
        self.dir = None
        metadata = ctf_metadata(pid)
        self.recording = budget is None or budget.claim(len(metadata))
        if not self.recording:
            budget.processes_not_recorded += 1
            return
        # pid-PID, or pid-PID.N when the process already has a trace there
        # (it exec'd into another Python, or its pid was used again).
        image = 1
        while True:
            self.dir = os.path.join(ctf_root, f"pid-{pid}" + (f".{image}" if image > 1 else ""))
            try:
                os.mkdir(self.dir, 0o700)
                break
            except FileExistsError:
                image += 1
        _write_new(os.path.join(self.dir, "metadata"), metadata)
        if budget is not None:
            budget.wrote(len(metadata), len(metadata), 0)

    def stream(self, tid):
        s = self.streams.get(tid)
        if s is None:
            s = self.streams[tid] = StreamWriter(
                os.path.join(self.dir, f"stream-{len(self.streams)}-tid-{tid}"),
                tid, self.budget)
        return s

    def flush(self):
        for s in self.streams.values():
            s.flush()

    def close(self):
        for s in self.streams.values():
            s.close()


class StreamWriter:
    """One thread's stream, made at its first packet; `budget`: a
    _budget.WriterBudget, or None (no bound)."""

    def __init__(self, path, tid, budget=None):
        self.path = path
        self.fd = -1
        self.tid = tid
        self.budget = budget
        self.seq = 0
        self.events = []
        self.samples = 0        # in the packet being filled
        self.claimed = 0        # bytes the budget gave that packet
        self.used = HEAD.size
        self.first = self.last = None

    def function(self, ts, function_id, begin, end, line, is_python, file, name):
        self._event("PythonFunction", ts, struct.pack("<IQQIB", function_id, begin, end, line,
                                                      1 if is_python else 0)
                    + _text(file) + _text(name))

    def thread_name(self, ts, tid, name):
        """A PythonThreadName event: thread `tid` is called `name`."""
        self._event("PythonThreadName", ts, struct.pack("<I", tid) + _text(name))

    def sample(self, ts, payload):
        """A SampledProfile event; payload: sample_payload(stack)."""
        self._event("SampledProfile", ts, payload, 1)

    def extend(self, events, first, last, samples=0):
        """Encoded events (one, or a chunk of the sampler's, each smaller
        than a packet), from time `first` to `last`, holding `samples`
        samples; whether they were taken (not when the budget has no room
        for their packet: then they are counted there)."""
        if self.used + len(events) + 4 > PACKET_BYTES and self.events:
            self.flush()
        if self.budget is not None and not self.claimed:
            if not self.budget.claim(PACKET_BYTES):
                self.budget.samples_not_kept += samples
                return False
            self.claimed = PACKET_BYTES
        if self.first is None:
            self.first = first
        self.last = last
        self.events.append(events)
        self.used += len(events)
        self.samples += samples
        return True

    def _event(self, ctf_name, ts, payload, samples=0):
        return self.extend(_EXTENDED.pack(EXTENDED_ID, EVENT_ID[ctf_name], ts) + payload, ts, ts,
                           samples)

    def flush(self):
        if not self.events:
            return
        body = b"".join(self.events)
        content = HEAD.size + len(body)
        padded = (content + 7) & ~7
        # The header's stream_id names the stream class, and the metadata
        # declares one (0): the stream's own index is only in its file name.
        head = HEAD.pack(MAGIC, 0, self.first, self.last, content * 8,
                         padded * 8, self.seq, 0, self.tid)
        data = head + body + b"\0" * (padded - content)
        claimed, samples = self.claimed, self.samples
        self.events = []
        self.samples = self.claimed = 0
        self.used = HEAD.size
        self.first = self.last = None
        budget = self.budget
        if budget is not None and not budget.may_write(len(data)):
            budget.dropped(claimed, samples)
            return
        try:
            self._write(data)
        except OSError as ex:
            if budget is None or ex.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            budget.dropped(claimed, samples)
            budget.full()       # (someone else took the reserve since the check)
            return
        self.seq += 1
        if budget is not None:
            budget.wrote(claimed, len(data), samples)

    def _write(self, data):
        """Appends a whole packet, or nothing (a packet cut short would end
        the stream for its readers)."""
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600)
        end = os.lseek(self.fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError:
            os.ftruncate(self.fd, end)
            raise

    def close(self):
        try:
            self.flush()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def sample_payload(stack):
    """A SampledProfile event's payload: its stack, leaf first."""
    return struct.pack(f"<I{len(stack)}Q", len(stack), *stack)


def _text(value):
    return value.encode("utf-8", "surrogateescape").replace(b"\0", b"?") + b"\0"


def _write_new(path, data):
    # Not through a buffered file: on free-threaded 3.13 its close yields
    # the CPU 40 times (see sampled/unbuffered.py), once per new process.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
