"""The report's parts on stacks and captures made here, in this process:
the call tree, folding, cuts, diff, pprof and every output format, and a
scan of a tiny capture written with the project's own CTF writer.  No
subprocess and no perf (marked `unit`: they run without the machine lock).
"""

import contextlib
import gzip
import io
import json
import types
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from chrome_profile import cpu_samples
from etwtrace.cli import main as _cli
from etwtrace.report import command as _report, compare as _diff
from etwtrace.report.formats import diff as _fmt_diff, profile_proto as _pprof, render as _formats
from etwtrace.report.calltree import TIMELINE_RECORD, CallTree, TimelineRecords
from etwtrace.report.scan import Cut, ReportError, Scan
from etwtrace.report.view import View, diff_view, report_view, shown_part
from etwtrace.trace.capture import Capture

pytestmark = pytest.mark.unit

P = (100, 1)            # a process: (pid, image)
MAIN, WORK, LEAF = "main (app.py:1)", "work (app.py:5)", "leaf (app.py:9)"


# ---- made-up inputs ----

def _folded_thread(nodes, timeline=None):
    """A thread as the C decoder folds it: nodes are (parent index, fid,
    calls, inclusive ns, exclusive ns), parents first."""
    return {"nodes": nodes, "calls": sum(n[2] for n in nodes), "unmatched_pops": 0,
            "mismatched_pops": 0, "discarded": 0, "timeline": timeline}


def _tree(timeline=False, timed=True):
    """main -> work (3 calls) -> leaf (6 calls), and work -> work once:
    exclusive times add up to main's inclusive 1000 ns."""
    tree = CallTree(timeline=timeline)
    for fid, label in ((1, MAIN), (2, WORK), (3, LEAF)):
        name, where = label[:-1].split(" (")
        file, line = where.split(":")
        tree.function(P, {"FunctionID": fid, "Name": name, "SourceFile": file,
                          "LineNumber": int(line)})
    records = None
    if timeline:
        # main opens at 0, work at 10..990, leaf inside it: properly nested.
        events = [(1000, 0, 0), (1010, 1, 0), (1020, 2, 0), (1620, 2, 1), (1630, 3, 0),
                  (1830, 3, 1), (1900, 1, 1), (2000, 0, 1)]
        data = b"".join(TIMELINE_RECORD.pack(*e) for e in events)
        records = TimelineRecords(io.BytesIO(data), {"count": len(events), "first": 1000,
                                                     "last": 2000})
    tree.add_thread(P, 100, _folded_thread([(-1, 1, 1, 1000, 100), (0, 2, 3, 900, 100),
                                            (1, 3, 6, 600, 600), (1, 2, 1, 200, 200)],
                                           records), timed=timed)
    return tree


SAMPLES = Counter({(MAIN, WORK, LEAF): 6, (MAIN, WORK): 3, (MAIN, "read [libc.so.6]"): 1})


def _scan(tree=None, samples=(), offcpu=(), points=()):
    """What a Scan holds, made up: samples on thread 100 (and one on 101)."""
    samples = Counter(samples)
    offcpu = Counter(offcpu)
    by_thread = {"samples": Counter(), "marks": Counter(), "offcpu": Counter()}
    for view, stacks in (("samples", samples), ("offcpu", offcpu)):
        for i, (frames, n) in enumerate(sorted(stacks.items())):
            by_thread[view][((P, 100 if i else 101), frames)] += n
    return types.SimpleNamespace(
        tree=tree or CallTree(), samples=samples, marks=Counter(), offcpu=offcpu,
        by_thread=by_thread, threads={(P, 100): "MainThread", (P, 101): "thread 101"},
        ranges=[(P, 100, 1000, 1500, "phase")], instants=[(P, 100, 1200, "mark")],
        offcpu_slices=[], sample_points=list(points), first=1000, last=2000,
        problems=[], truncated={})


def _points(stacks):
    """One CPU sample per count, 10 ns apart, on thread 100."""
    out = []
    ts = 1000
    for frames, n in sorted(stacks.items()):
        for _ in range(n):
            out.append((P, 100, ts, frames, "SampledProfile"))
            ts += 10
    return out


def _write(fmt, view):
    entry = _report.FORMATS[fmt]
    out = io.BytesIO() if entry.binary else io.StringIO()
    entry.write(out, view)
    return out.getvalue()


def _view(scan, fmt, off_cpu=False, limit=None):
    return report_view(scan, _report.FORMATS[fmt], fmt == "text", "cap", Cut(), off_cpu,
                       limit, None)


