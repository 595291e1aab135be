"""The report's C decoder (etwtrace._ctfdecode): the same call trees as
rebuilding stacks event by event, bounded memory, and no crash on any bytes."""
import glob
import os
import random
import struct
from collections import Counter

import pytest

import etwtrace
from pathlib import Path
from etwtrace import _ctfdecode
from callstacks import CallStacks
from conftest import SCRIPTS, run_etwtrace

pytestmark = pytest.mark.versioned

HEAD = struct.Struct("<IIQQQQQQI")      # format version 2
HEAD_V1 = struct.Struct("<IIQQQQQI")    # version 1: no events_discarded
MAGIC = 0xC1FC1FC1


def _capture(tmp_path, script, *args, c_calls=False):
    path = tmp_path / "cap"
    options = ["--c-calls"] if c_calls else []
    proc = run_etwtrace("--instrumented", *options, "--capture", path, "--recorder", "builtin",
                        "--", SCRIPTS / script, *args)
    assert proc.returncode == 0, proc.stderr
    return path


def _streams(path):
    return sorted(glob.glob(os.path.join(path, "ctf", "pid-*", "stream-*")))


def _paths(nodes):
    """{root-first FunctionID path: (calls, inclusive, exclusive)}"""
    out = {}
    for i, (parent, fid, calls, inclusive, exclusive) in enumerate(nodes):
        path = [fid]
        while parent >= 0:
            path.append(nodes[parent][1])
            parent = nodes[parent][0]
        out[tuple(reversed(path))] = (calls, inclusive, exclusive)
    return out


def _rebuilt(path):
    """The same per-path totals from CallStacks over open_trace's events."""
    per_thread = {}

    def on_return(pid, tid, call, end):
        key = (tid, tuple(c.function_id for c in stacks.stack(pid, tid)) + (call.function_id,))
        calls, inclusive, exclusive = per_thread.get(key, (0, 0, 0))
        duration = end - call.start
        per_thread[key] = (calls + 1, inclusive + duration, exclusive + duration - call.child_time)

    stacks = CallStacks(on_return)
    last = {}
    with etwtrace.open_trace(path) as trace:
        for e in trace:
            stacks.add(e)
            last[e.tid] = e.timestamp
    # Calls left open are closed at their thread's last event, as the decoder does.
    for (pid, tid), open_calls in stacks.open_calls().items():
        while stacks.stack(pid, tid):
            call = stacks.stack(pid, tid)[-1]
            stacks.add(type("E", (), {"name": "PythonFunctionPop", "pid": pid, "tid": tid,
                                      "timestamp": last[tid],
                                      "fields": {"FunctionID": call.function_id}})())
    return per_thread, stacks


def test_fold_equals_rebuilding_stacks_event_by_event(tmp_path):
    path = _capture(tmp_path, "consistency.py", c_calls=True)
    expected, stacks = _rebuilt(path)
    unmatched = mismatched = 0
    for stream in _streams(path):
        folded = _ctfdecode.fold(stream)
        got = _paths(folded["nodes"])
        mine = {p: v for (tid, p), v in expected.items() if tid == folded["tid"]}
        assert got == mine, stream
        assert folded["calls"] == sum(v[0] for v in got.values())
        unmatched += folded["unmatched_pops"]
        mismatched += folded["mismatched_pops"]
    assert (unmatched, mismatched) == (stacks.unmatched_pops, stacks.mismatched_pops)


def test_stacks_at_equals_the_rebuilt_stack(tmp_path):
    path = _capture(tmp_path, "by_arg.py", "a", "b", "c")
    stacks = CallStacks()
    at = []
    with etwtrace.open_trace(path) as trace:
        for e in trace:
            if e.name == "PythonStackSample":
                # stacks_at applies events stamped before the time asked.
                at.append((e.tid, e.timestamp,
                           tuple(c.function_id for c in stacks.stack(e.pid, e.tid))))
            stacks.add(e)
    assert len(at) == 3
    for stream in _streams(path):
        tid = _ctfdecode.fold(stream)["tid"]
        mine = [(ts, fids) for t, ts, fids in at if t == tid]
        got = _ctfdecode.stacks_at(stream, [ts for ts, _ in mine])
        assert got == [fids for _, fids in mine]


