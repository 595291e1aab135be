"""Deep stacks in stack mode with the perf recorder (issue 28, item 4):
whole at 100 Python frames deep, and a stack perf still cut short is
marked [truncated] in every view of report, never shown as a shorter
stack."""
import errno
import sys
import gzip
import json
import os
import shutil
import subprocess
import time
import xml.dom.minidom

import pytest

from conftest import SCRIPTS, name_stack, need_perf, python_functions, run_etwtrace
from sessions import Box, wait_joined

import etwtrace
from etwtrace.capture import perf as _perf
from etwtrace.trace import perfscript as _perfscript


def _leaf_samples(events, pid):
    """(Python names innermost first, Truncated) of the CPU samples of
    `pid` that hit deep.py's leaf()."""
    funcs = [f for f in python_functions(events, "deep.py") if f.pid == pid]
    samples = [(name_stack(e.stack, funcs), e.fields["Truncated"]) for e in events
               if e.name == "SampledProfile" and e.pid == pid]
    return [(names, cut) for names, cut in samples if names[:1] == ["leaf"]]


def _check_whole(samples, depth):
    expected = ["leaf"] + ["down"] * depth + ["main", "<module>"]
    assert len(samples) >= 200, f"only {len(samples)} samples in leaf()"
    whole = [names for names, _cut in samples if names == expected]
    cut = [names for names, _cut in samples if names != expected]
    assert len(whole) >= 0.99 * len(samples), \
        f"{len(whole)} of {len(samples)} whole; cut: {[(len(s), s[-3:]) for s in cut[:5]]}"


def _check_whole_or_marked(samples, depth):
    """Where perf cannot reach the root, every sample that misses it says so."""
    expected = ["leaf"] + ["down"] * depth + ["main", "<module>"]
    assert len(samples) >= 200, f"only {len(samples)} samples in leaf()"
    unmarked = [names for names, cut in samples if names != expected and not cut]
    assert len(unmarked) <= 0.01 * len(samples), [(len(s), s[-3:]) for s in unmarked[:5]]


def _reaches(cap, depth):
    """Whether perf's CPU stacks reach `depth` calls deep here: walked by
    frame pointers (up to FP_MAX_STACK frames), or in a DWARF stack copy
    with room for depth + 10 Python frames and 8 KiB of the leaf's C
    frames (each Python frame takes 370 to 930 bytes: BENCHMARKS.md)."""
    manifest = json.loads((cap.path / "etwtrace-capture.json").read_text())
    if _perf.uses_frame_pointers(manifest["callgraph"]):
        return True
    per_frame = int(run_etwtrace("--stack", "--", SCRIPTS / "stack_bytes.py", check=True).stdout)
    size = int(next(a.split(",")[1] for a in manifest["perf_command"] if a.startswith("dwarf,")))
    return (depth + 10) * per_frame + 8192 <= size


def _max_stack_set_back(stderr):
    """kernel.perf_event_max_stack is back where it was before etwtrace
    raised it, or a profiler recording then kept it raised (said)."""
    return not os.path.exists(_perf.SAVED_MAX_STACK) or "stays at" in stderr


@pytest.mark.versioned
@pytest.mark.parametrize("depth", [30, 100])
def test_deep_recursion_keeps_its_root_in_stack_mode(capture, depth):
    need_perf()
    cap = capture("deep.py", str(depth), "1", recorder="perf")
    assert _max_stack_set_back(cap.proc.stderr)
    events = cap.events()
    pid = python_functions(events, "deep.py")[0].pid
    samples = _leaf_samples(events, pid)
    if depth > 30 and not _reaches(cap, depth):
        # Debian's 3.14 keeps no frame pointers and takes 912 bytes of C
        # stack a Python frame: 64 KiB of stack copy reach ~70 of them.
        _check_whole_or_marked(samples, depth)
        assert "cut short by perf" in run_etwtrace("report", cap.path, check=True).stdout
        return
    _check_whole(samples, depth)
    # The report's view of them: main() under (nearly) every sample.
    folded = run_etwtrace("report", cap.path, "--format", "folded", check=True).stdout
    total = in_main = 0
    for line in folded.splitlines():
        stack, count = line.rsplit(" ", 1)
        if "leaf (" in stack:
            total += int(count)
            in_main += int(count) * ("<module> (" in stack and "main (" in stack)
    assert in_main >= 0.99 * total, (in_main, total)


