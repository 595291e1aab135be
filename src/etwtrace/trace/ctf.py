"""The built-in recorder's CTF 1.8 traces as files: trace directories,
format versions, streams with the packets their rings still hold, and
finalize() for other CTF readers.  Decoding is the C decoder's
(etwtrace._ctfdecode), which takes the layout and every event from the one
declaration in src/etwtrace/_native/trace_format.h; this module names what
fold() returns from the same table.  Traces of format versions 1 and 2 are
read; anything else is refused with a clear error.
"""

import os
import re
import stat
import struct
import warnings

from . import files as _files, safefs as _safefs
from .. import _ctfdecode
from .files import TraceError

FORMAT_MARKER = 'tracer_name = "etwtrace"'
FORMAT_VERSION = _ctfdecode.FORMAT_VERSION
CTF_MAGIC = 0xC1FC1FC1
# Packet header and context of each format version (trace_format.h).
_HEAD = {1: struct.Struct("<IIQQQQQI"), 2: struct.Struct("<IIQQQQQQI")}


_ctfdecode.configure(TraceError)


class EventType:
    """One line of the format's event table."""

    def __init__(self, event_id, ctf_name, name, opcode, fields):
        self.id = event_id
        self.ctf_name = ctf_name
        self.name = name
        self.opcode = opcode
        self.fields = fields            # ((field name, type name), ...)
        self.names = tuple(f for f, _ in fields)
        self.is_push = name == "PythonFunctionPush"
        self.is_pop = name == "PythonFunctionPop"
        # A compact push names no Caller: it is the innermost open push.
        self.implied_caller = self.is_push and "Caller" not in self.names


EVENTS = {e[0]: EventType(*e) for e in _ctfdecode.EVENTS}


def fields_of(event_id, values):
    """(fields, stack) of an event from its values in stream order, keyed by
    the format's field names (a stack field becomes the event's stack)."""
    etype = EVENTS[event_id]
    fields = {}
    stack = ()
    for (name, ftype), value in zip(etype.fields, values):
        if ftype == "ADDRESSES":
            stack = value
        else:
            fields[name] = value
    if etype.implied_caller:
        fields = {"FunctionID": fields["FunctionID"], "Caller": None,
                  "CallerLine": fields["CallerLine"]}
    return fields, stack


def event_tid(event_id, fields, stream_tid):
    """The thread an event is about: its stream's, except PythonThread
    and PythonThreadName events, which name theirs (the disabling thread
    writes every thread's stop into its own stream; any thread writes
    another's name)."""
    if EVENTS[event_id].name in ("PythonThread", "PythonThreadName"):
        return fields["ThreadId"]
    return stream_tid


# A file of a per-process trace is CAPTURE/ctf/pid-N/NAME: its last three
# components are inside the capture, and none of them is followed.
IN_TRACE = 3


def open_stream(path):
    """A descriptor of a stream file (see files.py), refused when it is
    larger than its file system could hold."""
    fd = _files.open_file(path, IN_TRACE)
    try:
        _files.check_real_size(fd, path)
    except TraceError:
        os.close(fd)
        raise
    return fd


def fold_stream(path, pid, make_event, version=FORMAT_VERSION, timeline=None,
                start=0, end=2**64 - 1, image=1):
    """Decodes a stream (with what its ring still holds) with the C
    decoder: (the fold result, the events that are not pushes or pops).
    With `timeline` (an open binary file), every open and close of a call
    is written to it.  Only calls made in [start, end) count, and only
    their time inside it.  Damage ends the stream, with a RuntimeWarning:
    what came before it is kept, and folded["problem"] says what it was
    (else None).  See etwtrace._ctfdecode."""
    parts = StreamParts(path, version)
    fd = open_stream(path)
    try:
        folded = _ctfdecode.fold(path, timeline=timeline is not None, version=version,
                                 length=parts.length, tail=parts.tail,
                                 timeline_fd=timeline.fileno() if timeline is not None else -1,
                                 start=start, end=end, fd=fd, partial=True)
    except ValueError as ex:
        raise TraceError(str(ex)) from None
    except OSError as ex:
        raise TraceError(f"{path}: cannot read ({ex.strerror})") from None
    finally:
        os.close(fd)
    folded["problem"] = None
    if folded["error"]:
        folded["problem"] = f"{path}: {folded['error']}; the events after it are left out"
    elif folded["truncated"]:
        folded["problem"] = (f"{path}: trace truncated mid-packet; "
                             "reporting the complete events before it")
    if folded["problem"]:
        warnings.warn(folded["problem"], RuntimeWarning)
    tid = folded["tid"]
    events = []
    for event_id, ts, values in folded["events"]:
        fields, stack = fields_of(event_id, values)
        etype = EVENTS[event_id]
        events.append(make_event(etype.name, etype.opcode, pid,
                                 event_tid(event_id, fields, tid), ts, fields, stack,
                                 image=image))
    return folded, events


