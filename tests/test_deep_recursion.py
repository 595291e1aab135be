"""Deep recursion (#22): a program that runs untraced runs traced, in every
mode, at the recursion limits users set.  Through the PEP 523 hook every
Python call costs C stack (untraced 3.11+ costs none): 19,000 calls deep
overflowed an 8 MiB main thread (SIGSEGV), and 3.12 and 3.13 counted each
against their C-recursion limit (RecursionError at 750 and 5,000 deep).
The traced run must end as the untraced run does: same output, same exit
status, RecursionError where the untraced one raises it; and its trace
must read back with exact, balanced counts."""
import os
import re
import resource
import subprocess
import sys

import pytest

from conftest import SCRIPTS, run_etwtrace

pytestmark = pytest.mark.versioned

SCRIPT = SCRIPTS / "deep_recursion.py"
MAIN_STACK = 8 << 20    # the usual RLIMIT_STACK, held for the runs below

MODES = {
    "stack": (["--stack"], {}),
    "instrumented": (["--instrumented"], {}),
    "c-calls": (["--instrumented", "--c-calls"], {}),
    # 3.12+: C calls through a profile function, not sys.monitoring
    "c-calls-profile": (["--instrumented", "--c-calls"], {"ETWTRACE_C_CALL_HOOK": "profile"}),
    "no-call-times": (["--instrumented", "--no-call-times"], {}),
}

# (recursion limit, depth, thread stack KiB: 0 the main thread, extra)
CASES = {
    "main-20000": (20000, 19000, 0, []),
    "main-20000-uncaught": (20000, 19000, 0, ["uncaught"]),
    "thread-512MiB-100000": (100000, 99000, 512 * 1024, []),
    # (a thread of 1 MiB: the larger stack from about 1,000 calls deep)
    "thread-1MiB-6000": (6000, 5000, 1024, []),
}


def _main_stack():
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if hard == resource.RLIM_INFINITY or hard >= MAIN_STACK:
        resource.setrlimit(resource.RLIMIT_STACK, (MAIN_STACK, hard))


def _run(cmd, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(a) for a in cmd], cwd=SCRIPTS, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace", timeout=600,
                          preexec_fn=_main_stack)


_untraced = {}


def untraced(case):
    """How the program ends untraced (once per case)."""
    if case not in _untraced:
        limit, depth, stack_kib, extra = CASES[case]
        _untraced[case] = _run([sys.executable, SCRIPT, limit, depth, stack_kib, *extra])
    proc = _untraced[case]
    if proc.returncode < 0:
        # 3.9 and 3.10 evaluate every call on the C stack themselves.
        pytest.skip(f"{case} crashes this Python untraced ({proc.returncode})")
    return proc


def last_line(text):
    """The program's last line on stderr (the launcher's own lines left out)."""
    lines = [line for line in text.strip().splitlines() if not line.startswith("etwtrace:")]
    return lines[-1] if lines else ""


def call_counts(report):
    """{function name: calls} from a text report's calls table."""
    counts = {}
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s.*?\s(\w+) \(\S*deep_recursion\.py:\d+\)$", line)
        if m and m.group(2) not in counts:
            counts[m.group(2)] = int(m.group(1))
    return counts


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_traced_run_ends_as_the_untraced_one(tmp_path, mode, case):
    expected = untraced(case)
    limit, depth, stack_kib, extra = CASES[case]
    options, env = MODES[mode]
    cap = tmp_path / "cap"
    traced = _run([sys.executable, "-m", "etwtrace", *options, "--capture", cap,
                   "--recorder", "builtin", "--", SCRIPT, limit, depth, stack_kib, *extra], env)
    assert traced.returncode == expected.returncode, traced.stderr[-3000:]
    assert traced.stdout == expected.stdout
    assert "RecursionError" in (expected.stdout + expected.stderr)
    if extra == ["uncaught"]:
        assert last_line(traced.stderr) == last_line(expected.stderr)
    report = run_etwtrace("report", cap, "--limit", "0")
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr
    if mode == "stack":
        return
    counts = call_counts(report.stdout)
    # down: depth + 1 calls, then (unless the RecursionError ended the
    # program) half as many again; through_c 101 at each bottom.
    bottoms = 1 if extra == ["uncaught"] else 2
    assert counts["down"] == depth + 1 + (depth // 2 + 1 if bottoms == 2 else 0)
    assert counts["at_the_bottom"] == bottoms
    assert counts["through_c"] == bottoms * 101
    assert not [line for line in report.stdout.splitlines()
                if line.startswith("note:") and "returns" in line], report.stdout


MARKED = """\
import threading

import etwtrace
from etwtrace import _etwtrace


def down(n):
    # list.sort keeps a few KiB of C stack per call: a few dozen calls
    # fill half of the thread's stack
    if n == 0:
        etwtrace._mark_stack("bottom")
        print("on the larger stack:", _etwtrace._on_larger_stack())
        return 0
    return sorted([n - 1], key=down)[0] + 1


def thread_main():
    print(down(20))


threading.stack_size(160 * 1024)
worker = threading.Thread(target=thread_main)
worker.start()
worker.join()
"""


def test_mark_stack_on_the_larger_stack_unwinds_to_the_thread(tmp_path):
    # The bottom of the recursion runs on the larger stack, and its marked
    # stack (the in-process unwinder's) still goes back through the switch
    # to the thread's own frames.
    script = tmp_path / "marked.py"
    script.write_text(MARKED)
    cap = tmp_path / "cap"
    proc = _run([sys.executable, "-m", "etwtrace", "--stack", "--capture", cap,
                 "--recorder", "builtin", "--", script])
    assert (proc.returncode, proc.stdout) == (0, "on the larger stack: True\n20\n"), proc.stderr
    folded = run_etwtrace("report", cap, "--format", "folded")
    assert folded.returncode == 0, folded.stderr
    stacks = [line.rsplit(" ", 1)[0].split(";") for line in folded.stdout.splitlines()]
    assert len(stacks) == 1, folded.stdout
    names = [frame.split(" (")[0] for frame in stacks[0]]
    assert names == ["thread_main"] + ["down"] * 21 + ["mark: bottom"], names


def test_recursion_past_the_larger_stack_is_a_recursion_error(tmp_path):
    # A limit no stack can hold (10 million): untraced, Python raises
    # RecursionError at it; traced, the hooks' stacks run out first, and
    # the frame raises RecursionError too, never a crash.
    script = tmp_path / "endless.py"
    script.write_text(
        "import sys\n"
        "sys.setrecursionlimit(10_000_000)\n"
        "def endless(n):\n"
        "    return endless(n + 1) + 1\n"
        "try:\n"
        "    endless(0)\n"
        "except RecursionError as ex:\n"
        "    print('RecursionError')\n"
        "print('after')\n")
    def small_address_space():
        # The larger stack is 1 GiB where it can be had; with 1 GiB of
        # address space in all, it is 256 MiB, which fills sooner.
        _main_stack()
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))

    under_asan = "libasan" in os.environ.get("LD_PRELOAD", "")  # ASan maps terabytes
    proc = subprocess.run([sys.executable, "-m", "etwtrace", "--instrumented", "--", str(script)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600,
                          preexec_fn=None if under_asan else small_address_space)
    assert (proc.returncode, proc.stdout) == (0, "RecursionError\nafter\n"), proc.stderr[-2000:]