def _parse_folded(text):
    out = Counter()
    for line in text.splitlines():
        stack, n = line.rsplit(" ", 1)
        out[tuple(stack.split(";"))] += int(n)
    return out


# ---- a protobuf reader for pprof's profile.proto (wire format only) ----

def _varint(data, i):
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(data):
    """[(field number, int or bytes)] of one message."""
    out = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        else:
            raise AssertionError(f"wire type {wire} is not written by _pprof")
        out.append((number, value))
    return out


def _packed(value):
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def _decode_pprof(blob):
    """{"types": [(type, unit)], "samples": [(leaf-first names, values, labels)]}."""
    top = _fields(gzip.decompress(blob))
    strings = [v.decode() for n, v in top if n == _pprof.PROFILE_STRING_TABLE]
    assert strings[0] == ""         # profile.proto: the table starts with ""
    functions = {}
    for n, v in top:
        if n == _pprof.PROFILE_FUNCTION:
            f = dict(_fields(v))
            functions[f[_pprof.FUNCTION_ID]] = strings[f[_pprof.FUNCTION_NAME]]
    locations = {}
    for n, v in top:
        if n == _pprof.PROFILE_LOCATION:
            f = _fields(v)
            (loc_id,) = [x for k, x in f if k == _pprof.LOCATION_ID]
            (line,) = [x for k, x in f if k == _pprof.LOCATION_LINE]
            locations[loc_id] = functions[dict(_fields(line))[_pprof.LINE_FUNCTION_ID]]
    sample_types = [tuple(strings[x] for _, x in _fields(v))
                    for n, v in top if n == _pprof.PROFILE_SAMPLE_TYPE]
    samples = []
    for n, v in top:
        if n != _pprof.PROFILE_SAMPLE:
            continue
        ids, values, labels = [], [], {}
        for k, x in _fields(v):
            if k == _pprof.SAMPLE_LOCATION_ID:
                ids += _packed(x)
            elif k == _pprof.SAMPLE_VALUE:
                values += _packed(x)
            elif k == _pprof.SAMPLE_LABEL:
                label = dict(_fields(x))
                labels[strings[label[_pprof.LABEL_KEY]]] = (
                    strings[label[_pprof.LABEL_STR]] if _pprof.LABEL_STR in label
                    else label[_pprof.LABEL_NUM])
        samples.append((tuple(locations[i] for i in ids), tuple(values), labels))
    return {"types": sample_types, "samples": samples}


# ---- the call tree ----

def test_call_tree_exclusive_times_sum_to_the_roots_inclusive_time():
    tree = _tree()
    folded = tree.folded()
    assert sum(folded.values()) == 1000
    assert folded[(MAIN, WORK, LEAF)] == 600 and folded[(MAIN, WORK, WORK)] == 200
    by_thread = tree.folded(by_thread=True)
    assert {thread for thread, _ in by_thread} == {(P, 100)}
    assert sum(by_thread.values()) == 1000


def test_call_tree_walks_parents_before_children():
    seen = set()
    for _thread, _node, path in _tree()._walk():
        assert len(path) == 1 or path[:-1] in seen, path
        seen.add(path)
    assert len(seen) == 4


def test_recursion_counts_a_functions_inclusive_time_once():
    stats = _tree().functions()
    assert stats[WORK].calls == 4
    assert stats[WORK].inclusive == 900     # not 900 + the nested 200
    assert stats[WORK].exclusive == 300
    assert stats[LEAF].callers == Counter({WORK: 6})
    assert stats[MAIN].callees == Counter({WORK: 3})
    assert stats[WORK].callers == Counter({MAIN: 3, WORK: 1})


def test_untimed_calls_are_folded_by_count():
    tree = _tree(timed=False)
    assert not tree.has_times
    assert tree.folded() == Counter({(MAIN,): 1, (MAIN, WORK): 3, (MAIN, WORK, LEAF): 6,
                                     (MAIN, WORK, WORK): 1})
    assert tree.untimed_pids == {P}


def test_paths_carry_calls_and_exclusive_time_per_thread():
    paths = _tree().paths()
    assert paths[((P, 100), (MAIN, WORK, LEAF))] == (6, 600)
    assert sum(calls for calls, _ in paths.values()) == 11


