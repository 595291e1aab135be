"""The capture directory's one owner on each side (trace/capture.py), on
captures made here with the project's own CTF writer: Capture, opened
once, gives the manifest, streams, perf's events, the start time, losses
and files, and the report reads a capture only through it; CaptureDir
writes the manifest through the directory it holds.  No subprocess and no
perf (marked `unit`)."""

import ast
import json
import os

import pytest

import etwtrace
from etwtrace.report.scan import Cut, Scan
from etwtrace.trace import ctfwrite as _ctfwrite
from etwtrace.trace.capture import MANIFEST_ROOM, Capture, CaptureDir, CaptureError
from etwtrace.trace.files import NoCapture, TraceError

pytestmark = pytest.mark.unit

PID = 4242
MANIFEST = "etwtrace-capture.json"
# The events_discarded field of a version-2 packet header (ctfwrite.HEAD).
DISCARDED_AT = 48


def _trace(ctf, pid, functions=(), samples=(), tid=None):
    """One process's trace: PythonFunction events (ts, fid, begin, end,
    name) and CPU samples (ts, stack) on one thread; returns its stream's
    path."""
    trace = _ctfwrite.TraceWriter(str(ctf), pid)
    stream = trace.stream(tid or pid)
    for ts, fid, begin, end, name in functions:
        stream.function(ts, fid, begin, end, fid, True, "t.py", name)
    for ts, stack in samples:
        stream.sample(ts, _ctfwrite.sample_payload(stack))
    trace.close()
    return stream.path


def _capture(root, manifest=None):
    """A capture of one process: outer and inner, 3 samples in inner from
    t=2000 and 2 in outer from t=3000."""
    ctf = root / "ctf"
    ctf.mkdir(parents=True)
    stream = _trace(ctf, PID, [(1000, 1, 0x1000, 0x1100, "outer"), (1001, 2, 0x2000, 0x2100, "inner")],
                    [(2000 + i, [0x2010, 0x1010]) for i in range(3)]
                    + [(3000 + i, [0x1020]) for i in range(2)])
    if manifest is not None:
        (root / MANIFEST).write_text(json.dumps(manifest))
    return root, stream


def _perf_script(root, lines):
    (root / "perf.script").write_text("".join(lines))


def _perf_sample(pid, seconds, event="cpu-clock", frames=(("2010", "native_work", "/usr/lib/libx.so"),)):
    """One sample of `perf script`'s text, at `seconds` (9 decimals)."""
    head = f"python {pid}/{pid} {seconds:.9f}: {event}: \n"
    return head + "".join(f"\t    {ip} {sym} ({dso})\n" for ip, sym, dso in frames) + "\n"


# ---- Capture: what it is made of, found once ----

def test_a_capture_gives_its_manifest_streams_files_and_start(tmp_path):
    root, stream = _capture(tmp_path / "cap", manifest={"tool": "etwtrace", "mode": "sampled"})
    cap = Capture(root)
    assert cap.path == str(root)
    assert cap.manifest == {"tool": "etwtrace", "mode": "sampled"}
    assert cap.perf_script is None and cap.perf_events() is None
    (s,) = cap.streams
    assert (s.pid, s.image, s.path, s.version, s.call_times) == (PID, 1, stream, 2, True)
    assert s.process == (PID, 1)
    assert cap.files() == [stream]
    assert cap.start == 1000        # its first packet's begin: the first function
    assert cap.problems == []
    assert cap.losses() == {} and cap.lost_events() is None


def test_a_capture_without_a_manifest_has_an_empty_one(tmp_path):
    root, _ = _capture(tmp_path / "cap")
    assert Capture(root).manifest == {}