def test_call_tree_size_does_not_grow_with_calls(tmp_path):
    sizes = []
    for n in (1000, 200_000):
        path = _capture(tmp_path / str(n), "many_calls.py", n)
        main = max(_streams(path), key=os.path.getsize)
        folded = _ctfdecode.fold(main)
        leaf = [calls for (p, (calls, _, _)) in _paths(folded["nodes"]).items()
                if calls == n]
        assert leaf, "leaf is called exactly n times"
        sizes.append(len(folded["nodes"]))
    assert sizes[0] == sizes[1]


# ---- hand-made and hostile streams ----

def _event(event_id, ts, payload=b""):
    return struct.pack("<I", (ts << 5) | event_id) + payload


def _packet(events, tid=7, packet_extra=0, content=None, discarded=0):
    size = HEAD.size + len(events)
    content_bits = (size if content is None else content) * 8
    return HEAD.pack(MAGIC, 0, 0, 0, content_bits, content_bits + packet_extra * 8, 0, discarded,
                     tid) + events


def _push(fid, ts):
    return _event(7, ts, struct.pack("<III", fid, 0, 0))


def _pop(fid, ts):
    return _event(8, ts, struct.pack("<I", fid))


def _write(tmp_path, data, name="stream"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_recursion_and_lost_pops(tmp_path):
    events = (_push(1, 10) + _push(2, 20) + _push(2, 30) + _pop(2, 40) + _pop(2, 50)
              + _pop(1, 60)                 # matched: tree 1 > 2 > 2
              + _pop(9, 70)                 # no open call: unmatched
              + _push(1, 80) + _push(3, 90) + _pop(1, 100))   # 3's pop was lost
    folded = _ctfdecode.fold(_write(tmp_path, _packet(events)))
    paths = _paths(folded["nodes"])
    assert paths[(1,)] == (2, 50 + 20, 50 - 30 + 20 - 10)
    assert paths[(1, 2)] == (1, 30, 30 - 10)
    assert paths[(1, 2, 2)] == (1, 10, 10)
    assert paths[(1, 3)] == (1, 10, 10)
    assert (folded["unmatched_pops"], folded["mismatched_pops"]) == (1, 1)
    assert folded["tid"] == 7 and folded["last"] == 100


def test_deep_pushes_and_unmatched_pops(tmp_path):
    depth = 12_000
    events = b"".join(_push(i % 50, i) for i in range(depth))
    events += b"".join(_pop(999, depth + i) for i in range(depth))
    folded = _ctfdecode.fold(_write(tmp_path, _packet(events)), timeline=True)
    assert folded["calls"] == depth and len(folded["nodes"]) == depth
    assert folded["mismatched_pops"] == depth
    # Every call opens and closes on the timeline (closed at the end).
    records = list(struct.iter_unpack("<QII", folded["timeline"]))
    assert len(records) == 2 * depth
    assert [k for _, _, k in records] == [0] * depth + [1] * depth


def test_a_time_window_counts_calls_made_in_it_and_time_spent_in_it(tmp_path):
    """report --from/--to: fold(start, end) counts the calls that began in
    [start, end) and adds only the time inside it; calls around the window
    still give the paths of those inside."""
    events = (_push(1, 10) + _push(2, 20) + _pop(2, 30)      # 2 before the window
              + _push(3, 40) + _push(2, 50) + _pop(2, 60)    # 3 straddles its start
              + _pop(3, 70) + _push(2, 80) + _pop(2, 120)    # 2 straddles its end
              + _push(4, 130) + _pop(4, 140) + _pop(1, 150))
    path = _write(tmp_path, _packet(events))
    folded = _ctfdecode.fold(path, timeline=True, start=45, end=100)
    paths = _paths(folded["nodes"])
    # 1 and 3 began before 45: no calls, but their time inside the window.
    assert paths[(1,)] == (0, 55, 55 - 25 - 20)
    assert paths[(1, 3)] == (0, 25, 15)
    assert paths[(1, 3, 2)] == (1, 10, 10)
    assert paths[(1, 2)] == (1, 20, 20)                 # 80..100 of 80..120
    assert paths.get((1, 4), (0, 0, 0)) == (0, 0, 0)    # after the window
    assert folded["calls"] == 2
    fid = [n[1] for n in folded["nodes"]]
    got = [(ts, "OC"[kind], fid[node])
           for ts, node, kind in struct.iter_unpack("<QII", folded["timeline"])]
    # Only the calls made in the window, closed at its end at the latest.
    assert got == [(50, "O", 2), (60, "C", 2), (80, "O", 2), (100, "C", 2)]
    assert _paths(_ctfdecode.fold(path)["nodes"])[(1,)][0] == 1     # the whole stream


def test_timeline_records_are_nested_whatever_the_pops(tmp_path):
    events = (_pop(5, 5) + _push(1, 10) + _push(2, 20) + _push(3, 30)
              + _pop(2, 40)     # 3's pop was lost: 3 then 2 close at 40
              + _pop(1, 50))
    folded = _ctfdecode.fold(_write(tmp_path, _packet(events)), timeline=True)
    fid = [n[1] for n in folded["nodes"]]
    got = [(ts, "OC"[kind], fid[node]) for ts, node, kind in struct.iter_unpack("<QII", folded["timeline"])]
    assert got == [(10, "O", 1), (20, "O", 2), (30, "O", 3), (40, "C", 3), (40, "C", 2), (50, "C", 1)]
    assert _ctfdecode.fold(_write(tmp_path, _packet(events), "again"))["timeline"] is None


def test_truncated_stream_keeps_what_is_complete(tmp_path):
    events = _push(1, 10) + _pop(1, 20) + _push(2, 30) + _pop(2, 40)
    data = _packet(events)
    folded = _ctfdecode.fold(_write(tmp_path, data[:-3]))
    assert folded["truncated"]
    assert _paths(folded["nodes"]) == {(1,): (1, 10, 10), (2,): (1, 0, 0)}


def test_version_1_streams_are_still_read(tmp_path):
    events = _push(1, 10) + _pop(1, 20)
    size = HEAD_V1.size + len(events)
    data = HEAD_V1.pack(MAGIC, 0, 0, 0, size * 8, size * 8, 0, 9) + events
    folded = _ctfdecode.fold(_write(tmp_path, data), version=1)
    assert folded["tid"] == 9 and _paths(folded["nodes"]) == {(1,): (1, 10, 10)}
    assert _ctfdecode.stacks_at(_write(tmp_path, data, "v1"), [15], version=1) == [(1,)]


def test_never_begun_packets_end_an_unfinished_stream(tmp_path):
    # A process that died before closing its stream leaves the rest of its
    # last mapped chunk: all-zero packets.  They end the stream; the lost
    # count of the last packet comes back.
    events = _push(1, 10) + _pop(1, 20)
    data = _packet(events, discarded=3) + b"\0" * 4096
    folded = _ctfdecode.fold(_write(tmp_path, data))
    assert folded["unfinished"] and not folded["truncated"]
    assert folded["discarded"] == 3
    assert _paths(folded["nodes"]) == {(1,): (1, 10, 10)}


@pytest.mark.parametrize("data, message", [
    (_packet(b"", packet_extra=1 << 59), None),                  # a packet claiming 2^62 bytes
    (_packet(_event(6, 1, b"x\0" + struct.pack("<I", 0xFFFFFFFF))), "short event payload"),
    (_packet(struct.pack("<B", 31) + struct.pack("<IQ", 4000, 5)), "unknown event id"),
    (b"\x01" + b"\0" * 63, "bad packet magic"),
    (HEAD.pack(MAGIC, 0, 0, 0, 8, 8, 0, 0, 1), "bad packet size"),
])
def test_hostile_streams(tmp_path, data, message):
    path = _write(tmp_path, data)
    if message is None:
        folded = _ctfdecode.fold(path)
        assert folded["calls"] == 0
    else:
        with pytest.raises(ValueError, match=message):
            _ctfdecode.fold(path)


def test_random_and_mutated_bytes_never_crash(tmp_path):
    seeds = [Path(p).read_bytes() for p in glob.glob(
        os.path.join(os.path.dirname(__file__), "..", "fuzz", "seeds", "*"))]
    assert seeds
    rng = random.Random(1234)
    outcomes = Counter()
    for i in range(1500):
        if i % 3 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 400)))
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data[:rng.randrange(1, len(data) + 1)])
        path = _write(tmp_path, data, "mutant")
        try:
            folded = _ctfdecode.fold(path, timeline=bool(i % 2))
            _ctfdecode.stacks_at(path, [0, 1 << 30, 1 << 62])
            outcomes["truncated" if folded["truncated"] else "read"] += 1
        except ValueError:
            outcomes["corrupt"] += 1
    assert set(outcomes) == {"read", "truncated", "corrupt"}, outcomes


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        _ctfdecode.fold(str(tmp_path / "nope"))