_TRACE_DIR = re.compile(r"^pid-(\d+)(?:\.(\d+))?$")


def trace_names(names):
    """(pid, name) of the per-process trace directory names among `names`
    (pid-PID, and pid-PID.N for the images a process exec'd into), in the
    order of pid and image."""
    found = []
    for name in names:
        m = _TRACE_DIR.match(name)
        if m:
            found.append((int(m.group(1)), int(m.group(2) or 1), name))
    found.sort()
    return [(pid, name) for pid, _image, name in found]


def trace_dirs(ctf_root):
    """(pid, directory) of every per-process trace under ctf_root that
    began (see trace_names; a symlink is not one)."""
    found = []
    for pid, name in trace_names(os.listdir(ctf_root)):
        path = os.path.join(ctf_root, name)
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            continue
        if is_dir and began(path):
            found.append((pid, path))
    return found


def began(trace_dir):
    """Whether a process's trace began: a process killed as it started (a
    pool's worker terminated before it ran) leaves its directory with no
    metadata (or, written before 2026-12, an empty one) and no streams.
    It recorded nothing, so nothing of it is lost."""
    try:
        names = set(os.listdir(trace_dir))
    except OSError:
        return True         # the reader says what is wrong with it
    if names - {"metadata", "metadata.new"}:
        return True
    try:
        return os.path.getsize(os.path.join(trace_dir, "metadata")) > 0
    except OSError:
        return False


_VERSION = re.compile(r"format_version = (\d+);")
METADATA_LIMIT = 1 << 20        # a trace's metadata is a few KiB


def _metadata_text(trace_dir):
    path = os.path.join(trace_dir, "metadata")
    try:
        data = _files.read_small(path, METADATA_LIMIT, IN_TRACE)
    except TraceError as ex:
        raise TraceError(f"{trace_dir}: no readable CTF metadata ({ex})") from None
    return data.decode("utf-8", errors="replace")


def trace_image(trace_dir):
    """Which program of its process a trace is of: 1 (pid-PID), or N for
    the one it exec'd into (pid-PID.N)."""
    m = _TRACE_DIR.match(os.path.basename(trace_dir))
    return int(m.group(2) or 1) if m else 1


def trace_version(trace_dir):
    """The format version of a per-process trace; TraceError when it is not
    an etwtrace trace or of a version this reader does not know."""
    text = _metadata_text(trace_dir)
    m = _VERSION.search(text)
    path = os.path.join(trace_dir, "metadata")
    if FORMAT_MARKER not in text or m is None:
        raise TraceError(f"{path}: not an etwtrace CTF trace")
    version = int(m.group(1))
    if not 1 <= version <= FORMAT_VERSION:
        raise TraceError(f"{path}: trace format version {version}; this etwtrace reads "
                         f"versions 1 to {FORMAT_VERSION} (upgrade etwtrace to read it)")
    return version


def check_metadata(trace_dir):
    trace_version(trace_dir)


def has_call_times(trace_dir):
    """False when the process recorded pushes and pops without reading the
    clock (--no-call-times): their timestamps order them but do not time
    them.  Traces from before the flag existed have call times."""
    return "call_times = 0;" not in _metadata_text(trace_dir)