def test_what_is_no_capture_is_refused_when_opened(tmp_path):
    with pytest.raises(NoCapture, match="no such capture"):
        Capture(tmp_path / "nothing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NoCapture, match="not a capture directory"):
        Capture(tmp_path / "file")
    with pytest.raises(NoCapture, match=r"not an etwtrace capture \(no ctf/ or perf.script\)"):
        Capture(tmp_path)
    root, _ = _capture(tmp_path / "real")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(root / "ctf", linked / "ctf")
    with pytest.raises(TraceError, match="a symbolic link; not followed"):
        Capture(linked)


def test_a_manifest_that_is_not_one_is_refused_when_opened(tmp_path):
    root, _ = _capture(tmp_path / "cap")
    (root / MANIFEST).write_text("[1, 2]")
    with pytest.raises(TraceError, match="not a JSON object"):
        Capture(root)
    (root / MANIFEST).unlink()
    os.mkfifo(root / MANIFEST)
    with pytest.raises(TraceError, match="FIFO"):
        Capture(root)


def test_a_trace_that_is_not_one_is_a_problem_and_the_rest_is_read(tmp_path):
    root, stream = _capture(tmp_path / "cap")
    foreign = root / "ctf" / "pid-77"
    foreign.mkdir()
    (foreign / "metadata").write_text("/* CTF 1.8 */ trace { major = 1; minor = 8; };")
    (foreign / "stream-0-tid-77").write_bytes(b"\0" * 64)
    cap = Capture(root)
    assert [s.path for s in cap.streams] == [stream]
    assert len(cap.problems) == 1
    assert cap.problems[0].startswith("process 77 left out: ")
    assert "not an etwtrace CTF trace" in cap.problems[0]
    # open_trace says it as a warning and reads the rest; so does a scan.
    with pytest.warns(RuntimeWarning, match="process 77 left out"):
        names = [e.name for e in etwtrace.open_trace(root)]
    assert names.count("SampledProfile") == 5
    with Scan(cap, None) as scan:
        assert scan.problems == cap.problems
        assert sum(scan.samples.values()) == 5


def test_losses_are_counted_per_process_from_the_streams(tmp_path):
    root, stream = _capture(tmp_path / "cap")
    other = _trace(root / "ctf", 99, samples=[(5000, [0x10])])
    for path, lost in ((stream, 7), (other, 0)):
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, lost.to_bytes(8, "little"), DISCARDED_AT)
        os.close(fd)
    cap = Capture(root)
    assert cap.losses() == {PID: 7}
    assert "7" in cap.lost_events() and str(PID) in cap.lost_events()
    with Scan(cap, None) as scan:
        assert scan.lost_events() == cap.lost_events()


def test_untraced_children_come_from_the_manifest_else_the_notes(tmp_path):
    kept = [{"pid": 5, "parent": PID, "command": ["x", "--y"], "why": "not Python"}]
    root, _ = _capture(tmp_path / "cap", manifest={"untraced_children": kept})
    assert Capture(root).untraced_children() == kept
    with Scan(Capture(root), None) as scan:
        assert "5" in scan.untraced_children()
    bare, _ = _capture(tmp_path / "bare")
    assert Capture(bare).untraced_children() == []


def test_perf_events_are_read_in_each_processes_image_and_dedupe_stack_samples(tmp_path):
    root, _ = _capture(tmp_path / "cap")
    # The process exec'd: its second program's trace begins at t=10000.
    _trace(root / "ctf", PID, [(10000, 1, 0x5000, 0x5100, "again")])
    probe = "sdt_etwtrace:stack_sample"
    _perf_script(root, [
        _perf_sample(PID, 0.0000015),            # 1500 ns: the first program
        _perf_sample(PID, 0.0000200),            # 20000 ns: the second
        _perf_sample(PID, 0.0000210, probe),     # the built-in recorder has it: left out
        _perf_sample(555, 0.0000220, probe),     # a process it missed: kept
    ])
    cap = Capture(root)
    assert cap.perf_script == str(root / "perf.script")
    assert cap.files()[-1] == cap.perf_script
    assert sorted({(s.pid, s.image) for s in cap.streams}) == [(PID, 1), (PID, 2)]
    events = list(cap.perf_events())
    assert [(e.name, e.pid, e.image, e.timestamp) for e in events] == [
        ("SampledProfile", PID, 1, 1500), ("SampledProfile", PID, 2, 20000),
        ("PythonStackSample", 555, 1, 22000)]
    assert events[2].fields["Mark"] == "" and set(events[2].fields) == {"Mark", "Truncated"}
    # The start is the first event of any recorder: perf's, before the streams'.
    (root / "perf.script").write_text(_perf_sample(PID, 0.0000005))
    assert Capture(root).start == 500


def test_a_capture_of_perf_alone_is_a_capture(tmp_path):
    root = tmp_path / "cap"
    root.mkdir()
    _perf_script(root, [_perf_sample(PID, 0.000002)])
    cap = Capture(root)
    assert cap.streams == [] and cap.files() == [cap.perf_script]
    assert cap.start == 2000
    with Scan(cap, None) as scan:
        assert list(scan.samples.values()) == [1]


def test_a_scan_cut_in_seconds_counts_from_the_captures_start(tmp_path):
    root, _ = _capture(tmp_path / "cap")
    cap = Capture(root)
    # [1 us, 2 us) after the start (t=1000): the three samples in inner.
    with Scan(cap, None, cut=Cut(since=1e-6, until=2e-6)) as scan:
        assert scan.samples == {("outer (t.py:1)", "inner (t.py:2)"): 3}


def test_a_scan_of_a_capture_whose_every_trace_is_unreadable_is_an_error(tmp_path):
    root = tmp_path / "cap"
    bad = root / "ctf" / "pid-9"
    bad.mkdir(parents=True)
    (bad / "metadata").write_text("not a trace")
    (bad / "stream-0-tid-9").write_bytes(b"\0" * 64)
    with pytest.raises(TraceError, match="no process's trace could be read"):
        Scan(Capture(root), None)


# ---- CaptureDir: the manifest written through the held directory ----