def _task_tree():
    """main -> task:a (2 steps) -> work -> leaf, main -> task:b -> task:a (a
    task named a awaited by b) -> work, and main -> work outside tasks;
    a thread whose root is a task frame too."""
    tree = CallTree()
    functions = [(1, "main", "app.py", 1), (2, "work", "app.py", 5), (3, "leaf", "app.py", 9),
                 (4, "task:a", "<asyncio task>", 1), (5, "task:b", "<asyncio task>", 1)]
    for fid, name, file, line in functions:
        tree.function(P, {"FunctionID": fid, "Name": name, "SourceFile": file,
                          "LineNumber": line})
    tree.add_thread(P, 100, _folded_thread([
        (-1, 1, 1, 1000, 100),          # 0 main
        (0, 4, 2, 400, 10),             # 1 main > task:a
        (1, 2, 2, 390, 290),            # 2 main > task:a > work
        (2, 3, 4, 100, 100),            # 3 ... > work > leaf
        (0, 5, 1, 300, 5),              # 4 main > task:b
        (4, 4, 1, 295, 5),              # 5 main > task:b > task:a
        (5, 2, 1, 290, 290),            # 6 ... > task:a > work
        (0, 2, 3, 200, 200)]))          # 7 main > work
    tree.add_thread(P, 101, _folded_thread([(-1, 4, 1, 50, 10), (0, 2, 1, 40, 40)]))
    return tree


def test_task_frames_are_labelled_by_their_task():
    tree = _task_tree()
    paths = tree.folded()
    assert paths[(MAIN, "task:b", "task:a", WORK)] == 290
    assert tree.task_keys == {(P, 4), (P, 5)}


def test_dropping_task_frames_merges_their_calls_into_the_callers():
    tree = _task_tree()
    tree.drop_tasks()
    assert not any(f.startswith("task:") for path in tree.folded() for f in path)
    stats = tree.functions()
    assert stats[WORK].calls == 2 + 1 + 3 + 1
    assert stats[LEAF].callers == Counter({WORK: 4})
    assert tree.folded() == Counter({
        (MAIN,): 100 + 10 + 5 + 5,        # the task frames' own time goes to main
        (MAIN, WORK): 290 + 290 + 200,
        (MAIN, WORK, LEAF): 100,
        (WORK,): 40})                      # the other thread's root was a task
    root = tree.roots[(P, 100, 1)]
    assert root.children[(P, 2)].calls == 6 and root.children[(P, 2)].parent is root
    assert (P, 101, 2) in tree.roots


def _task_timeline_tree():
    """Thread 100's calls with a timeline: main; a step of task a (work);
    a step of task a awaited by b (task:b, task:a, work); work outside any
    task; a step of task b alone."""
    tree = CallTree(timeline=True)
    for fid, name, file, line in ((1, "main", "app.py", 1), (2, "work", "app.py", 5),
                                  (4, "task:a", "<asyncio task>", 1),
                                  (5, "task:b", "<asyncio task>", 1)):
        tree.function(P, {"FunctionID": fid, "Name": name, "SourceFile": file,
                          "LineNumber": line})
    events = [(1000, 0, 0),                                         # main
              (1010, 1, 0), (1020, 2, 0), (1100, 2, 1), (1110, 1, 1),   # a: work
              (1200, 3, 0), (1210, 4, 0), (1220, 5, 0), (1300, 5, 1),   # b, a: work
              (1310, 4, 1), (1320, 3, 1),
              (1400, 6, 0), (1500, 6, 1),                           # work outside
              (1600, 3, 0), (1650, 3, 1),                           # b alone
              (2000, 0, 1)]
    data = b"".join(TIMELINE_RECORD.pack(*e) for e in events)
    records = TimelineRecords(io.BytesIO(data), {"count": len(events), "first": 1000,
                                                 "last": 2000})
    tree.add_thread(P, 100, _folded_thread([
        (-1, 1, 1, 1000, 700), (0, 4, 1, 100, 20), (1, 2, 1, 80, 80), (0, 5, 2, 170, 70),
        (3, 4, 1, 100, 20), (4, 2, 1, 80, 80), (0, 2, 1, 100, 100)], records))
    return tree


