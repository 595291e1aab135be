import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import etwtrace

ROOT = Path(__file__).absolute().parent
SCRIPTS = ROOT / "scripts"
REQUIRE_PERF = os.environ.get("ETWTRACE_REQUIRE_PERF") == "1"
# Heavy loops shrink by this factor where everything runs slower (under
# ThreadSanitizer: .ci/tsan sets it); what they check stays the same.
SCALE = float(os.environ.get("ETWTRACE_TEST_SCALE", "1"))


def scaled(n, least=1):
    return max(least, int(n * SCALE))


def _perf_unavailable_reason():
    """None when perf can record here, else why not."""
    from etwtrace.capture import perf as _perf
    perf = _perf.find_perf()
    if perf is None:
        return "perf is not installed"
    try:
        _perf.check_permitted(perf)
    except _perf.PerfError as ex:
        return str(ex)
    return None


_PERF_REASON = _perf_unavailable_reason()
NOBODY_UID = 65534


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: runs in the test's process, without a "
                            "subprocess or perf (the fast unit layer)")


def pytest_sessionstart(session):
    session.config._etwtrace_started = time.time()
    # What an earlier suite left when it was killed before its end (below):
    # a session test's worker runs as nobody, and under a reused pid it may
    # not write a perf map or jitdump another user's dead process left, so
    # perf could not unwind its Python frames.
    _sweep_tmp(lambda mtime: mtime < time.time() - 600)


# Two perf sessions (or perf and bpftrace) at once on one machine have
# crashed its kernel (uprobe list corruption), and many tests record with
# perf, some without saying so (--recorder auto).  Each test therefore
# holds this machine-wide lock while it runs, so that suites run side by
# side (developers' worktrees) take turns test by test; in CI nothing
# else waits on it.  Scripts that run perf by hand take it with flock(1).
TEST_LOCK = os.environ.get("ETWTRACE_TEST_LOCK", "/tmp/etwtrace-perf.lock")


_lock = {"fd": -1, "depth": 0}