def test_the_manifest_is_written_into_its_room_and_updated(tmp_path):
    directory = CaptureDir(str(tmp_path / "cap")).open()
    try:
        directory.write_manifest(mode="stack", started=1.5)
        directory.write_manifest(finished=2.5)
        assert directory.read_manifest() == {"mode": "stack", "started": 1.5, "tool": "etwtrace",
                                             "format": 1, "finished": 2.5}
    finally:
        directory.close()
    data = (tmp_path / "cap" / MANIFEST).read_bytes()
    assert len(data) == MANIFEST_ROOM
    assert json.loads(data)["finished"] == 2.5
    assert os.stat(tmp_path / "cap" / MANIFEST).st_mode & 0o777 == 0o600


def test_the_manifest_goes_into_the_held_directory_even_when_its_path_moves(tmp_path):
    """Written through the descriptor, not the path: a directory moved away
    and its name made a symlink elsewhere does not send it there."""
    directory = CaptureDir(str(tmp_path / "cap")).open()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        os.rename(tmp_path / "cap", tmp_path / "moved")
        os.symlink(elsewhere, tmp_path / "cap")
        directory.write_manifest(mode="stack")
    finally:
        directory.close()
    assert json.loads((tmp_path / "moved" / MANIFEST).read_text())["mode"] == "stack"
    assert os.listdir(elsewhere) == []


def test_a_manifest_that_is_a_symlink_is_not_written_through(tmp_path):
    directory = CaptureDir(str(tmp_path / "cap")).open()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    try:
        os.symlink(victim, tmp_path / "cap" / MANIFEST)
        assert directory.read_manifest() == {}
        with pytest.raises(CaptureError, match="cannot write the capture's manifest"):
            directory.write_manifest(mode="stack")
    finally:
        directory.close()
    assert victim.read_text() == "untouched"


def test_a_manifest_that_is_a_fifo_is_neither_waited_on_nor_written(tmp_path):
    directory = CaptureDir(str(tmp_path / "cap")).open()
    try:
        os.mkfifo(tmp_path / "cap" / MANIFEST)
        assert directory.read_manifest() == {}
        with pytest.raises(CaptureError, match="cannot write the capture.s manifest"):
            directory.write_manifest(mode="stack")
    finally:
        directory.close()


def test_a_damaged_manifest_is_replaced_and_the_capture_read(tmp_path):
    directory = CaptureDir(str(tmp_path / "cap")).open()
    try:
        (tmp_path / "cap" / MANIFEST).write_text("{not json")
        assert directory.read_manifest() == {}
        directory.write_manifest(mode="sampled")
    finally:
        directory.close()
    (tmp_path / "cap" / "ctf").mkdir()
    _trace(tmp_path / "cap" / "ctf", PID, samples=[(10, [0x1])])
    assert Capture(tmp_path / "cap").manifest["mode"] == "sampled"


def test_only_an_earlier_capture_is_cleared_as_its_manifest_says(tmp_path):
    root, stream = _capture(tmp_path / "cap", manifest={"tool": "etwtrace"})
    CaptureDir(str(root)).open().close()
    assert os.listdir(root) == []
    other, _ = _capture(tmp_path / "other", manifest={"tool": "someone else"})
    for way in (lambda d: d.check(), lambda d: d.open()):
        with pytest.raises(CaptureError, match="not an etwtrace capture; refusing"):
            way(CaptureDir(str(other)))
    assert sorted(os.listdir(other)) == ["ctf", MANIFEST]


def test_a_directory_not_held_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # (a descriptor left unset would mean here)
    directory = CaptureDir(str(tmp_path / "cap"))
    with pytest.raises(ValueError, match="not held"):
        directory.write_manifest(mode="stack")
    with pytest.raises(ValueError, match="not held"):
        directory.read_manifest()
    assert os.listdir(tmp_path) == []


# ---- the report reaches into a capture only through Capture ----

REPORT = os.path.join(os.path.dirname(etwtrace.__file__), "report")
# What the report may take from trace/ besides Capture: words for people,
# and the format's mark of an asyncio task's frame (its SourceFile).
WORDS = {("etwtrace.trace.children", "describe"), ("etwtrace.trace", "TASK_FILE")}


def _trace_imports(path):
    """(module, name) of each import from etwtrace.trace in a report module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = "etwtrace." + os.path.relpath(os.path.dirname(path), os.path.dirname(REPORT)) \
        .replace(os.sep, ".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)] \
                if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
    return [(m, n) for m, n in found
            if m == "etwtrace.trace" or m.startswith("etwtrace.trace.")]


def test_the_report_takes_nothing_of_a_capture_but_through_capture():
    taken = []
    for folder, _dirs, files in os.walk(REPORT):
        for name in files:
            if name.endswith(".py"):
                taken += _trace_imports(os.path.join(folder, name))
    assert ("etwtrace.trace.capture", "Capture") in taken
    assert [t for t in taken if t[0] != "etwtrace.trace.capture" and t not in WORDS] == []