@pytest.mark.versioned
def test_instrumented_samples_cut_natively_keep_their_whole_python_stack(capture, tmp_path,
                                                                       monkeypatch):
    # 4 KiB stack copies cut every native stack of a 100-deep recursion;
    # in instrumented mode the Python calls come from the call stream, whole
    # from <module>, so those samples are not marked.
    need_perf()
    profile = tmp_path / "small.etwprofile"
    profile.write_text("[Small]\ncpu_samples = yes\nstack_sample_probe = no\n"
                       "dwarf_stack_size = 4096\n")
    monkeypatch.setenv("ETWTRACE_PROFILE", str(profile))
    monkeypatch.setenv("ETWTRACE_CALLGRAPH", "dwarf")
    cap = capture("deep.py", "100", "1", recorder="perf", mode="instrumented", preset="Small")
    with etwtrace.open_trace(cap.path) as trace:
        cut = sum(1 for e in trace if e.name == "SampledProfile" and e.fields["Truncated"])
    assert cut >= 200, "the native stacks are cut"
    folded = run_etwtrace("report", cap.path, "--format", "folded", check=True).stdout
    leaf = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in folded.splitlines()
            if "leaf (" in line}
    whole = sum(n for stack, n in leaf.items()
                if stack.count("down (") == 100 and "<module> (" in stack
                and not stack.startswith("[truncated]"))
    assert whole >= 0.99 * sum(leaf.values()), list(leaf)[:3]


@pytest.mark.versioned
@pytest.mark.skipif(os.environ.get("ETWTRACE_IN_CHROOT") == "1",
                    reason="perf -a in a chroot records the host's paths of the chroot's "
                    "files (see test_session.py); the host's run tests this")