def test_async_timelines_give_each_task_a_track_of_its_steps():
    scan = _scan(tree=_task_timeline_tree())
    scan.tasks = True
    doc = json.loads(_write("speedscope", _view(scan, "speedscope")))
    label = [f["name"] if "file" not in f else f"{f['name']} ({f['file']}:{f['line']})"
             for f in doc["shared"]["frames"]]
    profiles = {p["name"]: [(e["type"], label[e["frame"]], e["at"]) for e in p["events"]]
                for p in doc["profiles"]}
    main, work, a, b = "main (app.py:1)", WORK, "task:a", "task:b"
    assert profiles == {
        "pid 100 MainThread": [("O", main, 1000), ("O", work, 1400), ("C", work, 1500),
                               ("C", main, 2000)],
        "pid 100 task:a (on MainThread, tid 100)": [
            ("O", a, 1010), ("O", work, 1020), ("C", work, 1100), ("C", a, 1110),
            ("O", b, 1200), ("O", a, 1210), ("O", work, 1220), ("C", work, 1300),
            ("C", a, 1310), ("C", b, 1320)],
        "pid 100 task:b (on MainThread, tid 100)": [("O", b, 1600), ("C", b, 1650)]}
    doc = json.loads(_write("chrome", _view(scan, "chrome")))
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    by_track = {}
    for e in doc["traceEvents"]:
        if e["ph"] in "BE":
            by_track.setdefault(names.get(e["tid"]), []).append((e["ph"], e.get("name"), e["ts"]))
    assert [(ph, ts) for ph, _, ts in by_track["MainThread"]] == [
        ("B", 0), ("B", 0.4), ("E", 0.5), ("E", 1)]
    assert [(ph, name) for ph, name, _ in by_track["task:a (on MainThread, tid 100)"]] == [
        ("B", "task:a"), ("B", WORK), ("E", None), ("E", None),
        ("B", "task:b"), ("B", "task:a"), ("B", WORK), ("E", None), ("E", None), ("E", None)]
    assert len(by_track["task:b (on MainThread, tid 100)"]) == 2
    # Without --async: one track per thread, as before.
    scan.tasks = False
    (only,) = json.loads(_write("speedscope", _view(scan, "speedscope")))["profiles"]
    assert only["name"] == "pid 100 MainThread" and len(only["events"]) == 16


def test_async_samples_go_on_their_innermost_tasks_track():
    tree = _task_timeline_tree()
    stacks = Counter({(MAIN, "task:b", "task:a", WORK): 3, (MAIN, "task:b"): 2, (MAIN, WORK): 1})
    scan = _scan(tree=CallTree(), samples=stacks, points=_points(stacks))
    scan.tree.labels.update(tree.labels)
    scan.tree.task_keys.update(tree.task_keys)
    scan.tasks = True
    doc = json.loads(_write("chrome", _view(scan, "chrome")))
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    on = Counter((names[tid], frames[-1]) for _pid, tid, _ts, frames in cpu_samples(doc))
    assert on == {("task:a (on MainThread, tid 100)", WORK): 3,
                  ("task:b (on MainThread, tid 100)", "task:b"): 2, ("MainThread", WORK): 1}
    profiles = json.loads(_write("speedscope", _view(scan, "speedscope")))["profiles"]
    assert sorted(p["name"] for p in profiles) == [
        "pid 100 MainThread", "pid 100 task:a (on MainThread, tid 100)",
        "pid 100 task:b (on MainThread, tid 100)"]


# ---- folding and cuts ----

def test_folded_text_reads_back_as_the_stacks():
    text = _formats.format_folded(SAMPLES)
    assert _parse_folded(text) == SAMPLES
    assert text.endswith("\n")


def test_a_cut_holds_its_threads_and_window():
    cut = Cut(pids={100}, tids={7}, start=10, end=20)
    assert cut.holds(100, 7, 10) and not cut.holds(100, 7, 20)
    assert not cut.holds(100, 8, 15) and not cut.holds(101, 7, 15)
    assert cut.process(100) and not cut.process(101)


def test_a_cut_in_seconds_is_made_absolute_from_the_captures_start():
    cut = Cut(pids={3}, since=0.5, until=2)
    absolute = cut.from_origin(1_000)
    assert (absolute.start, absolute.end) == (1_000 + 500_000_000, 1_000 + 2_000_000_000)
    assert absolute.pids == {3}
    # A capture without events: the window stays open.
    assert (cut.from_origin(None).start, cut.from_origin(None).end) == (0, 2**64 - 1)
    whole = cut.every_thread()
    assert whole.pids is None and (whole.since, whole.until) == (0.5, 2)


def test_a_cut_is_named_in_words():
    assert shown_part(Cut()) == ""
    assert shown_part(Cut(pids={2, 1}, tids={5}, since=0.5)) == "pid 1,2, tid 5, 0.5-end s"
    assert shown_part(Cut(until=3)) == "0-3 s"
    view = report_view(_scan(samples=SAMPLES), _report.FORMATS["folded"], False, "/x/cap/",
                       Cut(tids={5}), False, None, None)
    assert view.name == "cap [tid 5]"


