"""Reader for the CTF 1.8 traces the built-in recorder writes.

The layout is fixed by src/etwtrace/_native/recorder.c (its metadata text
describes it to generic CTF readers such as babeltrace2); this reader decodes
exactly that layout and refuses anything else with a clear error.
"""

import os
import struct
import warnings

CTF_MAGIC = 0xC1FC1FC1
FORMAT_MARKER = 'tracer_name = "etwtrace"'
PACKET_HEAD = struct.Struct("<IIQQQQQI")
COMPACT_TS_BITS = 27
COMPACT_TS_MASK = (1 << COMPACT_TS_BITS) - 1
EXTENDED_ID = 31

U32 = struct.Struct("<I")
U32x3 = struct.Struct("<III")
FUNCTION_HEAD = struct.Struct("<IQQIB")
EXTENDED_HEAD = struct.Struct("<IQ")


class TraceError(Exception):
    """A capture is missing, not an etwtrace capture, or corrupt."""


# id -> (name, opcode)
EVENT_NAMES = {
    0: ("PythonThread", "start"),
    1: ("PythonThread", "stop"),
    2: ("PythonFunction", None),
    3: ("PythonMark", None),
    4: ("PythonMark", "start"),
    5: ("PythonMark", "stop"),
    6: ("PythonStackSample", None),
    7: ("PythonFunctionPush", None),
    8: ("PythonFunctionPop", None),
    9: ("PythonFunctionPush", None),   # compact: Caller is the open push
    10: ("PythonFunctionPop", None),   # compact: 16-bit FunctionID
}
PUSH_IDS = (7, 9)
POP_IDS = (8, 10)
U16 = struct.Struct("<H")
U16x2 = struct.Struct("<HH")


class _Corrupt(Exception):
    pass


def _cstring(data, pos, end):
    nul = data.find(b"\0", pos, end)
    if nul < 0:
        raise _Corrupt("unterminated string")
    return data[pos:nul].decode("utf-8", "replace"), nul + 1


def fields_of(event_id, values):
    """(fields, stack) of a thread, function, mark or stack-sample event
    from its values in stream order: the schema's field names, shared by
    this reader and the C decoder (etwtrace._ctfdecode)."""
    if event_id in (0, 1):
        return {"ThreadId": values[0]}, ()
    if event_id == 2:
        fid, begin, end, line, is_py, source, name = values
        return {"FunctionID": fid, "BeginAddress": begin, "EndAddress": end,
                "LineNumber": line, "SourceFile": source, "Name": name,
                "IsPythonCode": is_py}, ()
    if event_id == 6:
        return {"Mark": values[0]}, values[1]
    return {"Mark": values[0]}, ()


def _decode_payload(event_id, data, pos, end):
    """Returns (fields, stack, new_pos)."""
    if event_id in (0, 1):
        if pos + 4 > end:
            raise _Corrupt("short PythonThread event")
        return (*fields_of(event_id, U32.unpack_from(data, pos)), pos + 4)
    if event_id == 2:
        if pos + FUNCTION_HEAD.size > end:
            raise _Corrupt("short PythonFunction event")
        head = FUNCTION_HEAD.unpack_from(data, pos)
        source, pos = _cstring(data, pos + FUNCTION_HEAD.size, end)
        name, pos = _cstring(data, pos, end)
        return (*fields_of(event_id, head + (source, name)), pos)
    if event_id in (3, 4, 5):
        text, pos = _cstring(data, pos, end)
        return (*fields_of(event_id, (text,)), pos)
    if event_id == 6:
        text, pos = _cstring(data, pos, end)
        if pos + 4 > end:
            raise _Corrupt("short PythonStackSample event")
        depth = U32.unpack_from(data, pos)[0]
        pos += 4
        if pos + 8 * depth > end:
            raise _Corrupt("PythonStackSample stack runs past its packet")
        stack = struct.unpack_from(f"<{depth}Q", data, pos)
        return (*fields_of(event_id, (text, stack)), pos + 8 * depth)
    if event_id == 7:
        if pos + 12 > end:
            raise _Corrupt("short PythonFunctionPush event")
        fid, caller, line = U32x3.unpack_from(data, pos)
        return {"FunctionID": fid, "Caller": caller, "CallerLine": line}, (), pos + 12
    if event_id == 8:
        if pos + 4 > end:
            raise _Corrupt("short PythonFunctionPop event")
        return {"FunctionID": U32.unpack_from(data, pos)[0]}, (), pos + 4
    if event_id == 9:
        if pos + 4 > end:
            raise _Corrupt("short PythonFunctionPush event")
        fid, line = U16x2.unpack_from(data, pos)
        return {"FunctionID": fid, "Caller": None, "CallerLine": line}, (), pos + 4
    if event_id == 10:
        if pos + 2 > end:
            raise _Corrupt("short PythonFunctionPop event")
        return {"FunctionID": U16.unpack_from(data, pos)[0]}, (), pos + 2
    raise _Corrupt(f"unknown event id {event_id}")


