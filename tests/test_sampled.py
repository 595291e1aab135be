"""--sampled (#11): Python stacks read by a BPF program at each CPU sample,
the program untouched.  Targets are CPython 3.11 and 3.13+ processes: this
interpreter when it is one, else a 3.13 the CI has built (the version runs
test every interpreter)."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import (SCRIPTS, client_env, need_sampler_module, report_output, run_etwtrace,
                      script_block)

# On each interpreter (pytest -m versioned): every test but the few that
# read no interpreter's memory (argument and privilege checks, pid
# namespaces, the sampler's stack cache), which the host and ASan run.

REQUIRE = os.environ.get("ETWTRACE_REQUIRE_PERF") == "1"


def _fails(*args, **kw):
    proc = run_etwtrace(*args, **kw)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def need_sampler():
    sampler = need_sampler_module()
    assert sampler.SAMPLE_SIZE > sampler.TARGET_SIZE > 0
    if os.geteuid() != 0:
        if REQUIRE:
            pytest.fail("the sampler tests must run as root in CI")
        pytest.skip("--sampled needs root")


SAMPLED_HERE = sys.version_info[:2] == (3, 11) or sys.version_info >= (3, 13)
CACHE = os.environ.get("ETWTRACE_PYTHONS", "/var/cache/etwtrace-pythons")


def target_python():
    """A CPython the sampler reads, to run sampled programs with."""
    if SAMPLED_HERE:
        return sys.executable
    candidate = os.path.join(CACHE, "3.13", "bin", "python3.13")
    if os.path.isfile(candidate):
        return candidate
    pytest.skip("no CPython 3.11 or 3.13+ here to sample (the version runs sample their own)")


def unsampled_python():
    """A CPython the sampler does not read (3.9), or None."""
    if not SAMPLED_HERE:
        return sys.executable
    candidate = os.path.join(CACHE, "3.9", "bin", "python3.9")
    return candidate if os.path.isfile(candidate) else None


class Running:
    """A program running under `python` (not traced), until it prints ready."""

    def __init__(self, *args, python=None, prefix=()):
        # Not under the ASan run's preloaded runtime: a program as users run it.
        self.proc = subprocess.Popen([*prefix, python or target_python(), *map(str, args)],
                                     cwd=SCRIPTS, stdout=subprocess.PIPE, text=True,
                                     env=client_env())
        assert self.proc.stdout.readline().strip() == "ready"

    def finish(self):
        out, _ = self.proc.communicate(timeout=120)
        return self.proc.returncode, out

    def stop(self):
        """Ends it now (a test done with it before its time is up)."""
        self.proc.terminate()
        self.proc.communicate(timeout=120)


def _cpu_seconds(pid):
    """User and system CPU time process `pid` has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The fewest samples a check of shares (a 0.99 of them right) is made on.
FEWEST = 50


class CpuWatch:
    """The CPU time of process `pid` (and its descendants), read every
    INTERVAL by a thread while a test samples it.  A target gets the CPU
    the machine leaves it (several suites at once, a busy CI runner give
    it less), so the samples it should have are counted from the CPU time
    it used while it was sampled, never from the clock's time."""

    INTERVAL = 0.02

    def __init__(self, pid=None, descendants=False):
        self.readings = {}          # pid -> [(CLOCK_MONOTONIC ns, CPU seconds)]
        self.descendants = descendants
        self.pids = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if pid is not None:
            self.watch(pid)

    def watch(self, pid):
        """Watches process pid too (and with descendants, its own) from now."""
        self.pids.add(pid)
        if not self._thread.is_alive():
            self._thread.start()

    def _run(self):
        while not self._done.is_set():
            self._read()
            self._done.wait(self.INTERVAL)

    def _read(self):
        for pid in list(self.pids):
            now = time.monotonic_ns()
            try:
                cpu = _cpu_seconds(pid)
            except OSError:
                continue        # gone (its last reading stays)
            self.readings.setdefault(pid, []).append((now, cpu))
            if self.descendants:
                self.pids.update(_children(pid))

    def stop(self):
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def cpu(self, pid, start, end):
        """CPU seconds process pid used from `start` to `end` (CLOCK_MONOTONIC
        ns), at least: between the first and last readings in that span."""
        inside = [cpu for at, cpu in self.readings.get(pid, ()) if start <= at <= end]
        return inside[-1] - inside[0] if inside else 0.0


def _children(pid):
    found = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(c) for c in f.read().split())
    except OSError:
        pass
    return found


def sample_times(cap):
    """{pid: timestamps of its SampledProfile events} of a capture."""
    import etwtrace
    times = {}
    with etwtrace.open_trace(cap) as trace:
        for e in trace:
            if e.name == "SampledProfile":
                times.setdefault(e.pid, []).append(e.timestamp)
    return times