# ---- diff ----

NEW = Counter({("a", "b"): 80, ("a", "c"): 20})
BASE = Counter({("a", "b"): 50, ("a", "c"): 50})


def test_diff_text_signs_say_which_paths_grew():
    text = _diff.text(NEW, BASE, "heading", 10)
    rows = {line.split()[-1]: line.split()[2] for line in text.splitlines()
            if line.strip() and line.split()[-1] in ("b", "c")}
    assert rows == {"b": "+30.0", "c": "-30.0"}
    paths = [line for line in text.splitlines() if line.endswith("a > b")]
    assert paths and "+30.0" in paths[0]


def test_diff_folded_has_baseline_then_now():
    assert _diff.folded(NEW, Counter({("a", "b"): 50, ("x",): 1})).splitlines() == [
        "a;b 50 80", "a;c 0 20", "x 1 0"]


def test_diff_colours_grown_red_shrunk_blue_held_white():
    color = _diff.colors(NEW, BASE)
    assert color(("a", "b"))[0].startswith("hsl(0,")
    assert color(("a", "c"))[0].startswith("hsl(220,")
    assert color(("a",))[0] == "hsl(220,80%,97%)"      # no change: the lightest
    assert _diff.inclusive_shares(NEW)[("a",)] == pytest.approx(1.0)


def test_diff_view_refuses_unlike_captures_and_writes_each_format():
    calls = _scan(tree=_tree())
    samples = _scan(samples=SAMPLES)
    with pytest.raises(ReportError, match="record both the same way"):
        diff_view(calls, samples, "new", "old", False, None)
    with pytest.raises(ReportError, match="no stacks or calls recorded to compare"):
        diff_view(_scan(), samples, "new", "old", False, None)
    base = _scan(samples=Counter({(MAIN, WORK, LEAF): 1, (MAIN, WORK): 9}))
    view = diff_view(samples, base, "new", "old", False, None)
    assert set(_fmt_diff.WRITERS) == {"text", "folded", "svg"}
    out = {}
    for fmt, write in _fmt_diff.WRITERS.items():
        buf = io.StringIO()
        write(buf, view)
        out[fmt] = buf.getvalue()
    assert out["text"].startswith("new against old: CPU samples")
    folded = {line.rsplit(" ", 2)[0]: line.rsplit(" ", 2)[1:] for line in
              out["folded"].splitlines()}
    assert folded[";".join((MAIN, WORK, LEAF))] == ["1", "6"]
    root = ET.fromstring(out["svg"])
    assert "red grew, blue shrank" in "".join(root.itertext())
    # Grouped by process and thread as the plain SVG; below them, coloured
    # by the call path's change: leaf's share went from 10% to 60%.
    fills = {g.get("data-n"): g.find("{http://www.w3.org/2000/svg}rect").get("fill")
             for g in root.iter("{http://www.w3.org/2000/svg}g")}
    assert fills["process 100"] == fills["MainThread (tid 100)"] == "hsl(0,0%,82%)"
    assert fills[LEAF].startswith("hsl(0,80%,")
    assert fills["read [libc.so.6]"].startswith("hsl(0,80%,")     # not in the baseline
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith(LEAF) and "10.0% -> 60.0%" in t for t in titles), titles


# ---- pprof ----

def test_pprof_decodes_to_the_stacks_and_values_given():
    samples = {((P, 100), (MAIN, WORK, LEAF)): (6, 600), ((P, 101), (MAIN,)): (1, 100),
               (((100, 2), 100), (WORK,)): (2, 20)}
    profile = _decode_pprof(_pprof.encode(samples, [("calls", "count"), ("time", "nanoseconds")],
                                          duration_ns=5, thread_names={(P, 101): "side"}))
    assert profile["types"] == [("calls", "count"), ("time", "nanoseconds")]
    got = {(names, values): labels for names, values, labels in profile["samples"]}
    assert got[(("leaf", "work", "main"), (6, 600))] == {"pid": 100, "tid": 100}   # leaf first
    assert got[(("main",), (1, 100))] == {"pid": 100, "tid": 101, "thread": "side"}
    assert got[(("work",), (2, 20))] == {"pid": 100, "tid": 100, "exec": 2}
    assert sum(v[1] for _, v, _ in profile["samples"]) == 720