def read_stream(path, pid, make_event, progress=None):
    """Yields the events of one stream file in order.

    A stream that ends part-way through a packet (a crash, a full disk)
    yields every complete event before the damage and warns.

    The thread's open pushes are tracked to fill in the Caller of compact
    pushes (the innermost open push, as the writer guarantees)."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    offset = 0
    open_pushes = []
    while offset < size:
        if progress is not None:
            progress(offset)
        if offset + PACKET_HEAD.size > size:
            warnings.warn(f"{path}: trace truncated inside a packet header; "
                          "events after it are lost", RuntimeWarning)
            return
        magic, _stream_id, ts_begin, _ts_end, content_bits, packet_bits, _seq, tid = \
            PACKET_HEAD.unpack_from(data, offset)
        if magic != CTF_MAGIC:
            raise TraceError(f"{path}: corrupt trace (bad packet magic at byte {offset})")
        if content_bits % 8 or packet_bits < content_bits or content_bits < PACKET_HEAD.size * 8:
            raise TraceError(f"{path}: corrupt trace (bad packet size at byte {offset})")
        end = offset + content_bits // 8
        truncated = end > size
        if truncated:
            end = size
        pos = offset + PACKET_HEAD.size
        clock = ts_begin
        try:
            while pos < end:
                if pos + 4 > end:
                    raise _Corrupt("event header cut short")
                word = U32.unpack_from(data, pos)[0]
                event_id = word & 0x1F
                if event_id == EXTENDED_ID:
                    if pos + 13 > end:
                        raise _Corrupt("event header cut short")
                    event_id, clock = EXTENDED_HEAD.unpack_from(data, pos + 1)
                    pos += 13
                else:
                    low = word >> 5
                    ts = (clock & ~COMPACT_TS_MASK) | low
                    if ts < clock:
                        ts += 1 << COMPACT_TS_BITS
                    clock = ts
                    pos += 4
                fields, stack, pos = _decode_payload(event_id, data, pos, end)
                name, opcode = EVENT_NAMES[event_id]
                if event_id in PUSH_IDS:
                    if fields["Caller"] is None:
                        fields["Caller"] = open_pushes[-1] if open_pushes else 0
                    open_pushes.append(fields["FunctionID"])
                elif event_id in POP_IDS and open_pushes:
                    fid = fields["FunctionID"]
                    if open_pushes[-1] == fid:
                        open_pushes.pop()
                    elif fid in open_pushes:  # events were lost: resynchronise
                        del open_pushes[len(open_pushes) - 1 - open_pushes[::-1].index(fid):]
                yield make_event(name, opcode, pid, tid, clock, fields, stack)
        except _Corrupt as ex:
            if truncated:
                warnings.warn(f"{path}: trace truncated mid-packet; "
                              "reporting the complete events before it", RuntimeWarning)
                return
            raise TraceError(f"{path}: corrupt trace ({ex} at byte {pos})") from None
        if truncated:
            warnings.warn(f"{path}: trace truncated mid-packet; "
                          "reporting the complete events before it", RuntimeWarning)
            return
        offset += packet_bits // 8


def fold_stream(path, pid, make_event, timeline=False):
    """Decodes a stream with the C decoder: (the fold result, the events
    that are not pushes or pops).  See etwtrace._ctfdecode."""
    from . import _ctfdecode
    try:
        folded = _ctfdecode.fold(path, timeline=timeline)
    except ValueError as ex:
        raise TraceError(str(ex)) from None
    except OSError as ex:
        raise TraceError(f"{path}: cannot read ({ex.strerror})") from None
    if folded["truncated"]:
        warnings.warn(f"{path}: trace truncated mid-packet; "
                      "reporting the complete events before it", RuntimeWarning)
    tid = folded["tid"]
    events = []
    for event_id, ts, values in folded["events"]:
        name, opcode = EVENT_NAMES[event_id]
        fields, stack = fields_of(event_id, values)
        events.append(make_event(name, opcode, pid, tid, ts, fields, stack))
    return folded, events


def trace_dirs(ctf_root):
    """(pid, directory) of every per-process trace under ctf_root."""
    found = []
    for name in sorted(os.listdir(ctf_root)):
        path = os.path.join(ctf_root, name)
        if not (name.startswith("pid-") and os.path.isdir(path)):
            continue
        try:
            pid = int(name[4:])
        except ValueError:
            continue
        found.append((pid, path))
    return found


def _metadata_text(trace_dir):
    try:
        with open(os.path.join(trace_dir, "metadata"), "r", encoding="utf-8",
                  errors="replace") as f:
            return f.read()
    except OSError as ex:
        raise TraceError(f"{trace_dir}: no readable CTF metadata ({ex.strerror})") from None


def check_metadata(trace_dir):
    text = _metadata_text(trace_dir)
    if FORMAT_MARKER not in text or "format_version = 1;" not in text:
        path = os.path.join(trace_dir, "metadata")
        raise TraceError(f"{path}: not an etwtrace CTF trace (or an unsupported version)")


def has_call_times(trace_dir):
    """False when the process recorded pushes and pops without reading the
    clock (--no-call-times): their timestamps order them but do not time
    them.  Traces from before the flag existed have call times."""
    return "call_times = 0;" not in _metadata_text(trace_dir)


def stream_files(trace_dir):
    return sorted(
        os.path.join(trace_dir, n) for n in os.listdir(trace_dir) if n.startswith("stream-")
    )