def samples_due(cap, watch, pid, rate, span, times=None):
    """The samples process pid should have in capture `cap`: `rate` a
    second of the CPU time it used between its first and last sample,
    which must be at least `span` seconds apart (it was sampled all along,
    not stopped early)."""
    times = (times or sample_times(cap)).get(pid)
    assert times, f"no samples of process {pid}"
    first, last = min(times), max(times)
    assert last - first >= span * 1e9, f"sampled for {(last - first) / 1e9:.2f} s only"
    return rate * watch.cpu(pid, first, last)


def assert_sampled_as_it_ran(count, due, share):
    """`count` samples (of a function the target spends `share` of its
    CPU time or more in) are at least what its CPU time was due, and
    enough to check shares on."""
    assert count >= share * due and count >= FEWEST, (count, due)


def _sample(tmp_path, pid, seconds=2.0, *extra, watch=None, env=None):
    """Samples process pid for `seconds` (at 999 Hz); with `watch`, a
    CpuWatch of it runs meanwhile."""
    cap = tmp_path / "cap"
    if watch is not None:
        watch.watch(pid)
    try:
        proc = run_etwtrace("--sampled", "--pid", pid, "--duration", seconds, "--capture", cap,
                            *extra, env=env)
    finally:
        if watch is not None:
            watch.stop()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return cap, proc


def _folded(cap, *args):
    stacks = Counter()
    for line in report_output(cap, "--format", "folded", *args).splitlines():
        stack, value = line.rsplit(" ", 1)
        stacks[tuple(stack.split(";"))] += int(value)
    return stacks


def _name(label):
    return label.split(" (")[0]


# ---- what is refused ----

def test_bad_input_is_refused_in_one_line(tmp_path):
    cap = tmp_path / "cap"
    assert "needs --sampled" in _fails("--rate", "99", "--capture", cap, "--", "x.py")
    assert "add --capture PATH" in _fails("--sampled", "--pid", "1")
    assert "not both" in _fails("--sampled", "--capture", cap)
    for bad in ("0", "abc", "1000000"):
        assert "--rate" in _fails("--sampled", "--rate", bad, "--pid", "1", "--capture", cap)
    for bad in ("soon", "-1", "0"):
        assert "--duration" in _fails("--sampled", "--pid", "1", "--duration", bad,
                                      "--capture", cap)
    assert "--pid" in _fails("--sampled", "--pid", "x", "--capture", cap)
    assert not cap.exists()


@pytest.mark.versioned
def test_processes_it_cannot_read_are_refused(tmp_path):
    cap = tmp_path / "cap"
    assert "no such process" in _fails("--sampled", "--pid", "4194000", "--capture", cap)
    sleeper = subprocess.Popen(["sleep", "30"], env=client_env())
    try:
        assert "not a CPython" in _fails("--sampled", "--pid", sleeper.pid, "--capture", cap)
    finally:
        sleeper.kill()
        sleeper.wait()
    python = unsampled_python()
    if python is not None:
        # A Python it does not read: named, with what does.
        old = subprocess.Popen([python, "-c", "import time; time.sleep(30)"])
        try:
            line = _fails("--sampled", "--pid", old.pid, "--capture", cap)
            assert "reads 3.11, 3.13, 3.14, 3.15" in line and "--stack" in line
        finally:
            old.kill()
            old.wait()
    if not SAMPLED_HERE:
        line = _fails("--sampled", "--capture", cap, "--", SCRIPTS / "hot.py")
        assert "reads CPython 3.11, 3.13, 3.14, 3.15" in line and "--stack" in line
    assert not cap.exists()


def test_non_root_is_refused_with_what_it_needs(tmp_path):
    need_sampler()
    target = Running("sampled_target.py", 5)
    try:
        env = dict(os.environ)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "etwtrace", "--sampled", "--pid", str(target.proc.pid),
             "--capture", "/tmp/etwtrace-nobody-sampled"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    finally:
        target.proc.kill()
        target.finish()
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE" in proc.stderr


# ---- what it records ----

@pytest.mark.versioned
def test_inner_above_outer_with_lines_and_the_program_unharmed(tmp_path, walk=None):
    need_sampler()
    target = Running("sampled_target.py", 4)
    watch = CpuWatch()
    env = {"ETWTRACE_FRAME_WALK": walk} if walk else None
    cap, proc = _sample(tmp_path, target.proc.pid, 2, watch=watch, env=env)
    status, out = target.finish()
    assert status == 0 and out.strip() == "done"      # it ran on, to its end
    stacks = _folded(cap)
    python = Counter()
    for stack, n in stacks.items():
        names = [_name(f) for f in stack if f.endswith(")")]
        python[tuple(names)] += n
    inner = sum(n for s, n in python.items() if s and s[-1] == "inner")
    right = sum(n for s, n in python.items() if s[-3:] == ("<module>", "outer", "inner"))
    assert_sampled_as_it_ran(inner, samples_due(cap, watch, target.proc.pid, 999, 1.5), 0.8)
    assert right >= 0.99 * inner, python.most_common(10)
    # Lines: each Python frame names the line it was running.
    lines = {int(m) for s in stacks for f in s for m in re.findall(r"^inner \(.*:(\d+)\)$", f)}
    assert lines and lines <= script_block("sampled_target.py", "inner"), lines
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    assert manifest["mode"] == "sampled" and manifest["samples"] >= inner