def test_pprof_of_a_call_view_has_calls_and_time():
    view = _view(_scan(tree=_tree()), "pprof")
    profile = _decode_pprof(_write("pprof", view))
    assert profile["types"] == [("calls", "count"), ("time", "nanoseconds")]
    assert sum(v[0] for _, v, _ in profile["samples"]) == 11
    assert sum(v[1] for _, v, _ in profile["samples"]) == 1000


# ---- every output format, on a view ----

@pytest.mark.parametrize("fmt", ["text", "folded", "svg", "speedscope", "chrome", "pprof"])
def test_every_format_writes_a_sample_view(fmt):
    scan = _scan(samples=SAMPLES, points=_points(SAMPLES))
    out = _write(fmt, _view(scan, fmt))
    total = sum(SAMPLES.values())
    if fmt == "text":
        assert out.startswith(f"{total} CPU samples")
        (row,) = [line for line in out.splitlines() if line.endswith(LEAF)]
        assert row.split()[0] == "6"
    elif fmt == "folded":
        assert _parse_folded(out) == SAMPLES
    elif fmt == "svg":
        root = ET.fromstring(out)
        text = "".join(root.itertext())
        assert f"etwtrace: cap ({total}, CPU samples)" in text
        assert all(frame in text for frame in (MAIN, WORK, LEAF))
    elif fmt == "speedscope":
        doc = json.loads(out)
        assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
        (profile,) = doc["profiles"]
        # In real time: samples 10 ns apart from the first event, each
        # standing for the 10 ns to the next.
        assert profile["type"] == "sampled" and profile["unit"] == "nanoseconds"
        assert profile["weights"] == [10] * total and profile["endValue"] == 10 * total
        names = [f["name"] for f in doc["shared"]["frames"]]
        assert Counter(tuple(names[i] for i in s) for s in profile["samples"]) == Counter(
            {tuple(f.split(" (")[0] for f in k): v for k, v in SAMPLES.items()})
    elif fmt == "chrome":
        doc = json.loads(out)
        # A V8 CPU profile, read by Perfetto's rules: every sample, on its
        # thread, at its time (whole µs after the trace's first event).
        samples = cpu_samples(doc)
        assert Counter(s[3] for s in samples) == SAMPLES
        assert {s[:2] for s in samples} == {(100, 100)}
        assert [s[2] for s in samples] == [(ts - 1000) // 1000 for *_, ts, _, _ in
                                           _points(SAMPLES)]
        assert {e["name"] for e in doc["traceEvents"] if e["ph"] == "M"} == {
            "process_name", "thread_name"}
        assert "samples" not in doc and "stackFrames" not in doc
    else:
        profile = _decode_pprof(out)
        assert profile["types"] == [("samples", "count")]
        assert sum(v[0] for _, v, _ in profile["samples"]) == total


def test_chrome_cpu_samples_in_several_chunks_read_as_one_profile(monkeypatch):
    """A thread's samples past a chunk go on in the next ProfileChunk,
    which defines only the nodes it brings (each node once per profile)."""
    from etwtrace.report.formats import timeline as _timeline
    monkeypatch.setattr(_timeline, "CHUNK", 3)
    points = [(P, 100, 1000 + 2000 * i, frames, "SampledProfile")
              for i, frames in enumerate(sorted(SAMPLES.elements()))]
    out = _write("chrome", _view(_scan(samples=SAMPLES, points=points), "chrome"))
    doc = json.loads(out)
    chunks = [e for e in doc["traceEvents"] if e.get("name") == "ProfileChunk"]
    assert len(chunks) == 4     # 10 samples, 3 a chunk
    samples = cpu_samples(doc)  # (a node defined twice fails here)
    assert [s[3] for s in samples] == sorted(SAMPLES.elements())
    assert [s[2] for s in samples] == [2 * i for i in range(10)]     # µs


def test_speedscope_cpu_samples_keep_a_threads_idle_time():
    """Samples 1 ms apart with a 7 ms wait between: the wait, and the time
    before the thread's first sample, are empty stacks of their length;
    samples a little late (jitter) are no wait."""
    one, two = (MAIN, WORK), (MAIN, LEAF)
    times = [2_000_000, 3_000_000, 4_000_300, 5_000_000, 12_000_000, 13_000_000]
    points = [(P, 100, 1_000_000 + t, two if t >= 12_000_000 else one, "SampledProfile")
              for t in times]
    scan = _scan(samples=Counter({one: 4, two: 2}), points=points)
    scan.first = 1_000_000
    (profile,) = json.loads(_write("speedscope", _view(scan, "speedscope")))["profiles"]
    names = [f["name"] for f in json.loads(_write("speedscope", _view(scan, "speedscope")))[
        "shared"]["frames"]]
    shown = [([names[i] for i in s], w) for s, w in zip(profile["samples"], profile["weights"])]
    ms = 1_000_000
    assert shown == [([], 2 * ms), (["main", "work"], ms), (["main", "work"], ms + 300),
                     (["main", "work"], ms - 300), (["main", "work"], ms), ([], 6 * ms),
                     (["main", "leaf"], ms), (["main", "leaf"], ms)]
    assert profile["unit"] == "nanoseconds" and profile["endValue"] == 14 * ms


