"""Reading captures: real clients (babeltrace2, perf) and damaged input."""
import glob
import os
import shutil
import subprocess
import warnings

import pytest

import etwtrace
from pathlib import Path
from conftest import need_perf, need_tool


def _streams(path):
    return sorted(glob.glob(os.path.join(path, "ctf", "pid-*", "stream-*")))


def test_babeltrace2_reads_every_trace(capture):
    need_tool("babeltrace2")
    cap = capture("threaded.py")
    proc = subprocess.run(["babeltrace2", str(cap.path / "ctf")], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    ours = cap.events()
    # babeltrace2 sees exactly the events open_trace sees, and the thread
    # names open_trace leaves out (they are the report's, not the contract's).
    lines = proc.stdout.strip().splitlines()
    names = [line for line in lines if "PythonThreadName:" in line]
    assert names and len(lines) - len(names) == len(ours)
    assert proc.stdout.count("PythonStackSample") == 30
    assert "Name = \"a\"" in proc.stdout


@pytest.mark.versioned
def test_perf_script_names_python_functions(capture):
    need_perf()
    cap = capture("hot.py", "0.5", recorder="perf")
    text = (cap.path / "perf.script").read_text(errors="replace")
    assert "py::inner:" in text and "py::outer:" in text
    # perf opens what it recorded itself, naming Python frames through the
    # perf map (frame-pointer call graphs) or the injected jitdump (DWARF),
    # once they are put back in /tmp as the capture's README.txt says.
    perf = shutil.which("perf")
    copies = _put_back_in_tmp(cap.path)
    try:
        raw = subprocess.run([perf, "script", "-i", str(cap.path / "perf.data")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                             errors="replace")
    finally:
        for copy in copies:
            os.unlink(copy)
    assert raw.returncode == 0
    assert "py::inner:" in raw.stdout


@pytest.mark.versioned
def test_perf_inject_jit_succeeds_and_makes_elf_images(capture):
    need_perf()
    cap = capture("basic.py", recorder="perf")
    manifest = (cap.path / "etwtrace-capture.json").read_text()
    if '"callgraph": "dwarf"' not in manifest and '"callgraph": "mixed"' not in manifest:
        pytest.skip("frame-pointer call graphs alone: no inject needed")
    # The injected data replaced perf.data: one copy of perf's data.
    assert (cap.path / "perf.data").is_file() and not (cap.path / "perf.jit.data").exists()
    assert '"perf_jit_injected": true' in manifest
    images = glob.glob(str(cap.path / "jit" / "jitted-*.so"))
    assert images
    with open(images[0], "rb") as f:
        assert f.read(4) == b"\x7fELF"


def _put_back_in_tmp(path):
    """The capture's perf maps and images copied into /tmp (README.txt)."""
    made = []
    for copy in glob.glob(str(path / "maps" / "*")) + glob.glob(str(path / "jit" / "*")):
        target = os.path.join("/tmp", os.path.basename(copy))
        if not os.path.lexists(target):
            shutil.copyfile(copy, target)
            made.append(target)
    return made


def test_capture_is_self_contained(capture, tmp_path):
    cap = capture("by_arg.py", "a", "b")
    moved = tmp_path / "elsewhere"
    shutil.move(str(cap.path), moved)
    with etwtrace.open_trace(moved) as trace:
        assert sum(e.name == "PythonStackSample" for e in trace) == 2
    assert glob.glob(str(moved / "maps" / "perf-*.map"))


def test_missing_capture_is_a_trace_error(tmp_path):
    with pytest.raises(etwtrace.TraceError, match="no such capture"):
        etwtrace.open_trace(tmp_path / "nothing")
    with pytest.raises(etwtrace.TraceError, match="not an etwtrace capture"):
        etwtrace.open_trace(tmp_path)


def test_corrupt_stream_is_left_out_with_a_warning(capture):
    """One stream's damage does not spoil the rest of a capture (#22): it
    is left out with a RuntimeWarning naming it."""
    cap = capture("basic.py")
    stream = _streams(cap.path)[0]
    with open(stream, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef")  # destroy the packet magic
    with pytest.warns(RuntimeWarning, match="bad packet magic") as said:
        events = list(etwtrace.open_trace(cap.path))
    assert any(stream in str(w.message) for w in said)
    assert events == []


def test_foreign_metadata_is_refused(capture):
    cap = capture("basic.py")
    meta = glob.glob(str(cap.path / "ctf" / "pid-*" / "metadata"))[0]
    with open(meta, "w") as f:
        f.write("/* CTF 1.8 */ trace { major = 1; minor = 8; };")
    with pytest.warns(RuntimeWarning, match="not an etwtrace CTF trace") as said:
        events = list(etwtrace.open_trace(cap.path))
    assert any("left out" in str(w.message) for w in said)
    assert events == []


def test_truncated_stream_keeps_complete_events_and_warns(capture):
    cap = capture("by_arg.py", "a", "b", "c")
    before = [e for e in cap.events() if e.name == "PythonStackSample"]
    assert len(before) == 3
    stream = _streams(cap.path)[0]
    size = os.path.getsize(stream)
    with open(stream, "r+b") as f:
        f.truncate(size - 20)  # cut into the last event(s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = list(etwtrace.open_trace(cap.path))
    assert any("truncated" in str(w.message) for w in caught)
    samples = [e for e in after if e.name == "PythonStackSample"]
    assert 1 <= len(samples) <= 3
    assert [e.fields["Mark"] for e in samples] == ["a", "b", "c"][:len(samples)]


def test_garbage_bytes_never_crash_the_reader(capture):
    import random
    cap = capture("basic.py")
    stream = _streams(cap.path)[0]
    original = Path(stream).read_bytes()
    rng = random.Random(1234)
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with open(stream, "wb") as f:
            f.write(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                list(etwtrace.open_trace(cap.path))
            except etwtrace.TraceError:
                pass
