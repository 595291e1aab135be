"""python -m etwtrace as a launcher: it passes on how the program ended,
does not orphan it, refuses what is not its to replace, says what is wrong
in one line, and leaves other tools' hooks alone."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import etwtrace
from conftest import SCRIPTS, need_perf, run_etwtrace


def _script(tmp_path, body, name="prog.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _launch(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "etwtrace", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                            errors="replace", **kw)


def _one_error_line(proc, message, status=2):
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL, signal.SIGTERM, signal.SIGABRT])
@pytest.mark.parametrize("capture", [False, True])
def test_a_signal_death_is_passed_on(tmp_path, sig, capture):
    prog = _script(tmp_path, f"""
        import os, signal
        os.kill(os.getpid(), {int(sig)})
    """)
    options = ["--capture", tmp_path / "cap", "--recorder", "builtin"] if capture else []
    proc = run_etwtrace(*options, "--", prog)
    # A shell sees 128 + N: the launcher dies by the same signal.
    assert proc.returncode == -sig, proc.stderr


def test_an_exit_code_is_passed_on(tmp_path):
    prog = _script(tmp_path, "import sys\nsys.exit(7)\n")
    assert run_etwtrace("--capture", tmp_path / "cap", "--recorder", "builtin", "--",
                        prog).returncode == 7


def test_an_option_where_the_capture_path_should_be_is_an_error(tmp_path):
    proc = run_etwtrace("--capture", "--instrumented", "--", SCRIPTS / "basic.py", cwd=tmp_path)
    _one_error_line(proc, "--capture needs a value")
    assert not (tmp_path / "--instrumented").exists()


def test_a_missing_script_records_nothing(tmp_path):
    proc = run_etwtrace("--capture", tmp_path / "cap", "--", tmp_path / "nope.py")
    _one_error_line(proc, "no such script")
    assert "capture saved" not in proc.stderr
    assert not (tmp_path / "cap").exists()


@pytest.mark.parametrize("name, value, message", [
    ("ETWTRACE_CALL_TIMES", "maybe", "is not a yes/no value"),
    ("ETWTRACE_C_CALLS", "2", "is not a yes/no value"),
    ("ETWTRACE_C_CALL_HOOK", "tracer", "is not one of"),
    ("ETWTRACE_CALLGRAPH", "lbr", "is not one of"),
    ("ETWTRACE_PERF_FILES", "sometimes", "is not one of"),
])
def test_bad_environment_values_are_errors(name, value, message):
    proc = run_etwtrace("--", SCRIPTS / "basic.py", env={name: value})
    _one_error_line(proc, message)


def test_an_oversized_or_special_profile_is_refused(tmp_path):
    huge = tmp_path / "huge.etwprofile"
    with open(huge, "w") as f:
        f.write("[Default]\ncpu_samples = no\n")
        f.write("# padding\n" * 200_000)
    proc = run_etwtrace("--capture", tmp_path / "cap", "--", SCRIPTS / "basic.py",
                        env={"ETWTRACE_PROFILE": str(huge)})
    _one_error_line(proc, "profiles are at most")
    fifo = tmp_path / "fifo.etwprofile"
    os.mkfifo(fifo)
    proc = run_etwtrace("--capture", tmp_path / "cap", "--", SCRIPTS / "basic.py",
                        env={"ETWTRACE_PROFILE": str(fifo)}, timeout=60)
    _one_error_line(proc, "is not a regular file")


def test_a_directory_that_is_not_an_etwtrace_capture_is_never_replaced(tmp_path):
    cap = tmp_path / "cap"
    cap.mkdir()
    (cap / "etwtrace-capture.json").write_text("{}")    # a look-alike
    (cap / "thesis.tex").write_text("years of work")
    proc = run_etwtrace("--capture", cap, "--recorder", "builtin", "--", SCRIPTS / "basic.py")
    _one_error_line(proc, "refusing to replace it")
    assert (cap / "thesis.tex").read_text() == "years of work"
    # An etwtrace capture holding a file of the user's is not replaced either.
    own = tmp_path / "own"
    assert run_etwtrace("--capture", own, "--recorder", "builtin", "--",
                        SCRIPTS / "basic.py").returncode == 0
    (own / "notes.txt").write_text("mine")
    proc = run_etwtrace("--capture", own, "--recorder", "builtin", "--", SCRIPTS / "basic.py")
    _one_error_line(proc, "notes.txt")
    assert (own / "notes.txt").read_text() == "mine"
    # An earlier capture alone is replaced.
    (own / "notes.txt").unlink()
    assert run_etwtrace("--capture", own, "--recorder", "builtin", "--",
                        SCRIPTS / "basic.py").returncode == 0


def test_a_second_capture_into_the_same_directory_is_refused(tmp_path):
    gate = tmp_path / "gate"
    slow = _script(tmp_path, f"""
        import os, time
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.02)
    """)
    cap = tmp_path / "cap"
    first = _launch("--capture", cap, "--recorder", "builtin", "--", slow)
    try:
        deadline = time.monotonic() + 60
        while not list(cap.glob("ctf/pid-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_etwtrace("--capture", cap, "--recorder", "builtin", "--", SCRIPTS / "basic.py")
        _one_error_line(second, "another capture is recording into")
    finally:
        gate.write_text("")
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "capture saved" in err
    with etwtrace.open_trace(cap) as trace:
        assert any(e.name == "PythonThread" for e in trace)


def _pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_for_pid(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the program did not start")


@pytest.mark.parametrize("capture", [False, True])
def test_sigterm_to_the_launcher_ends_the_program_and_the_capture(tmp_path, capture):
    pidfile = tmp_path / "pid"
    # The pid is written after 1,000 calls, so the calls made before the
    # signal are known (under qemu the loop may not start for a while).
    spin = _script(tmp_path, f"""
        import os
        def work():
            pass
        for _ in range(1000):
            work()
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        while True:
            work()
    """)
    cap = tmp_path / "cap"
    options = ["--capture", cap, "--recorder", "builtin"] if capture else []
    launcher = _launch("--instrumented", *options, "--", spin)
    program = _wait_for_pid(pidfile, launcher)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == -signal.SIGTERM, err
    assert not _pid_alive(program)
    if capture:
        assert "capture saved" in err
        manifest = json.loads((cap / "etwtrace-capture.json").read_text())
        assert manifest["exit_status"] == -signal.SIGTERM
        report = run_etwtrace("report", cap)
        assert report.returncode == 0, report.stderr
        work_calls = [int(line.split()[0]) for line in report.stdout.splitlines()
                      if " work (" in line and line.split()[0].isdigit()]
        assert work_calls and work_calls[0] >= 1000, report.stdout


def test_a_killed_launcher_takes_its_program_with_it(tmp_path):
    pidfile = tmp_path / "pid"
    spin = _script(tmp_path, f"""
        import os
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        while True:
            pass
    """)
    launcher = _launch("--capture", tmp_path / "cap", "--recorder", "builtin", "--", spin)
    program = _wait_for_pid(pidfile, launcher)
    assert program != launcher.pid
    launcher.kill()
    launcher.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while _pid_alive(program) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(program), "the program runs on orphaned"


def test_perf_capture_shows_the_programs_stderr_as_it_comes(tmp_path):
    need_perf()
    gate = tmp_path / "gate"
    prog = _script(tmp_path, f"""
        import os, sys, time
        print("started", file=sys.stderr, flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.02)
    """)
    launcher = _launch("--capture", tmp_path / "cap", "--recorder", "perf", "--preset", "CPU",
                       "--", prog)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "started" not in line and time.monotonic() < deadline:
            line = launcher.stderr.readline()
            assert line or launcher.poll() is None
        assert "started" in line     # while the program still runs
    finally:
        gate.write_text("")
    launcher.communicate(timeout=300)
    assert launcher.returncode == 0


@pytest.mark.parametrize("how", ["SIGINT", "timeout"])
def test_a_perf_capture_stopped_early_is_complete(tmp_path, how):
    need_perf()
    cap = tmp_path / "cap"
    cmd = [sys.executable, "-m", "etwtrace", "--capture", str(cap), "--recorder", "perf",
           "--preset", "CPU", "--", str(SCRIPTS / "hot.py"), "30"]
    if how == "timeout":
        proc = subprocess.run(["timeout", "4"] + cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, encoding="utf-8", timeout=300)
        err = proc.stderr
    else:
        # Ctrl-C: the terminal signals the whole foreground group.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                encoding="utf-8", start_new_session=True)
        time.sleep(4)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    assert "capture saved" in err, err
    report = run_etwtrace("report", cap, "--format", "folded")
    assert report.returncode == 0, report.stderr
    assert "inner (" in report.stdout
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    assert "finished" in manifest


@pytest.mark.versioned
def test_tracing_starts_at_the_programs_first_line(tmp_path):
    prog = _script(tmp_path, "def main():\n    pass\nmain()\n")
    cap = tmp_path / "cap"
    assert run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--",
                        prog).returncode == 0
    with etwtrace.open_trace(cap) as trace:
        files = {e.fields["SourceFile"] for e in trace if e.name == "PythonFunction"}
    assert files == {str(prog)}, files


@pytest.mark.versioned
def test_disabling_a_tracer_never_enabled_leaves_the_running_one(tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import etwtrace
        running = etwtrace.StackSamplingTracer()
        running.enable()
        etwtrace.InstrumentedTracer().disable()
        print(etwtrace.is_active())
        running.disable()
        print(etwtrace.is_active())
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert proc.stdout.split() == ["True", "False"], proc.stderr


@pytest.mark.versioned
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ sees C calls through sys.monitoring")
def test_c_calls_refuse_to_replace_another_profilers_hook():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import cProfile, etwtrace
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            etwtrace.InstrumentedTracer(c_calls=True).enable()
        except RuntimeError as ex:
            print("refused:", ex)
        profiler.disable()
        print(profiler.getstats() != [])
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    assert "refused: another profiler" in proc.stdout
    assert proc.stdout.split()[-1] == "True"     # cProfile kept its hook


@pytest.mark.versioned
def test_stopping_c_calls_leaves_other_threads_profile_functions(tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys, threading, etwtrace
        def theirs(frame, event, arg):
            pass
        seen = {}
        ready, done = threading.Event(), threading.Event()
        def worker():
            sys.setprofile(theirs)          # another tool, on its own thread
            ready.set()
            done.wait()
            seen["after"] = sys.getprofile()
        tracer = etwtrace.InstrumentedTracer(c_calls=True)
        tracer.enable()
        t = threading.Thread(target=worker)
        t.start()
        ready.wait()
        tracer.disable()
        done.set()
        t.join()
        print(seen["after"] is theirs)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
        env=dict(os.environ, ETWTRACE_C_CALL_HOOK="profile"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_a_fifo_in_a_capture_is_refused_not_read_forever(tmp_path):
    cap = tmp_path / "cap"
    assert run_etwtrace("--capture", cap, "--recorder", "builtin", "--",
                        SCRIPTS / "basic.py").returncode == 0
    stream = next(cap.glob("ctf/pid-*/stream-*"))
    stream.unlink()
    os.mkfifo(stream)
    proc = run_etwtrace("report", cap, timeout=60)
    # Its only trace cannot be read: a failure (exit 1), not a usage error.
    _one_error_line(proc, "not a regular file", status=1)


def test_names_that_are_not_utf8_or_hold_newlines_survive(tmp_path):
    odd = os.fsdecode(b"caf\xe9.py")
    prog = tmp_path / odd
    prog.write_text(textwrap.dedent("""
        import sys
        def plain():
            pass
        code = plain.__code__
        fields = {"co_name": "bad\\nname"}
        if sys.version_info >= (3, 11):
            fields["co_qualname"] = "bad\\nname"
        bad = type(plain)(code.replace(**fields), globals())
        for _ in range(3):
            bad()
    """))
    cap = tmp_path / "cap"
    assert run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--",
                        prog).returncode == 0
    with etwtrace.open_trace(cap) as trace:
        functions = [e.fields for e in trace if e.name == "PythonFunction"]
    assert {f["SourceFile"] for f in functions} == {str(prog)}     # losslessly
    assert "bad\nname" in {f["Name"] for f in functions}
    folded = run_etwtrace("report", cap, "--format", "folded")
    assert folded.returncode == 0, folded.stderr
    lines = folded.stdout.splitlines()
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in lines), lines
    assert any("bad\\nname (" in line and "caf\\xe9.py" in line for line in lines), lines


@pytest.mark.parametrize("user", ["root", "nobody"])
@pytest.mark.parametrize("system_wide", [False, True])
def test_asking_the_kernel_gives_perf_s_own_answer(system_wide, user):
    """The launcher and sessions ask the kernel whether perf may record
    (perf_event_open of its event, 1 ms) instead of running `perf record
    -- true` (0.14 s): the answer is perf's, for root and for a user
    (who, at perf_event_paranoid 2, may sample its own programs but not
    every CPU)."""
    need_perf()
    from sessions import NOBODY, as_user, need_nobody
    who = as_user(None)
    if user == "nobody":
        need_nobody()
        who = as_user(NOBODY)
    ours = subprocess.run(
        [sys.executable, "-c", "from etwtrace.capture import perf; "
         f"print(perf._may_open_cpu_clock({system_wide}))"],
        cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, **who)
    assert ours.returncode == 0, ours.stderr
    from etwtrace.capture import perf as _perf
    theirs = subprocess.run(
        ["perf", "record", "-q", _perf.NO_BPF_EVENTS, *(["-a"] if system_wide else []),
         "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
        cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, **who)
    assert ours.stdout.strip() == str(theirs.returncode == 0), (ours.stdout, theirs.stderr)
