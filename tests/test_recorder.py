"""The built-in recorder keeps every event a program emitted, however it
ends (SIGKILL, SIGTERM, os._exit, exec, a C stack overflow, a Pool's
terminate), and never writes where it does not belong.

Each program counts its own calls in a shared counter file (an mmap'd
page survives any death), and the test counts the calls the trace holds."""
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from etwtrace.trace import ctf as _ctf
from conftest import SCALE, SCRIPTS, need_tool, run_etwtrace, scaled

pytestmark = pytest.mark.versioned

# Calls `leaf` in a loop, counting each in COUNTER (an 8-byte file) after the
# call returns; `fast` calls as fast as it can, else about 5,000 calls/s.
COUNTING = """
import mmap, os, sys, time
_fd = os.open(os.environ["COUNTER"], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(_fd, 8)
_counter = mmap.mmap(_fd, 8)
def leaf():
    pass
def count(n):
    _counter[0:8] = n.to_bytes(8, "little")
def work(calls=None, fast=True, mark=False):
    n = 0
    while calls is None or n < calls:
        if mark:
            etwtrace.mark(str(n))
        else:
            leaf()
        n += 1
        count(n)
        if not fast:
            time.sleep(0.0002)
"""


def _program(tmp_path, body, name="prog.py"):
    path = tmp_path / name
    path.write_text(COUNTING + textwrap.dedent(body))
    return path


def _counted(tmp_path):
    return int.from_bytes((tmp_path / "counter").read_bytes()[:8], "little")


def _env(tmp_path, **extra):
    return dict(os.environ, COUNTER=str(tmp_path / "counter"),
                ETWTRACE_CAPTURE=str(tmp_path / "cap"), **extra)


def _leaf_calls(path):
    """({pid: calls of functions named leaf}, {pid: plain marks}) of a
    capture, counted by the C decoder (a fast program makes millions)."""
    calls, marks = {}, {}
    from etwtrace.trace.reader import Event
    for pid, trace_dir in _ctf.trace_dirs(str(path / "ctf")):
        version = _ctf.trace_version(trace_dir)
        folds = [_ctf.fold_stream(s, pid, Event, version) for s in _ctf.stream_files(trace_dir)]
        leaf = {e.fields["FunctionID"] for _, events in folds for e in events
                if e.name == "PythonFunction" and e.fields["Name"] == "leaf"}
        for folded, events in folds:
            n = sum(node[2] for node in folded["nodes"] if node[1] in leaf)
            if n:
                calls[pid] = calls.get(pid, 0) + n
            m = sum(1 for e in events if e.name == "PythonMark" and e.opcode is None)
            if m:
                marks[pid] = marks.get(pid, 0) + m
    return calls, marks