def stream_files(trace_dir):
    """The stream files of a per-process trace (its directory entered
    without following a link)."""
    names = _files.list_dir(trace_dir, IN_TRACE - 1)
    return sorted(os.path.join(trace_dir, n) for n in names if n.startswith("stream-"))


def stream_start(path, version=FORMAT_VERSION):
    """The timestamp the stream's first packet begins at, or None when it
    holds none."""
    parts = StreamParts(path, version)
    head = _HEAD[2 if version >= 2 else 1]
    if parts.length >= head.size:
        fd = open_stream(path)
        try:
            return head.unpack(os.pread(fd, head.size, 0))[2]
        finally:
            os.close(fd)
    if len(parts.tail) >= head.size:
        return head.unpack_from(parts.tail, 0)[2]
    return None


def stacks_at(path, version, times):
    """The FunctionIDs open on a stream's thread at each of `times`."""
    parts = StreamParts(path, version)
    fd = open_stream(path)
    try:
        return _ctfdecode.stacks_at(path, times, version=version, length=parts.length,
                                    tail=parts.tail, fd=fd)
    finally:
        os.close(fd)


def ring_path(stream):
    """The ring file of a stream file (stream-N-tid-T -> .ring-N-tid-T)."""
    directory, name = os.path.split(stream)
    return os.path.join(directory, ".ring-" + name[len("stream-"):])


def _walk_packets(fd, size, head):
    """(offset after the last complete packet, its seq, its events_discarded,
    the seq of a packet cut short after it or None) of an open stream file;
    seq -1 when it holds none."""
    offset, last_seq, lost = 0, -1, 0
    while offset + head.size <= size:
        data = os.pread(fd, head.size, offset)
        if len(data) < head.size:
            break
        values = head.unpack(data)
        magic, packet_bits = values[0], values[5]
        if magic != CTF_MAGIC or packet_bits < head.size * 8 or packet_bits % 8:
            break
        end = offset + packet_bits // 8
        if end > size:
            return offset, last_seq, lost, values[6]    # cut short
        last_seq = values[6]
        lost = values[7] if len(values) > 8 else 0
        offset = end
    return offset, last_seq, lost, None


class StreamParts:
    """A stream as readers see it: the complete packets of its file (the
    first `length` bytes), then `tail`, the packets its ring still holds
    (those the copier had not written when the process ended or stopped,
    or all of them in memory mode), in order.  `pending` says whether there
    were any; `lost` is the events_discarded of the last packet.

    The stream's writer may still be running (a snapshot of a session):
    the ring is read before the file, so a packet the copier moves in
    between is found in one or the other, and a packet whose slot was
    being reused while it was read is left out (recorder.c, begin_packet)."""

    def __init__(self, path, version=FORMAT_VERSION):
        self.path = path
        self.tail = b""
        head = _HEAD[2 if version >= 2 else 1]
        fd = open_stream(path)
        try:
            ring = ring_path(path)
            ring_packets, ring_lost = ([], 0) if version < 2 else _read_ring(ring, head)
            size = os.fstat(fd).st_size
            self.length, last_seq, self.lost, cut_seq = _walk_packets(fd, size, head)
        except OSError as ex:
            raise TraceError(f"{path}: cannot read ({ex.strerror})") from None
        finally:
            os.close(fd)
        self.cut_short = self.length < size
        self._size = size
        if ring_packets is None:
            self._keep_cut_packet()
            return
        packets = [(seq, _finished(packet, head, version), lost)
                   for seq, packet, lost in ring_packets if seq > last_seq]
        packets.sort()
        if self.cut_short and not (packets and packets[0][0] == cut_seq):
            # The ring does not hold the packet cut short (a damaged file):
            # read what is complete of it instead, as a truncated stream.
            self._keep_cut_packet()
            return
        self.tail = b"".join(p for _, p, _ in packets)
        if packets:
            self.lost = packets[-1][2]
        self.lost = max(self.lost, ring_lost)

    def _keep_cut_packet(self):
        self.length = self._size

    @property
    def pending(self):
        return bool(self.tail)