@pytest.mark.parametrize("fmt", ["text", "folded", "svg", "speedscope", "chrome", "pprof"])
def test_every_format_writes_a_call_view(fmt):
    out = _write(fmt, _view(_scan(tree=_tree(timeline=True)), fmt))
    if fmt == "text":
        assert out.startswith("11 calls (instrumented)")
        table = out.split("callers (<-)")[0]
        (row,) = [line for line in table.splitlines() if line.endswith(WORK)]
        assert row.split()[0] == "4"        # calls
    elif fmt == "folded":
        assert sum(_parse_folded(out).values()) == 1000
    elif fmt == "svg":
        assert "1000 ns" not in out and "0.001 ms" in "".join(ET.fromstring(out).itertext())
    elif fmt == "speedscope":
        (profile,) = json.loads(out)["profiles"]
        assert profile["type"] == "evented" and profile["unit"] == "nanoseconds"
        depth = 0
        for e in profile["events"]:
            depth += 1 if e["type"] == "O" else -1
            assert depth >= 0
        assert depth == 0 and len(profile["events"]) == 8
    elif fmt == "chrome":
        events = [e for e in json.loads(out)["traceEvents"] if e["ph"] in "BE"]
        opened = []
        for e in events:
            if e["ph"] == "B":
                opened.append(e["name"])
            else:
                assert opened
                opened.pop()
        assert not opened and len(events) == 8
        assert [e["name"] for e in events if e["ph"] == "B"][:3] == [MAIN, WORK, LEAF]
    else:
        assert sum(v[1] for _, v, _ in _decode_pprof(out)["samples"]) == 1000


def test_formats_refuse_what_they_cannot_show():
    empty = _scan()
    for fmt in ("text", "folded", "svg", "speedscope", "pprof"):
        with pytest.raises(ReportError, match="no stacks or calls recorded"):
            _view(empty, fmt)
    with pytest.raises(ReportError, match="no off-CPU time recorded"):
        _view(_scan(samples=SAMPLES), "folded", off_cpu=True)
    nothing = types.SimpleNamespace(**{**vars(empty), "ranges": [], "instants": []})
    with pytest.raises(ReportError, match="nothing to put on a timeline"):
        _view(nothing, "chrome")
    _view(empty, "chrome")      # a mark and a range are a timeline
    untimed = _scan(tree=_tree(timed=False))
    with pytest.raises(ReportError, match="no timeline"):
        _view(untimed, "speedscope")


def test_a_timeline_formats_size_is_estimated():
    calls = _view(_scan(tree=_tree(timeline=True)), "chrome")
    points = [(P, 100, 1000 + i * 1_000_000, frames, kind)      # 1 ms apart
              for i, (_, _, _, frames, kind) in enumerate(_points(SAMPLES) * 50)]
    samples = _view(_scan(samples=SAMPLES, points=points), "chrome")
    for view, formats in ((calls, ("speedscope", "chrome")), (samples, ("chrome",))):
        for fmt in formats:
            actual = len(_write(fmt, view))
            # Small files are mostly headers; the estimate counts the events.
            assert 0 < _report.FORMATS[fmt].size(view) <= actual, (fmt, view.kind)
    # 500 samples of 3 stacks: the chrome estimate within a third of it.
    chrome = len(_write("chrome", samples))
    assert _report.FORMATS["chrome"].size(samples) > chrome * 2 / 3


def test_every_format_is_a_module_with_a_writer_of_output_and_view():
    import inspect
    for fmt, entry in _report.FORMATS.items():
        assert entry.write.__module__ == f"etwtrace.report.formats.{fmt}", fmt
        assert list(inspect.signature(entry.write).parameters) == ["out", "view"]
    assert isinstance(_view(_scan(samples=SAMPLES), "text"), View)


# ---- a capture written with the project's CTF writer ----