def _wait_for_count(tmp_path, at_least, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (tmp_path / "counter").exists() and _counted(tmp_path) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the program ended early: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("the program did not get going")


def _babeltrace_count(path, what):
    need_tool("babeltrace2")
    proc = subprocess.run(["babeltrace2", str(path / "ctf")], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.count(what)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("speed", ["fast", "slow"])
@pytest.mark.parametrize("mode", ["instrumented", "stack"])
def test_a_killed_program_keeps_every_event(tmp_path, sig, speed, mode):
    mark = mode == "stack"   # stack mode emits marks; instrumented, pushes
    prog = _program(tmp_path, f"""
        import etwtrace
        tracer = (etwtrace.StackSamplingTracer() if {mark} else etwtrace.InstrumentedTracer())
        tracer.enable()
        work(fast={speed == "fast"}, mark={mark})
    """)
    proc = subprocess.Popen([sys.executable, str(prog)], env=_env(tmp_path),
                            stderr=subprocess.PIPE, encoding="utf-8")
    _wait_for_count(tmp_path, 20_000 if speed == "fast" else 2_000, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)      # closes the stderr pipe too
    assert proc.returncode == -sig
    emitted = _counted(tmp_path)
    calls, marks = _leaf_calls(tmp_path / "cap")
    found = (marks if mark else calls).get(proc.pid, 0)
    # The last call may be recorded and not yet counted.
    assert found in (emitted, emitted + 1), (found, emitted)
    # Once finalized, another CTF reader sees them all too.
    _ctf.finalize(str(tmp_path / "cap" / "ctf"))
    assert not glob.glob(str(tmp_path / "cap" / "ctf" / "*" / ".ring-*"))
    assert _babeltrace_count(tmp_path / "cap", "PythonMark:" if mark else "PythonFunctionPush") >= found


def test_os_exit_without_disable_keeps_every_event(tmp_path):
    prog = _program(tmp_path, """
        import etwtrace
        etwtrace.InstrumentedTracer().enable()
        work(1000)
        os._exit(0)
    """)
    proc = subprocess.run([sys.executable, str(prog)], env=_env(tmp_path), timeout=120)
    assert proc.returncode == 0
    assert _leaf_calls(tmp_path / "cap")[0] == {_pid_of(tmp_path): 1000}


def _pid_of(tmp_path):
    (pid, _), = _ctf.trace_dirs(str(tmp_path / "cap" / "ctf"))
    return pid


def test_forked_children_ending_in_os_exit_keep_every_event(tmp_path):
    prog = _program(tmp_path, """
        import etwtrace
        etwtrace.InstrumentedTracer().enable()
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                for _ in range(1000):
                    leaf()
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print(" ".join(map(str, children)))
    """)
    proc = subprocess.run([sys.executable, str(prog)], env=_env(tmp_path), timeout=120,
                          stdout=subprocess.PIPE, encoding="utf-8")
    assert proc.returncode == 0
    children = list(map(int, proc.stdout.split()))
    calls, _ = _leaf_calls(tmp_path / "cap")
    assert {pid: calls.get(pid) for pid in children} == {pid: 1000 for pid in children}


def test_exec_keeps_the_events_before_it_and_traces_the_new_image_apart(tmp_path):
    second = tmp_path / "second.py"
    second.write_text("def leaf():\n    pass\nfor _ in range(7):\n    leaf()\n")
    prog = _program(tmp_path, f"""
        import etwtrace
        etwtrace.InstrumentedTracer().enable()
        work(100_000)
        os.execv(sys.executable, [sys.executable, "-m", "etwtrace", "--instrumented", "--",
                                  {str(second)!r}])
    """)
    proc = subprocess.run([sys.executable, str(prog)], env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0
    dirs = sorted(os.path.basename(d) for _, d in _ctf.trace_dirs(str(tmp_path / "cap" / "ctf")))
    pid = int(dirs[0][4:])
    assert dirs == [f"pid-{pid}", f"pid-{pid}.2"]
    # Both images are the same pid: 100,000 calls before the exec, 7 after.
    assert _leaf_calls(tmp_path / "cap")[0] == {pid: 100_007}


def test_c_stack_overflow_keeps_every_event(tmp_path):
    # The hooks' larger C stack (cstack.c) holds about 1.9 million traced
    # calls: more than five minutes under ThreadSanitizer, where (SCALE)
    # the recursion is stopped by CPython's limit instead.
    limit = 10 ** 7 if SCALE == 1 else 20_000
    prog = _program(tmp_path, f"""
        import etwtrace
        sys.setrecursionlimit({limit})
        etwtrace.InstrumentedTracer().enable()
        n = 0
        def deeper():
            global n
            leaf()
            n += 1
            count(n)
            deeper()
        try:
            deeper()
        except RecursionError:
            # Said here: 3.13+ print a traceback in Python, and tracing
            # that walk of 1.5 million frames took most of this test.
            sys.stderr.write("RecursionError\\n")
    """)
    proc = subprocess.run([sys.executable, str(prog)], env=_env(tmp_path), timeout=300,
                          stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    # The C stack runs out (a crash), or CPython stops the recursion first
    # (3.13's C recursion limit, 3.14+'s stack protection).
    crashed = proc.returncode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT)
    assert crashed or "RecursionError" in proc.stderr, (proc.returncode, proc.stderr[-500:])
    emitted = _counted(tmp_path)
    found = _leaf_calls(tmp_path / "cap")[0].get(_pid_of(tmp_path), 0)
    assert emitted > 1000 and found in (emitted, emitted + 1), (found, emitted)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("pool", [True, False])
def test_multiprocessing_children_keep_every_event(tmp_path, method, pool):
    prog = tmp_path / "mp.py"
    prog.write_text(textwrap.dedent(f"""
        import multiprocessing
        def leaf():
            pass
        def work(_):
            for _ in range(1000):
                leaf()
            return multiprocessing.current_process().pid
        if __name__ == "__main__":
            multiprocessing.set_start_method({method!r})
            if {pool}:
                with multiprocessing.Pool(4) as p:     # its exit terminates the workers
                    pids = p.map(work, range(4), chunksize=1)
            else:
                procs = [multiprocessing.Process(target=work, args=(i,)) for i in range(4)]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                pids = [p.pid for p in procs]
            print(" ".join(map(str, pids)))
    """))
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--", prog)
    assert proc.returncode == 0, proc.stderr
    calls, _ = _leaf_calls(cap)
    pids = list(map(int, proc.stdout.split()))
    assert sum(calls.get(pid, 0) for pid in set(pids)) == 4000, (calls, pids)


def test_a_process_killed_before_its_trace_began_is_no_trace(tmp_path):
    """A pool's worker terminated as it starts can leave its trace directory
    with no metadata or (before metadata was written whole) an empty one,
    and no stream: it recorded nothing, and the capture reads as if it
    never started, in report and open_trace alike."""
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--",
                        SCRIPTS / "hot.py")
    assert proc.returncode == 0, proc.stderr
    ctf = cap / "ctf"
    real = sorted(p.name for p in ctf.iterdir())
    assert len(real) == 1 and not (ctf / real[0] / "metadata.new").exists()
    (ctf / "pid-4194001").mkdir()                                   # killed after mkdir
    (ctf / "pid-4194002").mkdir()
    (ctf / "pid-4194002" / "metadata").write_text("")               # an older writer's
    (ctf / "pid-4194003").mkdir()
    (ctf / "pid-4194003" / "metadata.new").write_text("/* CTF")     # killed mid-write
    assert [os.path.basename(d) for _, d in _ctf.trace_dirs(str(ctf))] == real
    report = run_etwtrace("report", cap)
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    assert "inner" in report.stdout
    import etwtrace
    with etwtrace.open_trace(cap) as trace:
        pids = {e.pid for e in trace}
    assert pids == {int(real[0].split("-")[1])}
    # A trace that began and lost its metadata is not skipped quietly: it is
    # left out with a warning naming it, and the rest is reported (#22).
    (ctf / "pid-4194004").mkdir()
    (ctf / "pid-4194004" / "stream-1").write_bytes(b"\0" * 64)
    broken = run_etwtrace("report", cap)
    assert broken.returncode == 0 and "Traceback" not in broken.stderr
    (warning,) = broken.stderr.strip().splitlines()
    assert warning.startswith("etwtrace: warning: ") and "pid-4194004" in warning
    assert "inner" in broken.stdout


def test_sixteen_threads_keep_exact_counts(tmp_path):
    calls = scaled(1_000_000)
    prog = tmp_path / "threads.py"
    prog.write_text(textwrap.dedent(f"""
        import threading, etwtrace
        def leaf():
            pass
        def work():
            for _ in range({calls}):
                leaf()
        with etwtrace.InstrumentedTracer(call_times=False):
            threads = [threading.Thread(target=work) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    """))
    cap = tmp_path / "cap"
    proc = subprocess.run([sys.executable, str(prog)], env=dict(os.environ, ETWTRACE_CAPTURE=str(cap)),
                          timeout=600)
    assert proc.returncode == 0
    from etwtrace.trace.reader import Event
    trace_dir = _ctf.trace_dirs(str(cap / "ctf"))[0][1]
    folds = [_ctf.fold_stream(s, 0, Event) for s in _ctf.stream_files(trace_dir)]
    leaf = {e.fields["FunctionID"] for _, events in folds for e in events
            if e.name == "PythonFunction" and e.fields["Name"] == "leaf"}
    per_thread = []
    for folded, _ in folds:
        assert folded["unmatched_pops"] == folded["mismatched_pops"] == 0
        assert not folded["truncated"]
        per_thread.append(sum(n[2] for n in folded["nodes"] if n[1] in leaf))
    # The main thread called nothing; each of the 16 called leaf `calls` times.
    assert sorted(per_thread) == [0] * (len(folds) - 16) + [calls] * 16


def test_enable_disable_cycles_reuse_one_stream_per_thread(tmp_path):
    cycles = scaled(10_000)
    prog = tmp_path / "cycles.py"
    prog.write_text(f"CYCLES = {cycles}\n" + textwrap.dedent("""
        import etwtrace
        def leaf():
            pass
        tracer = etwtrace.InstrumentedTracer()
        for _ in range(CYCLES):
            tracer.enable()
            leaf()
            tracer.disable()
    """))
    cap = tmp_path / "cap"
    proc = subprocess.run([sys.executable, str(prog)], env=dict(os.environ, ETWTRACE_CAPTURE=str(cap)),
                          timeout=600)
    assert proc.returncode == 0
    files = sorted(os.listdir(_ctf.trace_dirs(str(cap / "ctf"))[0][1]))
    assert len(files) == 2 and files[0] == "metadata" and files[1].startswith("stream-"), files
    calls, _ = _leaf_calls(cap)
    assert sum(calls.values()) == cycles


def test_a_program_that_closes_every_descriptor_gets_nothing_in_its_files(tmp_path):
    # A daemon closes every fd, then opens its own files: the recorder, the
    # perf map and the jitdump must not write into them.
    prog = _program(tmp_path, f"""
        import etwtrace
        etwtrace.StackSamplingTracer().enable()   # trampolines: perf map, jitdump
        os.closerange(3, 1024)
        logs = [open({str(tmp_path)!r} + f"/user-{{i}}.log", "w") for i in range(8)]
        for log in logs:
            log.write("hello, user\\n")
            log.flush()
        # New functions (perf map and jitdump lines) and many marks (packets).
        for i in range(200):
            exec(f"def f{{i}}():\\n    pass\\nf{{i}}()")
        work(50_000, mark=True)
    """)
    proc = subprocess.run([sys.executable, str(prog)], env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0
    for i in range(8):
        assert (tmp_path / f"user-{i}.log").read_text() == "hello, user\n"
    _, marks = _leaf_calls(tmp_path / "cap")
    assert sum(marks.values()) == 50_000


def test_perf_files_are_never_written_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    go = tmp_path / "go"
    prog = tmp_path / "planted.py"
    prog.write_text(textwrap.dedent(f"""
        import os, time, etwtrace
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        with etwtrace.StackSamplingTracer():
            def f():
                pass
            f()
    """))
    proc = subprocess.Popen([sys.executable, str(prog)], stderr=subprocess.PIPE, encoding="utf-8")
    planted = [f"/tmp/perf-{proc.pid}.map", f"/tmp/jit-{proc.pid}.dump"]
    try:
        for path in planted:
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(victim, path)
        go.write_text("")
        _, err = proc.communicate(timeout=120)
    finally:
        for path in planted:
            if os.path.islink(path):
                os.unlink(path)
    assert proc.returncode == 0
    assert victim.read_text() == "precious\n"
    assert "is not this user's file" in err


def test_capture_files_are_private(tmp_path):
    cap = tmp_path / "cap"
    proc = run_etwtrace("--capture", cap, "--recorder", "builtin", "--", SCRIPTS / "basic.py")
    assert proc.returncode == 0, proc.stderr
    assert os.stat(cap).st_mode & 0o777 == 0o700
    for root, dirs, files in os.walk(cap):
        for d in dirs:
            assert os.stat(os.path.join(root, d)).st_mode & 0o777 == 0o700, d
        for f in files:
            assert os.stat(os.path.join(root, f)).st_mode & 0o777 == 0o600, f


def test_pth_started_processes_remove_their_perf_files(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text(textwrap.dedent("""
        import os, etwtrace
        etwtrace.enable_if("", "")
        def f():
            pass
        f()
        print(os.getpid())
    """))
    keep = subprocess.run([sys.executable, str(prog)], stdout=subprocess.PIPE, encoding="utf-8",
                          env=dict(os.environ, ETWTRACE_PERF_FILES="keep"))
    gone = subprocess.run([sys.executable, str(prog)], stdout=subprocess.PIPE, encoding="utf-8",
                          env={k: v for k, v in os.environ.items() if k != "ETWTRACE_PERF_FILES"})
    kept_pid, gone_pid = int(keep.stdout), int(gone.stdout)
    try:
        assert os.path.isfile(f"/tmp/perf-{kept_pid}.map")
        assert os.path.isfile(f"/tmp/jit-{kept_pid}.dump")
        assert not os.path.exists(f"/tmp/perf-{gone_pid}.map")
        assert not os.path.exists(f"/tmp/jit-{gone_pid}.dump")
    finally:
        for path in (f"/tmp/perf-{kept_pid}.map", f"/tmp/jit-{kept_pid}.dump"):
            if os.path.exists(path):
                os.unlink(path)


def _mount_small_tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       stderr=subprocess.PIPE, encoding="utf-8")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_a_full_disk_stops_recording_out_loud_and_keeps_what_fit(tmp_path):
    disk = tmp_path / "disk"
    _mount_small_tmpfs(disk, "2m")
    try:
        cap = disk / "cap"
        prog = tmp_path / "many.py"
        prog.write_text(textwrap.dedent("""
            import sys
            def leaf():
                pass
            for _ in range(1_000_000):
                leaf()
            sys.exit(3)
        """))
        proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--", prog)
        assert proc.returncode == 3, proc.stderr              # the program's own status
        assert "Traceback" not in proc.stderr
        # The disk is never filled: recording stops at the reserve
        # (test_disk.py tests that in detail).
        assert "etwtrace leaves free" in proc.stderr
        lost_lines = [l for l in proc.stderr.splitlines() if "events were lost" in l]
        assert lost_lines, proc.stderr
        from etwtrace.trace.manifest import read_manifest
        manifest = read_manifest(cap)
        assert sum(manifest["events_lost"].values()) > 0
        assert not list(cap.glob("*.tmp"))
        calls, _ = _leaf_calls(cap)
        assert 0 < sum(calls.values()) < 1_000_000
        report = run_etwtrace("report", cap)
        assert report.returncode == 0, report.stderr
        assert "events were lost" in report.stdout.splitlines()[0] + report.stderr
    finally:
        subprocess.run(["umount", str(disk)])