_RING_CONTROL_BYTES = 4096
_RING_MAX_SLOTS = 65536     # recorder.h, ETW_MEMORY_MAX_SLOTS
_RING_CONTROL = struct.Struct("<8sQII")
_SEQ_REWRITING = 2 ** 64 - 1
_SEQ_FIELD = 40     # offset of packet_seq_num in a packet (version 2)


def _read_ring(ring, head):
    """([(seq, packet bytes, events_discarded)], events lost per the control
    page) of a ring file; (None, 0) when there is none.  Each slot's
    packet_seq_num is read before and after the slot, and the packet kept
    only when both are the same real number (its writer may be reusing the
    slot: recorder.c writes a new number last and spoils it first).  A file
    that is not a ring (a link, a FIFO, not the size of a ring) is left out
    with a RuntimeWarning."""
    if not _files.exists(ring, IN_TRACE):
        return None, 0
    packet_bytes = _ctfdecode.PACKET_BYTES
    seq_of = struct.Struct("<Q")
    packets = []
    try:
        fd = _files.open_file(ring, IN_TRACE)
    except TraceError as ex:
        warnings.warn(f"{ex}; its ring left out", RuntimeWarning)
        return None, 0
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return [], 0        # made, and its writer gone before it was sized
        slots, extra = divmod(size - _RING_CONTROL_BYTES, packet_bytes)
        if extra or not 1 <= slots <= _RING_MAX_SLOTS:
            warnings.warn(f"{ring}: {size:,} bytes, not the size of a ring; left out",
                          RuntimeWarning)
            return None, 0
        for at in range(0, slots * packet_bytes, packet_bytes):
            before = seq_of.unpack(os.pread(fd, 8, at + _SEQ_FIELD))[0]
            if before == _SEQ_REWRITING:
                continue
            data = os.pread(fd, packet_bytes, at)
            after = seq_of.unpack(os.pread(fd, 8, at + _SEQ_FIELD))[0]
            if after != before or len(data) < head.size:
                continue
            values = head.unpack_from(data, 0)
            magic, content_bits, packet_bits, seq = values[0], values[4], values[5], values[6]
            if (magic != CTF_MAGIC or seq != before or packet_bits > packet_bytes * 8
                    or content_bits > packet_bits or content_bits < head.size * 8):
                continue
            packets.append((seq, data[:packet_bits // 8], values[7]))
        control = os.pread(fd, _RING_CONTROL_BYTES, slots * packet_bytes)
    except (OSError, struct.error):
        return None, 0
    finally:
        os.close(fd)
    return packets, _ring_lost(control)


def _ring_lost(control):
    """events_discarded of a ring's control page (trace_format.h)."""
    if len(control) < _RING_CONTROL.size:
        return 0
    magic, lost, _error, _slots = _RING_CONTROL.unpack_from(control, 0)
    return lost if magic == b"ETWRING2" else 0


def _finished(packet, head, version):
    """A packet from a ring with its header made to cover what its writer
    finished: one left unfinished by a death has its content size (and end
    time) from its last complete event (trace_format.h)."""
    content, last_ts = _ctfdecode.scan_packet(packet, version)
    values = list(head.unpack_from(packet, 0))
    if content * 8 <= values[4]:
        return packet
    values[3] = max(values[3], last_ts)     # timestamp_end
    values[4] = content * 8                 # content_size
    return head.pack(*values) + packet[head.size:]


def stream_losses(path, version):
    """Events a stream's writer could not record (the events_discarded of
    its last packet; version 1 traces did not count them)."""
    if version < 2:
        return 0
    try:
        return StreamParts(path, version).lost
    except TraceError:
        return 0


def finalize(ctf_root, room=None):
    """Moves the packets left in the rings of processes that have ended
    into their stream files, so that every CTF reader (babeltrace2) sees
    every event, and removes those rings.  Rings of live processes are left
    alone, and so are those whose packets `room(bytes)` says do not fit
    (the file system's reserve: readers take them from the ring).  Returns
    how many streams were completed."""
    done = 0
    for pid, trace_dir in trace_dirs(ctf_root):
        if not alive(pid):
            done += finalize_trace(trace_dir, room)
    return done


def finalize_trace(trace_dir, room=None):
    """finalize() of one per-process trace whose writer has ended.  Only
    this user's own stream files are written, never through a symlink."""
    try:
        version = trace_version(trace_dir)
    except TraceError:
        return 0
    if version < 2:
        return 0
    done = 0
    for path in stream_files(trace_dir):
        ring = ring_path(path)
        if not os.path.lexists(ring):
            continue
        try:
            parts = StreamParts(path, version)
            if parts.tail and room is not None and not room(len(parts.tail)):
                continue
            if parts.tail or parts.cut_short:
                with os.fdopen(_files.open_regular(path, os.O_RDWR, own=True), "r+b") as f:
                    f.truncate(parts.length)
                    f.seek(parts.length)
                    f.write(parts.tail)
                done += 1
            if _carry_losses(path, parts.lost):
                os.unlink(ring)
        except (OSError, TraceError):
            continue
    return done


def _new_file(path):
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o600)


_LOST_FIELD = 48    # offset of events_discarded in a packet (version 2)


def _carry_losses(path, lost):
    """Makes the last packet of a stream file (version 2) count `lost`
    events lost, the count its ring's control page kept for events lost
    after that packet (recorder.c).  False when the file has no packet to
    hold it (the ring must stay)."""
    head = _HEAD[2]
    with os.fdopen(_files.open_regular(path, os.O_RDWR, own=True), "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        offset, last = 0, None
        while offset + head.size <= size:
            f.seek(offset)
            values = head.unpack(f.read(head.size))
            if values[0] != CTF_MAGIC or values[5] < head.size * 8 or values[5] % 8 \
                    or offset + values[5] // 8 > size:
                break
            last = (offset, values[7])
            offset += values[5] // 8
        if last is None:
            return lost == 0
        if lost > last[1]:
            os.pwrite(f.fileno(), struct.pack("<Q", lost), last[0] + _LOST_FIELD)
    return True


def copy_trace(trace_dir, target):
    """Writes into the new directory `target` a copy of a per-process
    trace as it is now (its writer may still be running): the metadata and
    each stream's packets, with what its ring holds after them, so the
    copy needs no ring.  Only regular files are read, never through a
    symlink; the copies are new files of this user's.  Streams that cannot
    be read are left out; returns how many were copied."""
    os.mkdir(target, 0o700)
    src = _files.open_regular(os.path.join(trace_dir, "metadata"), os.O_RDONLY)
    try:
        text = os.read(src, 1 << 20)
    finally:
        os.close(src)
    out = _new_file(os.path.join(target, "metadata"))
    try:
        os.write(out, text)
    finally:
        os.close(out)
    version = trace_version(target)
    _copy_notes(trace_dir, target)
    copied = 0
    for path in stream_files(trace_dir):
        try:
            parts = StreamParts(path, version)
            src = _files.open_regular(path, os.O_RDONLY)
            try:
                out = _new_file(os.path.join(target, os.path.basename(path)))
                try:
                    length = _safefs.copy_data(src, out, parts.length)
                    os.pwrite(out, parts.tail, length)
                finally:
                    os.close(out)
            finally:
                os.close(src)
            copied += 1
        except (OSError, TraceError):
            continue
    return copied


# Notes a process keeps beside its streams (_children.UNTRACED), copied
# with them up to this size.
NOTES = ("untraced-children",)
NOTES_MAX_BYTES = 1 << 20


def _copy_notes(trace_dir, target):
    for name in NOTES:
        try:
            src = _files.open_regular(os.path.join(trace_dir, name), os.O_RDONLY)
        except (OSError, TraceError):
            continue
        try:
            out = _new_file(os.path.join(target, name))
            try:
                _safefs.copy_data(src, out, NOTES_MAX_BYTES)
            finally:
                os.close(out)
        finally:
            os.close(src)


def alive(pid):
    """Whether process `pid` still runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def describe_losses(losses):
    return ", ".join(f"process {pid}: {n:,}" for pid, n in sorted(losses.items()))