def _tiny_capture(root):
    """Two Python functions (outer calls inner) and 5 CPU samples with
    stacks inside their address ranges, as the BPF sampler writes them."""
    from etwtrace.trace import ctfwrite as _ctfwrite
    (root / "ctf").mkdir(parents=True)
    trace = _ctfwrite.TraceWriter(str(root / "ctf"), 4242)
    stream = trace.stream(4242)
    stream.function(1000, 1, 0x1000, 0x1100, 3, True, "t.py", "outer")
    stream.function(1001, 2, 0x2000, 0x2100, 7, True, "t.py", "inner")
    for i in range(3):
        stream.sample(2000 + i, _ctfwrite.sample_payload([0x2010, 0x1010]))
    for i in range(2):
        stream.sample(3000 + i, _ctfwrite.sample_payload([0x1020]))
    trace.close()
    return root


def test_a_scan_names_samples_of_a_written_capture_and_cuts_them(tmp_path):
    cap = Capture(_tiny_capture(tmp_path))
    with Scan(cap, None) as scan:
        assert scan.samples == Counter({("outer (t.py:3)", "inner (t.py:7)"): 3,
                                        ("outer (t.py:3)",): 2})
        assert scan.lost_events() is None and scan.untraced_children() is None
    # The window [1 us, 2 us) after the first event holds the three inner samples.
    with Scan(cap, None, cut=Cut(since=1e-6, until=2e-6)) as scan:
        assert sum(scan.samples.values()) == 3
    with Scan(cap, None, cut=Cut(tids={1})) as scan:
        assert not scan.samples


def test_thread_names_of_a_capture_reach_every_view_of_threads(tmp_path):
    """A PythonThreadName event, written last (as at the end of tracing),
    names its thread in the scan, the SVG, speedscope, chrome and pprof;
    a thread without one stays `thread TID`, the main thread MainThread."""
    from etwtrace.trace import ctfwrite as _ctfwrite
    (tmp_path / "ctf").mkdir()
    trace = _ctfwrite.TraceWriter(str(tmp_path / "ctf"), 4242)
    main = trace.stream(4242)
    main.function(1000, 1, 0x1000, 0x1100, 3, True, "t.py", "outer")
    for tid in (4242, 4243, 4244):
        trace.stream(tid).sample(2000 + tid, _ctfwrite.sample_payload([0x1010]))
    main.thread_name(9000, 4243, "side worker")
    trace.close()
    cut = Cut(since=0, until=6e-6)      # the name is written after the window
    with Scan(Capture(str(tmp_path)), None, timeline=True, cut=cut) as scan:
        assert scan.threads == {((4242, 1), 4242): "MainThread",
                                ((4242, 1), 4243): "side worker",
                                ((4242, 1), 4244): "thread 4244"}
    outs = {}
    for fmt in ("svg", "speedscope", "chrome", "pprof"):
        out = tmp_path / f"out.{fmt}"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert _cli.main(["report", str(tmp_path), "--format", fmt, "-o", str(out)]) == 0, \
                err.getvalue()
        outs[fmt] = out.read_bytes()
    assert b">side worker (tid 4243)<" in outs["svg"] and b">thread 4244<" in outs["svg"]
    assert sorted(p["name"] for p in json.loads(outs["speedscope"])["profiles"]) == [
        "pid 4242 MainThread", "pid 4242 side worker (tid 4243)", "pid 4242 thread 4244"]
    names = {e["tid"]: e["args"]["name"] for e in json.loads(outs["chrome"])["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {4242: "MainThread", 4243: "side worker", 4244: "thread 4244"}
    labels = {s[2]["tid"]: s[2].get("thread") for s in _decode_pprof(outs["pprof"])["samples"]}
    assert labels == {4242: "MainThread", 4243: "side worker", 4244: "thread 4244"}


@pytest.mark.parametrize("fmt", ["text", "folded", "svg", "speedscope", "chrome", "pprof"])
def test_the_report_command_writes_every_format_of_a_written_capture(tmp_path, fmt):
    cap = _tiny_capture(tmp_path / "cap")
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _cli.main(["report", str(cap), "--format", fmt, "-o", str(out)]) == 0, \
            err.getvalue()
    data = out.read_bytes()
    if fmt == "pprof":
        assert sum(v[0] for _, v, _ in _decode_pprof(data)["samples"]) == 5
    elif fmt == "svg":
        ET.fromstring(data)
    elif fmt in ("speedscope", "chrome"):
        json.loads(data)
    elif fmt == "folded":
        assert sum(_parse_folded(data.decode()).values()) == 5
    else:
        assert data.decode().startswith("5 CPU samples")