def test_the_frame_walk_is_bpf_loop_where_the_kernel_has_it():
    """The BPF program walks Python frames with bpf_loop on 5.17+ (one
    frame's step verified, not 96); the unrolled walk is there for older
    kernels, and a walk that is neither is refused."""
    sampler = need_sampler_module()
    need_sampler()
    release = tuple(int(p) for p in re.findall(r"\d+", os.uname().release)[:2])
    loaded = sampler.Sampler(99)
    try:
        assert loaded.frame_walk == ("bpf_loop" if release >= (5, 17) else "unrolled")
    finally:
        loaded.close()
    unrolled = sampler.Sampler(99, "unrolled")
    try:
        assert unrolled.frame_walk == "unrolled"
    finally:
        unrolled.close()
    with pytest.raises(ValueError, match="frame_walk"):
        sampler.Sampler(99, "sideways")


def test_the_unrolled_frame_walk_gives_the_same_stacks(tmp_path):
    """Kernels before 5.17 load the walk unrolled: the same checks as
    with bpf_loop (run on the host only: the walk reads no version's
    layout of its own)."""
    test_inner_above_outer_with_lines_and_the_program_unharmed(tmp_path, walk="unrolled")


def test_a_frame_walk_that_is_not_one_is_refused_in_one_line(tmp_path):
    need_sampler_module()
    line = _fails("--sampled", "--pid", os.getpid(), "--duration", "1", "--capture",
                  tmp_path / "cap", env={"ETWTRACE_FRAME_WALK": "sideways"})
    assert line.startswith("etwtrace: error: ETWTRACE_FRAME_WALK='sideways'"), line


@pytest.mark.versioned
def test_native_frames_sit_between_python_frames_in_a_callback(tmp_path):
    need_sampler()
    target = Running("sampled_target.py", 4, "callback")
    watch = CpuWatch()
    cap, proc = _sample(tmp_path, target.proc.pid, 2, watch=watch)
    target.finish()
    # Every native frame (an interpreter without local symbols, as Debian's
    # 3.15, has nameless ones the stack tags would fold).
    stacks = _folded(cap, "--no-stacktags")
    with_key = {s: n for s, n in stacks.items() if any(_name(f) == "key" for f in s)}
    total = sum(with_key.values())
    assert_sampled_as_it_ran(total, samples_due(cap, watch, target.proc.pid, 999, 1.5), 0.7)
    # Every Python frame: key called (through C) by callback.
    under = sum(n for s, n in with_key.items()
                if "callback" in [_name(f) for f in s[:[_name(f) for f in s].index("key")]])
    assert under >= 0.99 * total, (under, total)
    # callback > (native sort code) > key: the C frames between them, by
    # frame pointers or (Debian's 3.11 and 3.14) unwound from stack copies.
    between = 0
    for stack, n in with_key.items():
        names = [_name(f) for f in stack]
        k = names.index("key")
        below = [i for i, f in enumerate(names[:k]) if f == "callback"]
        if below and any(not f.endswith(")") for f in stack[below[-1] + 1:k]):
            between += n
    assert between >= 0.99 * total, (between, total)


@pytest.mark.versioned
def test_a_library_loaded_while_sampled_has_whole_stacks(tmp_path):
    """A C extension the program loads after the sampler attached: the
    stacks through it reach the Python frames (by frame pointers, or
    unwound once the sampler has given the new files to the unwinder)."""
    need_sampler()
    import etwtrace
    target = Running("sampled_target.py", 8, "late_library")
    watch = CpuWatch()
    try:
        cap, proc = _sample(tmp_path, target.proc.pid, 4, watch=watch)
        # _decimal and the libmpdec it may link: where its samples are.
        with open(f"/proc/{target.proc.pid}/maps") as f:
            spans = [tuple(int(x, 16) for x in line.split()[0].split("-"))
                     for line in f if "_decimal" in line or "mpdec" in line]
    finally:
        target.stop()
    assert spans
    from etwtrace.sampled.sampler import THREAD_ROOTS
    in_library = whole = 0
    rooted = []         # per sample through the library, in time order
    with etwtrace.open_trace(cap) as trace:
        names, natives = {}, []
        for e in trace:
            if e.name == "PythonFunction":
                names[e.fields["BeginAddress"]] = e.fields["Name"]
                if not e.fields["IsPythonCode"] and e.fields["Name"] in THREAD_ROOTS:
                    natives.append((e.fields["BeginAddress"], e.fields["EndAddress"]))
            elif e.name == "SampledProfile" and any(lo <= a < hi for a in e.stack
                                                     for lo, hi in spans):
                in_library += 1
                whole += any(names.get(a) == "late_library" for a in e.stack)
                # Its native frames go down to the thread's first.
                rooted.append(any(lo <= a < hi for a in e.stack for lo, hi in natives))
    # (A second's sleep first: its samples span the 3 s of work after.)
    assert_sampled_as_it_ran(in_library, samples_due(cap, watch, target.proc.pid, 999, 2), 0.5)
    assert whole >= 0.99 * in_library, (whole, in_library)     # the Python frames: always
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    if "native_unwinding" in manifest:
        # Unwound from stack copies: the samples right after the load stop
        # at the library until the next read of the ring buffer gives the
        # unwinder the new files (how many depends on how soon the sampler
        # runs: on a loaded machine, later).  A few of those still come out
        # whole, by luck: code of no file is followed by rbp, which may
        # hold a frame pointer.  From the first run of whole ones on (the
        # files given), they are whole; those cut short are what the
        # manifest counts.
        run = 20
        given = next((i for i in range(len(rooted)) if all(rooted[i:i + run])), None)
        assert given is not None, rooted
        later = rooted[given:]
        assert len(later) >= FEWEST and sum(later) >= 0.99 * len(later), \
            (given, sum(later), len(later))
        ends = manifest["native_unwinding"]
        total = sum(ends.values())
        assert total - ends["complete"] <= in_library - sum(rooted) + 0.01 * total, \
            (ends, in_library, sum(rooted))