@contextlib.contextmanager
def machine_lock():
    """Holds TEST_LOCK; re-entrant within this process (flock would wait
    on this process's own other descriptor)."""
    if _lock["depth"] == 0:
        import fcntl
        fd = os.open(TEST_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        _lock["fd"] = fd
    _lock["depth"] += 1
    try:
        yield
    finally:
        _lock["depth"] -= 1
        if _lock["depth"] == 0:
            os.close(_lock["fd"])
            _lock["fd"] = -1


def _is_unit(node):
    """Tests marked `unit` run no subprocess and no perf: they need no turn."""
    return node is not None and node.get_closest_marker("unit") is not None


@pytest.fixture(autouse=True)
def _one_test_on_the_machine_at_a_time(request):
    if _is_unit(request.node):
        yield
        return
    with machine_lock():
        # What the suite's own ended processes left: with pid_max at 32768
        # a run reuses pids, and no test should meet the perf map, jitdump
        # or jitted images an earlier test's process left under its pid
        # (a worker of another user could not write its own there).
        _sweep_tmp(lambda mtime: True)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Fixtures of a module's or the session's scope are made before any
    test's autouse lock (test_exports' spinners records with perf): every
    fixture is made holding the lock."""
    if _is_unit(getattr(request, "node", None)):
        yield
        return
    with machine_lock():
        yield


def pytest_sessionfinish(session):
    """Removes the /tmp perf maps, jitdumps and jitted images that the
    suite's ended processes left (perf captures keep them for perf report,
    README), its own and those of the programs it ran as nobody:
    thousands per run would otherwise pile up, and a later process of
    another user under a reused pid would meet them."""
    started = getattr(session.config, "_etwtrace_started", None)
    if started is not None:
        _sweep_tmp(lambda mtime: mtime >= started)


def _sweep_tmp(chosen):
    """Removes this user's and nobody's /tmp perf maps, jitdumps and jitted
    images of processes that have ended, whose mtime is `chosen`."""
    for pattern in ("perf-*.map", "jit-*.dump", "jitted-*.so"):
        for path in Path("/tmp").glob(pattern):
            pid = path.name.split("-")[1].split(".")[0]
            try:
                st = path.lstat()
                if (chosen(st.st_mtime) and st.st_uid in (os.geteuid(), NOBODY_UID)
                        and pid.isdigit() and not os.path.exists(f"/proc/{pid}")):
                    path.unlink()
            except OSError:
                pass


def need_perf():
    """Skips the calling test where perf cannot record; under
    ETWTRACE_REQUIRE_PERF=1 (CI) that is a failure instead."""
    if _PERF_REASON is None:
        return
    if REQUIRE_PERF:
        pytest.fail(f"perf is required here (ETWTRACE_REQUIRE_PERF=1) but: {_PERF_REASON}")
    pytest.skip(f"needs perf: {_PERF_REASON}")


def need_tool(name):
    if shutil.which(name) is None:
        if REQUIRE_PERF:
            pytest.fail(f"{name} is required in CI but not installed")
        pytest.skip(f"{name} is not installed")


REQUIRE_CLIENTS = os.environ.get("ETWTRACE_REQUIRE_CLIENTS") == "1"


def need_sampler_module():
    """etwtrace._sampler (the BPF sampler's C module), or a skip where this
    install was built without it (a failure in CI, which builds it)."""
    try:
        import etwtrace._sampler as sampler
    except ImportError:
        if REQUIRE_PERF:
            pytest.fail("the BPF sampler was not built (clang and libbpf-dev are required in CI)")
        pytest.skip("etwtrace was built without the BPF sampler")
    return sampler


@pytest.fixture(scope="module")
def sampler():
    """The _sampler module, for tests of its C parts that need no BPF."""
    return need_sampler_module()


def need_client(name):
    """Skips the calling test where `name` (bpftrace, go, chromium, hotspot: a real
    client an export is checked with) is not installed; under
    ETWTRACE_REQUIRE_CLIENTS=1 (CI's host run) that is a failure instead."""
    if shutil.which(name) is None:
        if REQUIRE_CLIENTS:
            pytest.fail(f"{name} is required here (ETWTRACE_REQUIRE_CLIENTS=1) but not installed")
        pytest.skip(f"{name} is not installed")


def client_env(**extra):
    """The environment for a client program: without the sanitizer runtime
    the ASan run preloads into the tests' processes."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONMALLOC")}
    env.update(extra)
    return env


def run_etwtrace(*args, cwd=SCRIPTS, env=None, timeout=300, check=False):
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "etwtrace", *map(str, args)],
        cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        encoding="utf-8", errors="replace", timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"etwtrace {args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def report_output(path, *args):
    """stdout of a report that must succeed without a traceback."""
    proc = run_etwtrace("report", path, *args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


class Capture:
    def __init__(self, path, proc):
        self.path = path
        self.proc = proc

    def events(self):
        with etwtrace.open_trace(self.path) as trace:
            return list(trace)


@pytest.fixture
def capture(tmp_path):
    """capture(script, *args, recorder='builtin', mode='stack', preset=None)"""
    counter = [0]

    def run(script, *args, recorder="builtin", mode="stack", preset=None, expect_status=0):
        if recorder == "perf":
            need_perf()
        counter[0] += 1
        path = tmp_path / f"capture{counter[0]}"
        options = [f"--{mode}", "--capture", path, "--recorder", recorder]
        if preset:
            options += ["--preset", preset]
        proc = run_etwtrace(*options, "--", SCRIPTS / script, *args)
        assert proc.returncode == expect_status, proc.stderr
        return Capture(path, proc)

    return run


def python_functions(events, source_name):
    return [e for e in events
            if e.name == "PythonFunction" and e.fields["SourceFile"].endswith(source_name)]


def name_stack(stack, funcs, pid=None):
    """Python function names of a stack, innermost first, mapped through the
    [BeginAddress, EndAddress) ranges of PythonFunction events."""
    names = []
    for ip in stack:
        for f in funcs:
            if pid is not None and f.pid != pid:
                continue
            if f.fields["BeginAddress"] <= ip < f.fields["EndAddress"]:
                names.append(f.fields["Name"])
                break
    return names


def marked_stacks(events, source_name):
    funcs = python_functions(events, source_name)
    result = []
    for e in events:
        if e.name == "PythonStackSample":
            names = name_stack(e.stack, funcs, e.pid)
            if names:
                result.append(names)
    return result


RECORDERS = ["builtin", "perf"]


@pytest.fixture
def box():
    """A recording session of the test's own (tests/sessions.py)."""
    from sessions import Box
    b = Box()
    try:
        yield b
    finally:
        b.cleanup()


# ---- lines of test scripts, by marker ----

def script_line(script, marker):
    """The line number of the line of tests/scripts/`script` that ends with
    the comment `# LINE:marker` (one such line): tests that check which line
    a frame names find it so, not by a number an edit above would move."""
    tag = f"# LINE:{marker}"
    found = [n for n, line in enumerate((SCRIPTS / script).read_text().splitlines(), 1)
             if line.rstrip().endswith(tag)]
    if len(found) != 1:
        raise LookupError(f"{script}: {len(found)} lines marked {tag}, not one")
    return found[0]


def script_block(script, marker):
    """The line numbers of the block that starts at the line marked
    `# LINE:marker` (a def and its body: the lines after it indented deeper,
    up to the first that is not)."""
    lines = (SCRIPTS / script).read_text().splitlines()
    first = script_line(script, marker)
    indent = len(lines[first - 1]) - len(lines[first - 1].lstrip())
    block = {first}
    for n in range(first + 1, len(lines) + 1):
        text = lines[n - 1]
        if text.strip() and len(text) - len(text.lstrip()) <= indent:
            break
        if text.strip():
            block.add(n)
    return block