@pytest.mark.skipif(os.geteuid() != 0, reason="the machine's recording session is root's")
def test_deep_recursion_keeps_its_root_in_a_recording_session():
    need_perf()
    box = Box()
    try:
        capture = box.path("capture")
        # Started first and joining the session (as session tests do: a
        # process starting while perf -a starts may get its maps twice,
        # and perf then unwinds none of its stacks); its leaf runs on while
        # the session starts (seconds, on a busy machine).
        proc = subprocess.Popen(
            [sys.executable, "-m", "etwtrace", "--stack", "--", SCRIPTS / "deep.py", "100", "4"],
            env=box.env, cwd=box.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        box.start(capture, "--recorder", "perf", "--preset", "CPU")
        wait_joined(box, capture, [proc.pid])
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        stopped = box.stop()
        assert _max_stack_set_back(stopped.stderr)
        events = list(etwtrace.open_trace(capture))
        _check_whole(_leaf_samples(events, proc.pid), 100)
    finally:
        box.cleanup()


# ---- the marking, on a capture perf cut short ----

CUT_SCRIPT = """\
python 100/100   10.000000000: PERF_RECORD_MMAP2 100/100: [0x400000(0x1000) @ 0 fe:00 1 0]: r-xp /usr/bin/python3
python 100/100   10.001000000: cpu-clock/freq=999/: 
\t            1100 work (/usr/bin/python3)
\t            1200 caller (/usr/bin/python3)
\t            1300 __libc_start_call_main (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t            1400 _start (/usr/bin/python3)
\t    7ffc1f87ae1a [unknown] ([stack])

python 100/100   10.002000000: cpu-clock/freq=999/: 
\t            1100 work (/usr/bin/python3)
\t            1500 middle (/usr/bin/python3)

python 100/100   10.003000000: cpu-clock/freq=999/: 
\t            1100 work (/usr/bin/python3)
\t            1500 middle (/usr/bin/python3)

python 100/100   10.004000000: cpu-clock/freq=999/: 
\t            1100 work (/usr/bin/python3)
\t            1600 other (/usr/bin/python3)
\tffffffffffffffff [unknown] ([unknown])

"""


@pytest.fixture
def cut_capture(tmp_path):
    """A capture of four CPU samples: one whole, three cut short."""
    path = tmp_path / "cut"
    path.mkdir()
    (path / "perf.script").write_text(CUT_SCRIPT)
    (path / "etwtrace-capture.json").write_text(json.dumps(
        {"format": 1, "mode": "stack", "recorder": "perf", "callgraph": "dwarf"}))
    return path


NOTE = "3 of 4 CPU samples (75.0%) have stacks cut short"


def _report(path, *args):
    proc = run_etwtrace("report", path, "--no-stacktags", *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_a_cut_stack_is_marked_in_text(cut_capture):
    lines = _report(cut_capture).stdout.splitlines()
    assert lines[0].startswith(f"note: {NOTE}") and "[truncated]" in lines[0]
    rows = {line.split()[-1]: line.split() for line in lines if line.strip().endswith("]")}
    assert rows["[truncated]"][0] == "3"      # total: the three cut samples


def test_a_cut_stack_is_marked_in_folded(cut_capture):
    proc = _report(cut_capture, "--format", "folded")
    stacks = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines())
    assert stacks == {
        "_start [python3];__libc_start_call_main [libc.so.6];caller [python3];work [python3]": "1",
        "[truncated];middle [python3];work [python3]": "2",
        "[truncated];other [python3];work [python3]": "1",
    }
    assert NOTE in proc.stderr


def test_a_cut_stack_is_marked_in_svg(cut_capture, tmp_path):
    _report(cut_capture, "--format", "svg", "-o", tmp_path / "f.svg")
    doc = xml.dom.minidom.parse(str(tmp_path / "f.svg"))
    texts = [t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild]
    assert any(NOTE in t for t in texts), texts[:3]
    titles = [t.firstChild.data for t in doc.getElementsByTagName("title") if t.firstChild]
    assert any(t.startswith("[truncated]") and "3 samples" in t for t in titles), titles


def test_a_cut_stack_is_marked_in_speedscope(cut_capture, tmp_path):
    _report(cut_capture, "--format", "speedscope", "-o", tmp_path / "s.json")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert NOTE in doc["name"]
    frames = [f["name"] for f in doc["shared"]["frames"]]
    cut = frames.index("[truncated]")
    samples = [s for p in doc["profiles"] for s in p["samples"]]
    assert sum(1 for s in samples if s[:1] == [cut]) == 3     # (an empty stack: idle time)


def test_a_cut_stack_is_marked_in_chrome(cut_capture, tmp_path):
    _report(cut_capture, "--format", "chrome", "-o", tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert NOTE in doc["otherData"]["title"]
    assert "[truncated]" in (tmp_path / "c.json").read_text()


def test_a_cut_stack_is_marked_in_pprof(cut_capture, tmp_path):
    _report(cut_capture, "--format", "pprof", "-o", tmp_path / "p.pb.gz")
    data = gzip.decompress((tmp_path / "p.pb.gz").read_bytes())
    assert b"[truncated]" in data and NOTE.encode() in data
    if shutil.which("go"):
        proc = subprocess.run(["go", "tool", "pprof", "-top", str(tmp_path / "p.pb.gz")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                              env=dict(os.environ, HOME=str(tmp_path)), timeout=300)
        assert "[truncated]" in proc.stdout, proc.stdout + proc.stderr


def test_open_trace_says_which_stacks_were_cut(cut_capture):
    with etwtrace.open_trace(cut_capture) as trace:
        samples = [e for e in trace if e.name == "SampledProfile"]
    assert [e.fields["Truncated"] for e in samples] == [False, True, True, True]
    # The frame read past the whole stack's root is dropped.
    assert len(samples[0].stack) == 4 and samples[0].frames[-1] == ("_start", "/usr/bin/python3")


@pytest.mark.parametrize("frames, whole", [
    ([("f", "/x/python3"), ("_start", "/x/python3")], True),
    ([("f", "/x/libpython3.11.so.1.0"), ("start_thread", "/lib/libc.so.6"),
      ("__GI___clone3", "/lib/libc.so.6")], True),
    ([("f", "/x/python3"), ("__libc_start_main@@GLIBC_2.34", "/lib/libc.so.6")], True),
    ([("f", "/x/python3"), ("_PyEval_Vector", "/x/python3")], False),
    # A function of another library named like libc's: not a root.
    ([("f", "/x/python3"), ("start_thread", "/x/libgame.so")], False),
    ([("schedule", "[kernel.kallsyms]")], True),       # no user frames: not judged
    # In clone3 while starting a thread: its callers follow, then the root.
    ([("schedule", "[kernel.kallsyms]"), ("clone3", "/lib/libc.so.6"),
      ("pthread_create", "/lib/libc.so.6"), ("f", "/x/python3"), ("_start", "/x/python3")], True),
    # ... and cut short before the root: clone3 is no root there.
    ([("clone3", "/lib/libc.so.6"), ("pthread_create", "/lib/libc.so.6"), ("f", "/x/python3")],
     False),
    # Past the root, frame pointers read garbage: nameless frames.
    ([("f", "/x/python3"), ("__libc_start_call_main", "/lib/libc.so.6"),
      ("[unknown]", "[stack]"), ("[unknown]", "[unknown]")], True),
    ([("f", "/x/python3"), ("[unknown]", "/x/python3"), ("[unknown]", "[unknown]")], False),
])
def test_whole_stack_knows_thread_roots(frames, whole):
    stack = list(range(len(frames)))
    kept, named, truncated = _perfscript.whole_stack(stack, frames)
    assert truncated == (not whole)
    if whole and frames[-1][0] == "[unknown]":
        assert named[-1] == frames[1] and kept == stack[:2]     # the garbage is dropped
    else:
        assert named == frames and kept == stack


# ---- kernel.perf_event_max_stack, raised and set back ----

@pytest.fixture
def sysctl(tmp_path, monkeypatch):
    """A stand-in for the sysctl file and the saved value's place."""
    if os.geteuid() != 0:
        pytest.skip("raising the limit is root's")
    knob = tmp_path / "perf_event_max_stack"
    knob.write_text("127\n")
    saved = tmp_path / "run" / "perf_event_max_stack"
    monkeypatch.setattr(_perf, "MAX_STACK_SYSCTL", str(knob))
    monkeypatch.setattr(_perf, "SAVED_MAX_STACK", str(saved))
    return knob


def test_max_stack_is_raised_for_frame_pointers_and_set_back(sysctl):
    said = []
    assert not _perf.raise_max_stack("dwarf", said.append)
    assert sysctl.read_text() == "127\n" and not said
    assert _perf.raise_max_stack("mixed", said.append)
    assert sysctl.read_text().strip() == str(_perf.FP_MAX_STACK)
    assert "from 127 to 1024" in said[0]
    _perf.restore_max_stack(said.append)
    assert sysctl.read_text().strip() == "127"


def test_max_stack_is_set_back_by_the_last_recording_side_by_side(sysctl, monkeypatch):
    said = []
    assert _perf.raise_max_stack("fp", said.append)        # first recording
    assert _perf.raise_max_stack("fp", said.append)        # second, while the first runs
    write = _perf._write_max_stack

    def busy(frames):
        raise OSError(errno.EBUSY, "Device or resource busy")
    monkeypatch.setattr(_perf, "_write_max_stack", busy)
    _perf.restore_max_stack(said.append)                    # first ends: the second records
    assert sysctl.read_text().strip() == "1024"
    assert "stays at 1024" in said[-1] and "was 127" in said[-1]
    monkeypatch.setattr(_perf, "_write_max_stack", write)
    _perf.restore_max_stack(said.append)                    # second ends
    assert sysctl.read_text().strip() == "127"


def test_max_stack_busy_is_said_and_left_alone(sysctl, monkeypatch):
    def busy(frames):
        raise OSError(errno.EBUSY, "Device or resource busy")
    monkeypatch.setattr(_perf, "_write_max_stack", busy)
    said = []
    assert not _perf.raise_max_stack("fp", said.append)
    assert "another profiler is recording call graphs" in said[0]
    assert "[truncated]" in said[0]
    assert sysctl.read_text() == "127\n"
    assert not os.path.exists(_perf.SAVED_MAX_STACK)