def _python_and_native_path(stack):
    """A folded stack from Py_BytesMain down to its last Python frame: what
    both ways of finding native frames must agree on (leaf C frames vary
    by sample; the frame-pointer walk stops in libc, which keeps none)."""
    last = max((i for i, f in enumerate(stack) if f.endswith(")")), default=-1)
    # Named frames only: a tail-calling interpreter's nameless instruction
    # functions (Debian's 3.15) differ from sample to sample.
    names = [_name(f).split(" [")[0] for f in stack[:last + 1] if not f.startswith("0x")]
    first = names.index("Py_BytesMain") if "Py_BytesMain" in names else 0
    return tuple(names[first:])


@pytest.mark.versioned
def test_unwinding_stack_copies_gives_what_frame_pointers_give(tmp_path):
    """On an interpreter with frame pointers, the same program sampled both
    ways: native frames from the kernel's frame-pointer walk, and unwound
    from stack copies by the CFI (what builds without frame pointers get):
    the same stacks, the unwound ones at least as often whole."""
    need_sampler()
    target = Running("sampled_target.py", 8, "callback")
    try:
        from etwtrace.sampled import remote as _pyremote
        remote = _pyremote.Process(target.proc.pid)
        keeps = remote.keeps_frame_pointers()
        remote.close()
        if not keeps:
            pytest.skip("this interpreter has no frame pointers to compare with (the runs of "
                        ".ci's 3.13 and Debian's 3.15 compare)")
        paths = []
        for unwind in (False, True):
            cap = tmp_path / f"cap-{unwind}"
            code = ("import runpy, sys; from etwtrace.sampled import sampler as _sampled; "
                    f"_sampled.UNWIND_ALWAYS = {unwind}; sys.argv[0] = 'etwtrace'; "
                    "runpy.run_module('etwtrace', run_name='__main__')")
            proc = subprocess.run([sys.executable, "-c", code, "--sampled", "--pid",
                                   str(target.proc.pid), "--duration", "2", "--capture", str(cap)],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
            manifest = json.loads((cap / "etwtrace-capture.json").read_text())
            assert ("no frame pointers" in manifest["native_frames"]) == unwind
            if unwind:
                ends = manifest["native_unwinding"]
                assert ends["complete"] >= 0.99 * sum(ends.values()), ends
            counts = Counter()
            for stack, n in _folded(cap, "--no-stacktags").items():
                counts[_python_and_native_path(stack)] += n
            paths.append(counts)
    finally:
        target.finish()
    by_frame_pointers, unwound = paths
    main = by_frame_pointers.most_common(1)[0][0]
    assert "key" in main and main[0] == "Py_BytesMain", main
    # The unwinder finds the same stacks, and no worse: the frame-pointer
    # walk loses a frame where a leaf has not set up its frame yet (the
    # evaluator under key, in about 9% of samples on 3.13), the CFI does not.
    shares = [{path: n / sum(c.values()) for path, n in c.items()} for c in paths]
    assert shares[1].get(main, 0.0) >= 0.98, unwound.most_common(3)
    assert shares[1][main] >= shares[0][main] - 0.02, (shares[0][main], shares[1][main])
    for path, share in shares[1].items():
        assert share < 0.02 or path in by_frame_pointers, (path, share)


@pytest.mark.versioned
def test_threads_have_their_own_stacks(tmp_path):
    need_sampler()
    script = tmp_path / "threads.py"
    script.write_text((SCRIPTS / "spinners.py").read_text().replace(
        "until = time.monotonic() + 1.5", "print('ready', flush=True)\n"
        "until = time.monotonic() + 3"))
    target = Running(script)
    cap, _ = _sample(tmp_path, target.proc.pid, 2)
    target.finish()
    by_thread = {}
    doc = json.loads(report_output(cap, "--format", "speedscope"))
    frames = doc["shared"]["frames"]
    for profile in doc["profiles"]:
        names = {_name(frames[i]["name"]) for s in profile["samples"] for i in s}
        by_thread[profile["name"]] = names & {"spin_one", "spin_two"}
    spinning = [names for names in by_thread.values() if names]
    assert sorted(len(n) for n in spinning) == [1, 1] and spinning[0] != spinning[1]
    # babeltrace2, the independent reader, reads every thread's stream
    # (it once refused any but the first: each named its own stream class).
    from conftest import need_tool
    need_tool("babeltrace2")
    import etwtrace
    with etwtrace.open_trace(cap) as trace:
        threads = Counter(e.tid for e in trace if e.name == "SampledProfile")
    assert len(threads) >= 2, threads     # the two spinners (the main thread waits)
    out = subprocess.run(["babeltrace2", str(cap / "ctf")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=client_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("SampledProfile:") == sum(threads.values())


@pytest.mark.versioned
def test_a_process_that_ends_while_sampled(tmp_path):
    need_sampler()
    target = Running("sampled_target.py", 1)
    cap, proc = _sample(tmp_path, target.proc.pid, 30)
    target.finish()
    assert f"process {target.proc.pid} ended" in proc.stderr
    assert any(_name(f) == "inner" for s in _folded(cap) for f in s)


def test_a_process_in_its_own_pid_namespace(tmp_path):
    need_sampler()
    target = Running("sampled_target.py", 4, prefix=("unshare", "--pid", "--fork"))
    # The Python process is unshare's child: its pid as this namespace sees it.
    children = subprocess.run(["pgrep", "-P", str(target.proc.pid)], stdout=subprocess.PIPE,
                              text=True, env=client_env(), timeout=60).stdout.split()
    assert len(children) == 1
    watch = CpuWatch()
    cap, _ = _sample(tmp_path, int(children[0]), 1.5, watch=watch)
    target.finish()
    stacks = _folded(cap)
    inner = sum(n for s, n in stacks.items() if any(_name(f) == "inner" for f in s))
    assert_sampled_as_it_ran(inner, samples_due(cap, watch, int(children[0]), 999, 1), 0.8)


@pytest.mark.versioned
def test_no_sample_is_named_after_a_dead_function(tmp_path):
    need_sampler()
    windows_file = tmp_path / "windows.txt"
    script = tmp_path / "reuse.py"
    script.write_text("print('ready', flush=True)\n" + (SCRIPTS / "reuse.py").read_text())
    target = Running(script, 3, windows_file)
    watch = CpuWatch()
    cap, _ = _sample(tmp_path, target.proc.pid, 2.5, watch=watch)
    target.finish()
    windows = {}
    for line in windows_file.read_text().split("\n"):
        if line:
            name, start, end = line.split()
            windows[name] = (int(start), int(end))
    import etwtrace
    named = {}
    checked = 0
    with etwtrace.open_trace(cap) as trace:
        for e in trace:
            if e.name == "PythonFunction" and e.fields["IsPythonCode"]:
                named[(e.pid, e.fields["BeginAddress"])] = e.fields["Name"]
            elif e.name == "SampledProfile":
                for ip in e.stack:
                    name = named.get((e.pid, ip))
                    if name in windows:
                        start, end = windows[name]
                        # Sampled while that function ran (1 ms of slack for
                        # the two clocks' readings).
                        assert start - 10**6 <= e.timestamp <= end + 10**6, (name, e.timestamp)
                        checked += 1
    assert_sampled_as_it_ran(checked, samples_due(cap, watch, target.proc.pid, 999, 1.5), 0.7)


@pytest.mark.versioned
def test_a_code_object_freed_before_it_is_read_keeps_the_samples_name(tmp_path):
    """The sampler reads a code object's names after the sample: by then it
    may be freed (pointers into anything) or reused by another function."""
    from etwtrace.sampled import remote as _pyremote, sampler as _sampled
    script = tmp_path / "reuse.py"
    script.write_text("print('ready', flush=True)\n" + (SCRIPTS / "reuse.py").read_text())
    target = Running(script, 60, os.devnull)
    try:
        remote = _pyremote.Process(target.proc.pid)
        for address in (0, 1 << 63, (1 << 64) - 8, 0x10):
            with pytest.raises(_pyremote.RemoteError):
                remote.code(address)
        remote.close()
    finally:
        target.proc.kill()
        target.finish()
    same = _sampled._same_code
    assert same(("inner", "a.py", 7, b""), 7, b"inner")
    assert not same(("inner", "a.py", 8, b""), 7, b"inner")      # other first line
    assert not same(("inner_x", "a.py", 7, b""), 7, b"inner")    # whole name differs
    long_name = "Class.a_long_method_name"
    assert same((long_name, "a.py", 7, b""), 7, long_name.encode()[:16])
    assert not same(("Other." + long_name, "a.py", 7, b""), 7, long_name.encode()[:16])


@pytest.mark.versioned
def test_launched_program_is_sampled_to_its_end(tmp_path):
    need_sampler()
    if not SAMPLED_HERE:
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")
    cap = tmp_path / "cap"
    # Started by a relative path, as from a shell in its directory.
    proc, pid, watch = _launch_sampled("--rate", "499", "--capture", cap, "--",
                                       "sampled_target.py", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    stacks = _folded(cap)
    inner = sum(n for s, n in stacks.items() if any(_name(f) == "inner" for f in s))
    # It ran 1.5 s, sampled from its first moments to its end.
    assert_sampled_as_it_ran(inner, samples_due(cap, watch, pid, 499, 1.2), 0.8)
    # Its frames name their file and the lines they ran, not the def's.
    where = {m for s in stacks for f in s for m in re.findall(r"^inner \((.*):(\d+)\)$", f)}
    assert {os.path.basename(file) for file, _ in where} == {"sampled_target.py"}, where
    source = (SCRIPTS / "sampled_target.py").read_text().splitlines()
    def_line = next(i for i, text in enumerate(source, 1) if text.startswith("def inner"))
    assert {int(line) for _, line in where} - {def_line}, where


def _launch_sampled(*args, descendants=False):
    """python -m etwtrace --sampled ARGS (a program to run), with a
    CpuWatch of the program (and with `descendants`, of the processes it
    starts) from when it is sampled; (the finished process, the program's
    pid, the watch)."""
    proc = subprocess.Popen([sys.executable, "-m", "etwtrace", "--sampled", *map(str, args)],
                            cwd=SCRIPTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    watch = CpuWatch(descendants=descendants)
    said, pid = [], None
    try:
        for line in proc.stderr:
            said.append(line)
            found = re.match(r"etwtrace: sampling process (\d+) ", line)
            if found:
                pid = int(found.group(1))
                watch.watch(pid)
                break
        out, err = proc.communicate(timeout=300)
    finally:
        watch.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert pid is not None, "".join(said)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(said) + err), \
        pid, watch


def _short_program(tmp_path, code):
    script = tmp_path / "short.py"
    script.write_text(code)
    untraced = subprocess.run([sys.executable, script], capture_output=True, text=True)
    return script, untraced


@pytest.mark.versioned
def test_a_short_program_gives_its_capture_and_exits_as_it_did(tmp_path):
    # fib(20) ends in a few tens of milliseconds, about what reading its
    # interpreter's symbols took before it was sampled (it was refused
    # as "not a CPython" then).
    need_sampler()
    if not SAMPLED_HERE:
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")
    script, untraced = _short_program(tmp_path, (
        "import sys\n"
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "print(fib(20))\nsys.exit(3)\n"))
    assert untraced.returncode == 3 and untraced.stdout == "6765\n"
    cap = tmp_path / "cap"
    proc = run_etwtrace("--sampled", "--capture", cap, "--", script)
    assert (proc.returncode, proc.stdout) == (3, untraced.stdout), proc.stderr
    assert "Traceback" not in proc.stderr and "not a CPython" not in proc.stderr
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    assert manifest["exit_status"] == 3
    said = [line for line in proc.stderr.splitlines() if "capture saved" in line]
    assert len(said) == 1
    if manifest["samples"]:
        assert said[0].startswith(f"etwtrace: {manifest['samples']:,} samples")
    else:
        assert "ended before its first sample" in said[0]


@pytest.mark.versioned
def test_a_program_of_under_a_second_has_its_files_and_lines(tmp_path):
    # Code objects are read from the process's memory when the ring buffer
    # is read; read once a second, a program that ended sooner left every
    # function as "?" at its def line (seen on 3.15, whose frame-pointer
    # samples are small and do not fill the ring).
    need_sampler()
    if not SAMPLED_HERE:
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")
    script, untraced = _short_program(tmp_path, (
        "import time\n"
        "def spin():\n"
        "    total = 0\n"
        "    for i in range(1000):\n"
        "        total += i\n"
        "    return total\n"
        "def main():\n"
        "    until = time.monotonic() + 0.4\n"
        "    while time.monotonic() < until:\n"
        "        spin()\n"
        "main()\n"))
    assert untraced.returncode == 0
    cap = tmp_path / "cap"
    proc = run_etwtrace("--sampled", "--capture", cap, "--", script)
    assert proc.returncode == 0, proc.stderr
    frames = Counter()
    for stack, n in _folded(cap).items():
        for f in stack:
            found = re.match(r"^(spin|main) \((.*):(\d+)\)$", f)
            if found:
                frames[found.groups()] += n
    assert sum(frames.values()) > 50, frames
    frames = Counter({k: n for k, n in frames.items() if not k[1].startswith("<frozen")})
    assert {os.path.basename(file) for _, file, _ in frames} == {"short.py"}, frames
    # spin's running lines (4, 5, 6), not its def's (2) alone.
    assert {int(line) for name, _, line in frames if name == "spin"} & {4, 5, 6}, frames


@pytest.mark.versioned
def test_a_program_that_ends_before_the_first_sample_says_so_in_one_line(tmp_path):
    # At 1 Hz a program of a few milliseconds ends before its first sample.
    need_sampler()
    if not SAMPLED_HERE:
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")
    script, untraced = _short_program(tmp_path, "import sys\nprint('x')\nsys.exit(5)\n")
    cap = tmp_path / "cap"
    proc = run_etwtrace("--sampled", "--rate", "1", "--capture", cap, "--", script)
    assert (proc.returncode, proc.stdout) == (5, untraced.stdout), proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "sampling process" not in line]
    assert lines == [f"etwtrace: process {lines[0].split()[2]} ended before its first sample; "
                     f"capture saved to {cap} (no samples)"], proc.stderr
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    assert (manifest["samples"], manifest["exit_status"]) == (0, 5)


@pytest.mark.versioned
def test_a_program_gone_before_it_could_be_read_is_not_an_error(monkeypatch):
    # The program ends while its interpreter is being looked for: what
    # _wait_for_runtime meets then is a zombie with no files mapped.
    from etwtrace.sampled import sampler as _sampled

    class Gone:
        pid = 12345

        def poll(self):
            return 0

    class Refusing:
        def add(self, pid):
            raise _sampled.RemoteError(f"process {pid} is not a CPython (no _PyRuntime in its files)")

    assert _sampled._wait_for_runtime(Gone(), Refusing()) is False


# ---- a sampled recording session ----

def _python_stacks(cap, *args):
    python = Counter()
    for stack, n in _folded(cap, *args).items():
        python[tuple(_name(f) for f in stack if f.endswith(")"))] += n
    return python


@pytest.mark.versioned
def test_a_sampled_session_samples_every_python_process(box):
    """record start --sampled: CPython processes that ran before the session
    and that start during it are sampled without hooks; other processes
    (not Python, or a Python it cannot read) are not; status, snapshot and
    stop work as for any session."""
    need_sampler()
    capture = box.path("capture")
    before = Running("sampled_target.py", 6)
    watch = CpuWatch(before.proc.pid)
    others = [subprocess.Popen(["sleep", "30"])]
    unsampled = unsampled_python()
    if unsampled is not None:
        # A Python it does not read: not sampled, and said.
        others.append(subprocess.Popen([unsampled, "-c", "import time; time.sleep(30)"]))
    try:
        started = box.start(capture, "--sampled", "--rate", "499")
        assert "hook-free sampling" in started.stderr
        during = Running("sampled_target.py", 4)
        watch.watch(during.proc.pid)
        staging = os.path.join(capture, ".session", "ctf")
        deadline = time.monotonic() + 10
        while not {f"pid-{before.proc.pid}", f"pid-{during.proc.pid}"} <= set(os.listdir(staging)):
            assert time.monotonic() < deadline, os.listdir(staging)
            time.sleep(0.1)
        assert not any(f"pid-{p.pid}" in os.listdir(staging) for p in others)
        status = box.record("status")
        assert status.returncode == 0 and "processes sampled" in status.stderr, status.stderr
        time.sleep(1.5)
        snap = box.path("snap")
        assert box.record("snapshot", snap).returncode == 0
        # What was sampled before the snapshot (written each second).
        right = sum(n for s, n in _python_stacks(snap, "--pid", before.proc.pid).items()
                    if s[-2:] == ("outer", "inner"))
        assert_sampled_as_it_ran(right, samples_due(snap, watch, before.proc.pid, 499, 0.5),
                                 0.8)
        for target in (during, before):
            status, out = target.finish()
            assert status == 0 and out.strip() == "done"
        r = box.stop()
        assert "session saved to" in r.stderr
    finally:
        watch.stop()
        for p in others:
            p.kill()
            p.wait()
    times = sample_times(capture)
    for target in (before, during):
        python = _python_stacks(capture, "--pid", target.proc.pid)
        inner = sum(n for s, n in python.items() if s and s[-1] == "inner")
        right = sum(n for s, n in python.items() if s[-3:] == ("<module>", "outer", "inner"))
        due = samples_due(capture, watch, target.proc.pid, 499, 1.5, times)
        assert_sampled_as_it_ran(inner, due, 0.8)
        assert right >= 0.99 * inner, python.most_common(5)
    manifest = json.loads(Path(capture, "etwtrace-capture.json").read_text())
    assert manifest["mode"] == "sampled" and manifest["recorder"] == "bpf"
    assert manifest["rate"] == 499 and manifest["samples"] > 0
    assert str(before.proc.pid) in manifest["native_frames"]
    if unsampled is not None:
        assert "older than 3.11" in manifest["processes_not_sampled"][str(others[1].pid)]


def test_a_sampled_session_refuses_what_it_cannot_do(box):
    from sessions import one_line_error
    capture = box.path("capture")
    one_line_error(box.record("start", capture, "--sampled", "--ring", "1M"), "leave out --ring")
    one_line_error(box.record("start", capture, "--sampled", "--recorder", "perf"),
                   "leave out --recorder")
    one_line_error(box.record("start", capture, "--rate", "99"), "--rate is for --sampled")
    one_line_error(box.record("start", capture, "--sampled", "--rate", "0"), "--rate 0")
    need_sampler()
    nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "etwtrace", "record", "start", box.path("nobody"), "--sampled"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env=dict(box.env, HOME="/"))
    one_line_error(nobody, "needs root")
    assert not os.path.exists(capture)


@pytest.mark.versioned
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_launched_program_is_followed_into_its_workers(tmp_path, method):
    """Its workers, children of the program (fork, spawn) or of the
    forkserver it starts (the program's grandchildren)."""
    need_sampler()
    if not SAMPLED_HERE:
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")
    cap = tmp_path / "cap"
    proc, _pid, watch = _launch_sampled("--capture", cap, "--", SCRIPTS / "sampled_children.py",
                                        "3", method, descendants=True)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout, proc.stderr
    # The program and its workers; with spawn also multiprocessing's
    # resource tracker, with forkserver the tracker and the server.
    counts = {"fork": "[34]", "spawn": "[34]", "forkserver": "[45]"}[method]
    assert re.search(rf" samples of {counts} processes", proc.stderr), proc.stderr
    import etwtrace
    inner_by_pid = Counter()
    with etwtrace.open_trace(cap) as trace:
        names = {}
        for e in trace:
            if e.name == "PythonFunction":
                names[(e.pid, e.fields["BeginAddress"])] = e.fields["Name"]
            elif e.name == "SampledProfile":
                if any(names.get((e.pid, ip)) == "inner" for ip in e.stack):
                    inner_by_pid[e.pid] += 1
    # Both workers were found (within a second of starting) and sampled
    # from then on, each to its end.
    assert len(inner_by_pid) == 2, inner_by_pid
    times = sample_times(cap)
    for worker, inner in inner_by_pid.items():
        assert_sampled_as_it_ran(inner, samples_due(cap, watch, worker, 999, 1.5, times), 0.7)


def test_stacks_sent_once_then_by_hash_are_all_written_in_time_order(tmp_path, monkeypatch):
    """The BPF program sends a stack whole once and then only its hash; the
    sampler writes the samples of known stacks itself, in chunks.  With the
    stack memory made tiny, stacks are forgotten and hashed anew many times
    (generations): every sample must still be written, with its own stack,
    in time order, readable by babeltrace2."""
    need_sampler()
    from conftest import need_tool
    need_tool("babeltrace2")
    import select
    import time as clock
    import etwtrace
    from etwtrace.sampled import sampler as _sampled
    from etwtrace.trace.capture import CaptureDir
    monkeypatch.setattr(_sampled, "STACK_CACHE", 8)
    target = Running("sampled_target.py", 4)
    cap = tmp_path / "cap"
    sampling = _sampled.Sampling(999)
    try:
        directory = CaptureDir(str(cap)).open()
        directory.write_manifest(mode="sampled", recorder="bpf")
        directory.close()
        sampling.record_into(str(cap))
        sampling.add(target.proc.pid)
        waiting = select.poll()
        waiting.register(sampling.fileno(), select.POLLIN)
        cpu_before = _cpu_seconds(target.proc.pid)
        until = clock.monotonic() + 2.5
        while clock.monotonic() < until:
            waiting.poll(100)
            sampling.drain()
        cpu = _cpu_seconds(target.proc.pid) - cpu_before
        generations = sampling.recorder.generations
    finally:
        lost = sampling.close()
        target.finish()
    assert lost == 0 and sampling.recorder.forgotten == 0
    assert generations >= 6, generations     # forgotten and hashed anew, again and again
    samples = sampling.samples
    # The target gets the CPU the machine leaves it (a loaded CI runner
    # gives it less): the samples follow its CPU time, not the clock's.
    assert samples > 0.8 * 999 * cpu and cpu > 0.5, (samples, cpu)
    names, times, inner, right = {}, [], 0, 0
    with etwtrace.open_trace(cap) as trace:
        for e in trace:
            if e.name == "PythonFunction":
                names[e.fields["BeginAddress"]] = e.fields["Name"]
            elif e.name == "SampledProfile":
                times.append(e.timestamp)
                stack = [names.get(ip) for ip in e.stack]
                python = [n for n in stack if n in ("inner", "outer", "<module>")]
                if python[:1] == ["inner"]:
                    inner += 1
                    right += python[:3] == ["inner", "outer", "<module>"]
    assert len(times) == samples and times == sorted(times)
    assert inner > 0.5 * samples and right >= 0.99 * inner, (inner, right, samples)
    out = subprocess.run(["babeltrace2", str(cap / "ctf")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=client_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("SampledProfile:") == samples
