"""Captures and sessions never fill the disk (etwtrace/trace/budget.py,
_native/recorder/budget.h): recording stops, out loud, when a capture reaches its
--max-size, or before its file system's free space falls to the reserve
(5% of it, at most 1 GiB), also when someone else fills the disk; the
program runs on to its end, and what it did not record is counted.

Every test that needs a disk to fill mounts a tmpfs of a few MiB (root; CI
is root), so no test can fill a real one."""

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

import etwtrace
from conftest import SCRIPTS, need_perf, run_etwtrace, scaled
from etwtrace.trace import budget as _budget
from etwtrace.trace.manifest import read_manifest

MiB = 1 << 20
PACKET = 64 * 1024
# What a capture holds beside its streams: each process's metadata (about
# 3 KiB), the manifest (8 KiB), README.txt; stated in the README as "a few
# KiB".
SMALL_FILES = 64 * 1024
CALLS = scaled(1_000_000, 100_000)      # per thread of busy_threads.py (3 threads)


@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` mounted at `path` for the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       stderr=subprocess.PIPE, encoding="utf-8")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class LeastFree(threading.Thread):
    """The least free space seen on a file system, looked at every
    millisecond while a capture records."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.least = free_bytes(path)
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.least = min(self.least, free_bytes(self.path))
            time.sleep(0.001)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()
        self.least = min(self.least, free_bytes(self.path))


def files_size(path, pattern="*"):
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def calls_of(out):
    return sum(int(line.split()[-1]) for line in out.splitlines() if "calls" in line)


def recorded_and_lost(cap):
    """(push and pop events recorded, events counted as lost) of a capture."""
    names = Counter(e.name for e in etwtrace.open_trace(cap))
    manifest = read_manifest(cap)
    lost = sum(manifest.get("events_lost", {}).values())
    lost += manifest.get("not_recorded", {}).get("events", 0)
    return names["PythonFunctionPush"] + names["PythonFunctionPop"], lost


def assert_every_call_recorded_or_counted(cap, calls):
    """Each call of the program is a push and a pop, recorded or counted as
    lost (beside them: the threads' own calls, as os.path.exists() once in
    1000 calls, their start and stop)."""
    recorded, lost = recorded_and_lost(cap)
    assert recorded > 0 and lost > 0
    assert 2 * calls <= recorded + lost <= 2 * calls + calls // 200 + 1000, \
        (recorded, lost, calls)


def assert_report_says(cap, *texts):
    report = run_etwtrace("report", cap)
    assert report.returncode == 0, report.stderr
    first = report.stdout.splitlines()[0]
    assert first.startswith("WARNING: recording stopped early"), first
    for text in texts:
        assert text in first, first


# ---- --max-size ----

def test_max_size_bounds_a_busy_capture_and_counts_what_it_lost(tmp_path):
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin",
                        "--max-size", "1M", "--", SCRIPTS / "busy_threads.py", CALLS)
    assert proc.returncode == 0, proc.stderr
    assert calls_of(proc.stdout) == 3 * CALLS             # it ran to its end
    said = [line for line in proc.stderr.splitlines() if "recording stopped" in line]
    assert said[0] == ("etwtrace: recording stopped: the capture reached its size limit "
                       "(--max-size 1 MiB); the program runs on, its later events are counted "
                       "as lost"), proc.stderr
    assert "events were lost" in said[-1] and len(said) == 2, proc.stderr
    # Every packet is claimed before it is written: the streams stay within.
    assert 0 < files_size(cap / "ctf", "stream-*") <= MiB
    assert files_size(cap) <= MiB + SMALL_FILES
    assert not list((cap / "ctf").glob(".budget*"))
    manifest = read_manifest(cap)
    assert manifest["max_size"] == MiB
    assert manifest["recording_stopped"]["reason"] == "max-size"
    assert_every_call_recorded_or_counted(cap, 3 * CALLS)
    assert_report_says(cap, "--max-size 1 MiB", "events were lost")


def test_processes_of_a_capture_share_its_max_size(tmp_path):
    cap = tmp_path / "cap"
    n = scaled(300_000, 50_000)
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin",
                        "--max-size", "1M", "--", SCRIPTS / "busy_processes.py", n)
    assert proc.returncode == 0, proc.stderr
    assert calls_of(proc.stdout) == 3 * 3 * n
    traces = [p for p in (cap / "ctf").iterdir() if p.name.startswith("pid-")]
    assert len(traces) == 3
    assert files_size(cap / "ctf", "stream-*") <= MiB      # all three together
    assert_every_call_recorded_or_counted(cap, 3 * 3 * n)


def test_a_thread_not_recorded_is_counted_when_its_process_ends_first(tmp_path):
    """A thread that began after the capture stopped has no ring to keep
    its count of lost events: the budget's shared page counts them as they
    go, so a process that ends before the thread's own end runs (os._exit
    here; an exit() racing the end of a thread it joined, as in
    busy_processes.py under load) loses none of the count."""
    cap = tmp_path / "cap"
    n = scaled(200_000, 100_000)
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin",
                        "--max-size", "512K", "--", SCRIPTS / "late_thread.py", n)
    assert proc.returncode == 0, proc.stderr
    assert calls_of(proc.stdout) == 2 * n
    missed = read_manifest(cap)["not_recorded"]
    assert missed.get("threads") == 1 and missed.get("events", 0) >= 2 * n, missed
    assert_every_call_recorded_or_counted(cap, 2 * n)


def test_a_thread_whose_files_cannot_be_made_is_said_and_its_events_counted(tmp_path):
    """No descriptor is left when a thread begins (RLIMIT_NOFILE), so its
    stream file cannot be made: the recorder says so, and every event the
    thread makes after is counted as lost, not dropped unseen."""
    cap = tmp_path / "cap"
    n = scaled(100_000, 20_000)
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin",
                        "--", SCRIPTS / "thread_without_files.py", n)
    assert proc.returncode == 0, proc.stderr
    assert calls_of(proc.stdout) == n
    assert "cannot create" in proc.stderr and "Too many open files" in proc.stderr, proc.stderr
    missed = read_manifest(cap)["not_recorded"]
    assert missed.get("threads_unwritable") == 1 and "threads" not in missed, missed
    assert 2 * n <= missed.get("events", 0) <= 2 * n + 1000, missed
    said = [line for line in proc.stderr.splitlines() if "events were lost" in line]
    assert said and "1 thread whose trace files could not be made was not recorded" in said[0]
    assert "--max-size" not in said[0], said
    report = run_etwtrace("report", cap)
    assert report.returncode == 0, report.stderr
    assert f"threads not recorded: {missed['events']:,}" in report.stdout.splitlines()[0]


def test_max_size_of_a_capture_recorded_without_the_launcher(tmp_path):
    """ETWTRACE_CAPTURE with ETWTRACE_MAX_SIZE: the first process makes the
    budget that the others share."""
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--", SCRIPTS / "busy_threads.py", CALLS,
                        env={"ETWTRACE_CAPTURE": str(cap), "ETWTRACE_MAX_SIZE": "512K"})
    assert proc.returncode == 0, proc.stderr
    assert calls_of(proc.stdout) == 3 * CALLS
    assert "size limit (--max-size 512 KiB)" in proc.stderr
    assert "events were lost" in proc.stderr            # no launcher: the process says it
    assert 0 < files_size(cap / "ctf", "stream-*") <= 512 * 1024


def test_max_size_counts_perf_data(tmp_path):
    need_perf()
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "perf",
                        "--max-size", "4M", "--", SCRIPTS / "busy_threads.py", CALLS)
    assert proc.returncode == 0, proc.stderr
    assert calls_of(proc.stdout) == 3 * CALLS
    perf_data = (cap / "perf.data").stat().st_size
    assert perf_data > 0
    # perf is told to stop when the capture stops; what it writes after
    # (its buffers) was left room for.
    assert perf_data + files_size(cap / "ctf", "stream-*") <= 4 * MiB
    assert read_manifest(cap)["recording_stopped"]["reason"] == "max-size"


@pytest.mark.unit
def test_perfs_rings_take_an_eighth_of_a_size_limit_at_most():
    """What perf's rings hold when it is told to stop lands in perf.data:
    with a size limit they are made small enough that it fits, and the
    guard counts what they hold (their size, not perf's default's)."""
    import types
    from etwtrace.capture import perf as _perf
    preset = types.SimpleNamespace(dwarf_stack_size=65528)
    cpus = os.cpu_count() or 1
    unlimited = _perf.ring_pages(preset, "dwarf")
    if os.geteuid() == 0:
        assert unlimited == 1024        # 64 stack copies of 64 KiB
    for limit in (4 * MiB, 64 * MiB, 1 << 30):
        pages = _perf.ring_pages(preset, "dwarf", limit)
        assert pages & (pages - 1) == 0, pages      # a power of two, as perf takes
        assert pages * 4096 >= 2 * preset.dwarf_stack_size
        assert _perf.ring_bytes(pages) == cpus * pages * 4096
        assert _perf.ring_bytes(pages) <= max(limit // 8, cpus * 32 * 4096)
        assert pages <= (unlimited or 128)
    assert _perf.ring_pages(preset, "fp") is None
    assert _perf.ring_bytes(None) == cpus * _perf.DEFAULT_RING
    assert _perf.ring_bytes(_perf.ring_pages(preset, "fp", 1 * MiB)) <= max(MiB // 8,
                                                                            cpus * 8 * 4096)


def test_sizes_are_read_alike_everywhere(tmp_path):
    from etwtrace.capture import session as _session
    from etwtrace import sizes as _sizes
    for text, size in (("64M", 64 * MiB), ("64MiB", 64 * MiB), ("64mb", 64 * MiB),
                       ("1g", 1 << 30), ("512K", 512 * 1024), ("131072", 131072)):
        assert _sizes.parse_size(text, "--max-size") == size
        assert _session.parse_size(text) == size
    for bad in ("lots", "", "1.5G", "-1M", "M", "1MM"):
        with pytest.raises(_sizes.SizeError):
            _sizes.parse_size(bad, "--max-size")


def test_bad_max_sizes_get_one_line_errors(tmp_path):
    cap = tmp_path / "cap"
    script = SCRIPTS / "busy_threads.py"
    for args, text in (
            (["--capture", cap, "--max-size", "lots", "--", script, 10], "size such as 64M"),
            (["--capture", cap, "--max-size", "0", "--", script, 10], "more than 0"),
            (["--max-size", "1M", "--", script, 10], "add --capture PATH"),
            (["--sampled", "--capture", cap, "--max-size", "1X", "--", script, 10],
             "size such as 64M"),
            (["record", "start", cap, "--max-size", "x"], "size such as 64M")):
        r = run_etwtrace(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and text in lines[0], r.stderr
        assert not cap.exists()
    r = run_etwtrace("--capture", cap, "--", script, 10, env={"ETWTRACE_MAX_SIZE": "big"})
    assert r.returncode == 2 and "ETWTRACE_MAX_SIZE='big' is not a size" in r.stderr, r.stderr


# ---- the reserve ----

def test_a_small_disk_keeps_its_reserve_free_and_the_program_runs_on(tmp_path):
    with small_disk(tmp_path / "disk", "8m") as disk:
        _free, reserve = _budget.room(disk)
        cap = disk / "cap"
        with LeastFree(disk) as watch:
            proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin",
                                "--", SCRIPTS / "busy_threads.py", CALLS)
        assert proc.returncode == 0, proc.stderr
        assert calls_of(proc.stdout) == 3 * CALLS
        assert watch.least >= reserve, (watch.least, reserve)
        assert "etwtrace leaves free (5% of its size, at most 1 GiB)" in proc.stderr
        manifest = read_manifest(cap)
        assert manifest["recording_stopped"]["reason"] == "reserve"
        assert manifest["recording_stopped"]["reserve"] == reserve
        assert_every_call_recorded_or_counted(cap, 3 * CALLS)
        assert_report_says(cap, "etwtrace leaves free")


def test_a_disk_filled_from_outside_while_recording_gets_nothing_more(tmp_path):
    with small_disk(tmp_path / "disk", "8m") as disk:
        _free, reserve = _budget.room(disk)
        cap, stop = disk / "cap", tmp_path / "stop"
        proc = subprocess.Popen(
            [sys.executable, "-m", "etwtrace", "--instrumented", "--capture", str(cap),
             "--recorder", "builtin", "--", str(SCRIPTS / "busy_threads.py"), "until",
             str(stop), "5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
        try:
            deadline = time.monotonic() + 60
            while not (cap / "ctf").is_dir() or files_size(cap / "ctf", "stream-*") < 4 * PACKET:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.01)
            assert free_bytes(disk) > reserve + MiB     # recording, with room to go on
            # Someone else leaves less free than the reserve.
            with open(disk / "filler", "wb") as f:
                chunk = bytes(PACKET)
                try:
                    while free_bytes(disk) > reserve // 2:
                        f.write(chunk)
                        f.flush()
                except OSError:
                    pass
            time.sleep(0.5)             # copies already under way land
            before = free_bytes(disk)
            time.sleep(1.0)             # the program goes on calling
            during = free_bytes(disk)
            assert proc.poll() is None
        finally:
            stop.touch()
            out, err = proc.communicate(timeout=120)
        after = free_bytes(disk)
        assert proc.returncode == 0, err
        assert calls_of(out) > 0
        assert during >= before, (before, during)
        # After the program: only the capture's small files (README.txt).
        assert after >= before - SMALL_FILES, (before, after)
        assert "etwtrace leaves free" in err
        assert read_manifest(cap)["recording_stopped"]["reason"] == "reserve"
        assert_every_call_recorded_or_counted(cap, calls_of(out))
        assert_report_says(cap, "etwtrace leaves free")


def test_perf_keeps_the_reserve_free(tmp_path):
    need_perf()
    with small_disk(tmp_path / "disk", "24m") as disk:
        _free, reserve = _budget.room(disk)
        cap = disk / "cap"
        with LeastFree(disk) as watch:
            # DWARF call graphs (16 KiB of stack a sample) fill it fast.
            proc = run_etwtrace("--capture", cap, "--recorder", "perf", "--",
                                SCRIPTS / "hot.py", "4", env={"ETWTRACE_CALLGRAPH": "dwarf"})
        assert proc.returncode == 0, proc.stderr
        assert watch.least >= reserve, (watch.least, reserve)
        assert (cap / "perf.data").stat().st_size > MiB
        assert read_manifest(cap)["recording_stopped"]["reason"] == "reserve"
        report = run_etwtrace("report", cap)
        assert report.returncode == 0 and "CPU samples" in report.stdout, report.stderr


# ---- sessions ----

def _run_traced(box, *args):
    """A program traced with no capture of its own: it joins the session."""
    return subprocess.run([sys.executable, "-m", "etwtrace", *map(str, args)], env=box.env,
                          cwd=box.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          encoding="utf-8", timeout=300)


def test_a_session_stops_at_its_max_size_and_status_shows_its_size(box):
    capture = box.path("capture")
    box.start(capture, "--recorder", "builtin", "--max-size", "1M")
    status = box.record("status")
    assert status.returncode == 0 and "at most 1 MiB" in status.stderr, status.stderr
    assert "the capture holds 0 bytes so far of its 1 MiB limit (--max-size)" in status.stderr
    proc = _run_traced(box, "--instrumented", "--", SCRIPTS / "busy_threads.py", CALLS)
    assert proc.returncode == 0 and calls_of(proc.stdout) == 3 * CALLS, proc.stderr
    assert "recording stopped" not in proc.stderr        # a session's processes are quiet
    status = box.record("status")
    assert ("the capture holds 1 MiB so far of its 1 MiB limit (--max-size); recording "
            "stopped early: the capture reached its size limit") in status.stderr, status.stderr
    r = box.stop()
    assert "recording stopped early: the capture reached its size limit (--max-size 1 MiB)" \
        in r.stderr and "events were lost" in r.stderr, r.stderr
    from pathlib import Path
    cap = Path(capture)
    assert 0 < files_size(cap / "ctf", "stream-*") <= MiB
    assert read_manifest(cap)["recording_stopped"]["reason"] == "max-size"
    assert_every_call_recorded_or_counted(cap, 3 * CALLS)
    assert_report_says(cap, "--max-size 1 MiB")


def test_memory_mode_keeps_the_newest_within_max_size(box):
    from pathlib import Path
    capture = box.path("capture")
    box.start(capture, "--ring", "128K", "--max-size", "1M")
    proc = _run_traced(box, "--instrumented", "--", SCRIPTS / "busy_threads.py", CALLS)
    assert proc.returncode == 0 and calls_of(proc.stdout) == 3 * CALLS, proc.stderr
    box.stop()
    cap = Path(capture)
    assert files_size(cap / "ctf") <= MiB
    events = list(etwtrace.open_trace(cap))
    names = {(e.pid, e.fields["FunctionID"]): e.fields["Name"] for e in events
             if e.name == "PythonFunction"}
    by_thread = {}
    for e in events:
        if e.name in ("PythonFunctionPush", "PythonFunctionPop"):
            by_thread.setdefault(e.tid, []).append((e.name, names.get((e.pid, e.fields["FunctionID"]))))
    spinners = [calls for calls in by_thread.values() if ("PythonFunctionPush", "work") in calls]
    assert spinners
    for calls in spinners:
        # The oldest calls are gone, the newest kept: the thread's last
        # return, from spin(), is there.
        assert len(calls) < CALLS
        assert ("PythonFunctionPop", "spin") in calls[-3:], calls[-3:]


def test_other_users_processes_keep_the_max_size_of_roots_session(box):
    """A process of another user may read root's budget, not write it: it
    counts its own claims, and the session counts its trace."""
    import shutil
    from pathlib import Path
    from sessions import NOBODY, as_user, need_nobody
    need_nobody()
    script = os.path.join(box.root, "busy_threads.py")
    shutil.copy(SCRIPTS / "busy_threads.py", script)
    os.chmod(script, 0o644)
    capture = box.path("capture")
    box.start(capture, "--recorder", "builtin", "--max-size", "1M")
    proc = subprocess.run([sys.executable, "-m", "etwtrace", "--instrumented", "--", script,
                           str(CALLS)], env=box.env, cwd=box.root, **as_user(NOBODY),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          timeout=300)
    assert proc.returncode == 0 and calls_of(proc.stdout) == 3 * CALLS, proc.stderr
    status = box.record("status")
    assert "recording stopped early: the capture reached its size limit" in status.stderr
    box.stop()
    cap = Path(capture)
    traces = [p for p in (cap / "ctf").iterdir() if p.name.startswith("pid-")]
    assert len(traces) == 1
    assert 0 < files_size(cap / "ctf", "stream-*") <= MiB
    recorded, lost = recorded_and_lost(cap)
    assert recorded > 0 and lost > 0


def test_a_snapshot_that_would_pass_the_reserve_is_refused(box, tmp_path):
    from pathlib import Path
    from sessions import one_line_error
    capture = box.path("capture")
    box.start(capture, "--ring", "1M")
    proc = _run_traced(box, "--instrumented", "--", SCRIPTS / "busy_threads.py", CALLS)
    assert proc.returncode == 0, proc.stderr
    with small_disk(tmp_path / "disk", "1m") as disk:
        # The rings hold more than a 1 MiB disk can take above its reserve.
        one_line_error(box.record("snapshot", disk / "snap"), "less free space than the reserve")
        assert not (disk / "snap").exists()
    box.stop()
    assert files_size(Path(capture) / "ctf", "stream-*") > 0


# ---- --sampled ----

def _need_sampled_here():
    from test_sampled import SAMPLED_HERE, need_sampler
    need_sampler()
    if not SAMPLED_HERE:
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")


def _sampled_run(cap, rate, *options, seconds=3):
    """--sampled of sampled_target.py for `seconds` into `cap`: (the
    finished launcher, the manifest, the target's CPU time sampled)."""
    from test_sampled import _launch_sampled
    proc, pid, watch = _launch_sampled("--rate", rate, *options, "--capture", cap, "--",
                                       SCRIPTS / "sampled_target.py", seconds)
    assert proc.returncode == 0 and proc.stdout.split() == ["ready", "done"], proc.stderr
    return proc, read_manifest(cap), watch.cpu(pid, 0, 1 << 63)


def assert_samples_kept_or_counted(cap, manifest, rate, cpu):
    """The samples written are those the manifest says it kept, and those
    kept, counted as not kept or lost together are what the target's CPU
    time was due (none missed, none counted twice)."""
    kept, not_kept = manifest["samples"], manifest["not_recorded"]["samples"]
    written = Counter(e.name for e in etwtrace.open_trace(cap))["SampledProfile"]
    assert written == kept > 0 and not_kept > 0, (written, kept, not_kept)
    taken = kept + not_kept + manifest.get("samples_lost", 0)
    assert 0.8 * rate * cpu <= taken <= 1.5 * rate * cpu + 200, (kept, not_kept, cpu)
    return not_kept


def _chunks_into(ctf, budget, chunks, pid=4242, tid=4243):
    """Writes `chunks` chunks of 16 samples (4000 bytes) as the sampler's
    writer does; (samples given, the stream file's size)."""
    from etwtrace.trace import ctfwrite as _ctfwrite
    trace = _ctfwrite.TraceWriter(str(ctf), pid, budget)
    for i in range(chunks):
        if trace.recording:
            trace.stream(tid).extend(b"x" * 4000, i, i, 16)
    trace.close()
    stream = ctf / f"pid-{pid}" / f"stream-0-tid-{tid}"
    return 16 * chunks, stream.stat().st_size if stream.exists() else 0


def test_the_sampler_writer_claims_each_packet_within_max_size(tmp_path):
    """(No BPF needed: the writer alone.)"""
    ctf = tmp_path / "cap" / "ctf"
    file = _budget.create(str(ctf), 300 * 1024)
    said = []
    budget = _budget.WriterBudget(str(tmp_path / "cap"), file, said.append)
    given, size = _chunks_into(ctf, budget, 200)
    # Four packets and the metadata fit in 300 KiB; the fifth is not claimed.
    assert 3 * PACKET < size <= 4 * PACKET
    assert size + (ctf / "pid-4242" / "metadata").stat().st_size <= 300 * 1024
    assert budget.kept + budget.samples_not_kept == given and budget.samples_not_kept > 0
    assert file.used == budget.written == files_size(ctf, "[ms]*")     # what status shows
    assert said == ["etwtrace: recording stopped early: the capture reached its size limit "
                    "(--max-size 300 KiB); the program runs on, its later samples are "
                    "counted, not kept"]
    # A process found after the stop gets no trace, and is counted.
    assert _chunks_into(ctf, budget, 10, pid=4244) == (160, 0)
    assert not (ctf / "pid-4244").exists()
    info = budget.info()
    assert info["recording_stopped"]["reason"] == "max-size"
    assert info["not_recorded"] == {"processes": 1, "samples": budget.samples_not_kept}
    assert _budget.loss_text({}, info) == (
        "recording stopped early: the capture reached its size limit (--max-size 300 KiB); "
        "1 process that began after it was not recorded; "
        f"{budget.samples_not_kept:,} samples were taken but not kept")


def test_the_sampler_writer_drops_a_packet_the_reserve_no_longer_has_room_for(
        tmp_path, monkeypatch):
    """Another program takes the free space between a packet's claim and
    its write: the packet is not written, its samples are counted."""
    ctf = tmp_path / "ctf"
    budget = _budget.WriterBudget(str(tmp_path))
    room = {"left": True}
    monkeypatch.setattr(_budget, "fits", lambda path, size: room["left"])
    from etwtrace.trace import ctfwrite as _ctfwrite
    ctf.mkdir()
    trace = _ctfwrite.TraceWriter(str(ctf), 4242, budget)
    stream = trace.stream(4243)
    for i in range(20):                     # a packet written, a second begun
        stream.extend(b"x" * 4000, i, i, 16)
    room["left"] = False
    trace.close()
    assert budget.kept == 16 * 16 and budget.samples_not_kept == 4 * 16
    assert 0 < (ctf / "pid-4242" / "stream-0-tid-4243").stat().st_size <= PACKET
    assert budget.info()["recording_stopped"]["reason"] == "reserve"


def test_sampled_max_size_bounds_the_capture_and_counts_the_samples_not_kept(tmp_path):
    _need_sampled_here()
    cap = tmp_path / "cap"
    proc, manifest, cpu = _sampled_run(cap, 2000, "--max-size", "256K")
    said = [line for line in proc.stderr.splitlines() if "recording stopped" in line]
    assert said[0] == ("etwtrace: recording stopped early: the capture reached its size limit "
                       "(--max-size 256 KiB); the program runs on, its later samples are "
                       "counted, not kept"), proc.stderr
    assert len(said) == 2 and "samples were taken but not kept" in said[1], proc.stderr
    # Each packet (and the metadata) is claimed before it is written.
    assert 0 < files_size(cap / "ctf") <= 256 * 1024
    assert not list((cap / "ctf").glob(".budget*"))
    assert manifest["max_size"] == 256 * 1024
    assert manifest["recording_stopped"]["reason"] == "max-size"
    not_kept = assert_samples_kept_or_counted(cap, manifest, 2000, cpu)
    assert f"{not_kept:,} samples were taken but not kept" in said[1]
    assert_report_says(cap, "--max-size 256 KiB", f"{not_kept:,} samples were taken but not kept")


def test_sampled_keeps_the_reserve_of_a_small_disk(tmp_path):
    _need_sampled_here()
    with small_disk(tmp_path / "disk", "2m") as disk:
        _free, reserve = _budget.room(disk)
        cap = disk / "cap"
        with LeastFree(disk) as watch:
            # Whole stacks of about 250 bytes, 5000 a second: past 2 MiB in 2 s.
            proc, manifest, cpu = _sampled_run(cap, 5000, seconds=4)
        assert watch.least >= reserve, (watch.least, reserve)
        assert "etwtrace leaves free (5% of its size, at most 1 GiB)" in proc.stderr
        assert manifest["recording_stopped"]["reason"] == "reserve"
        assert manifest["recording_stopped"]["reserve"] == reserve
        assert_samples_kept_or_counted(cap, manifest, 5000, cpu)
        assert_report_says(cap, "etwtrace leaves free", "samples were taken but not kept")


def test_a_sampled_session_stops_at_its_max_size(box):
    """record start --sampled --max-size: status shows the size of the
    limit, stop and report say the stop and the samples not kept (the
    session samples every Python of the machine: the target, and whatever
    else runs)."""
    _need_sampled_here()
    from pathlib import Path
    from test_sampled import Running
    capture = box.path("capture")
    box.start(capture, "--sampled", "--rate", "2000", "--max-size", "256K")
    status = box.record("status")
    assert "at most 256 KiB" in status.stderr and "of its 256 KiB limit" in status.stderr, \
        status.stderr
    target = Running("sampled_target.py", 3)
    assert target.finish() == (0, "done\n")
    time.sleep(1.5)             # the daemon's next read of the samples
    status = box.record("status")
    assert "recording stopped early: the capture reached its size limit" in status.stderr, \
        status.stderr
    # A process that starts after the stop is sampled (counted), not recorded.
    late = Running("sampled_target.py", 2)
    assert late.finish() == (0, "done\n")
    r = box.stop()
    said = [line for line in r.stderr.splitlines() if "recording stopped early" in line]
    assert len(said) == 1 and "(--max-size 256 KiB)" in said[0], r.stderr
    assert "samples were taken but not kept" in said[0] and "that began after it" in said[0]
    cap = Path(capture)
    assert 0 < files_size(cap / "ctf") <= 256 * 1024
    assert not (cap / "ctf" / f"pid-{late.proc.pid}").exists()
    manifest = read_manifest(cap)
    assert manifest["recording_stopped"]["reason"] == "max-size"
    assert manifest["not_recorded"]["samples"] > 0
    assert manifest["not_recorded"]["processes"] >= 1
    written = Counter(e.name for e in etwtrace.open_trace(cap))["SampledProfile"]
    assert written == manifest["samples"] > 0
    assert_report_says(cap, "--max-size 256 KiB", "samples were taken but not kept")


def test_a_sampled_session_writes_nothing_once_others_fill_its_disk(box, tmp_path):
    _need_sampled_here()
    from test_sampled import Running
    with small_disk(tmp_path / "disk", "8m") as disk:
        _free, reserve = _budget.room(disk)
        cap = disk / "capture"
        box.start(cap, "--sampled", "--rate", "2000")
        target = Running("sampled_target.py", 6)
        try:
            deadline = time.monotonic() + 30
            while files_size(cap / ".session" / "ctf", "stream-*") < PACKET:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with open(disk / "filler", "wb") as f:
                chunk = bytes(PACKET)
                try:
                    while free_bytes(disk) > reserve // 2:
                        f.write(chunk)
                        f.flush()
                except OSError:
                    pass
            time.sleep(1.5)             # the daemon's next writes, refused
            before = free_bytes(disk)
            time.sleep(1.5)             # the target goes on, sampled
            during = free_bytes(disk)
        finally:
            assert target.finish() == (0, "done\n")
        assert during >= before, (before, during)
        r = box.stop()
        assert "etwtrace leaves free" in r.stderr and "samples were taken but not kept" in r.stderr, \
            r.stderr
        manifest = read_manifest(cap)
        assert manifest["recording_stopped"]["reason"] == "reserve"
        assert manifest["not_recorded"]["samples"] > 0
        assert_report_says(cap, "etwtrace leaves free")
