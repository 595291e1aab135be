"""report --async: samples and calls by asyncio task, and where tasks waited.

The program (scripts/async_tasks.py) has known tasks, chains and counts:
main-task gathers group (a TaskGroup running alpha and beta), sleepy,
gathered-1/-2 (renamed in their first step), canceller (which cancels
doomed while it sleeps); a thread runs side-main awaiting side-alpha; a
coroutine is driven by hand outside any task.
"""
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from conftest import (REQUIRE_PERF, SCRIPTS, need_perf, need_sampler_module, need_tool,
                      report_output, run_etwtrace)

pytestmark = pytest.mark.versioned

if sys.version_info < (3, 11):
    pytest.skip("asyncio tasks are followed on CPython 3.11+ (3.9 and 3.10 hand the "
                "tracer frame objects, not the coroutine's own frame)", allow_module_level=True)

STEPS = 7
SLEEP = 0.4
ALPHA = "task:main-task;task:group;task:alpha;cpu;top;mid;leaf;burn"
BETA = "task:main-task;task:group;task:beta;cpu;top;mid;leaf;burn"
SIDE = "task:side-main;task:side-alpha;cpu;top;mid;leaf;burn"


def record(tmp_path, mode, *options, burn=2000, name="c", program=()):
    """A capture of the program in `mode` (in tmp_path/name)."""
    path = tmp_path / name
    proc = run_etwtrace(f"--{mode}", "--capture", path, "--max-size", "500M", *options, "--",
                        SCRIPTS / "async_tasks.py", STEPS, burn, SLEEP, *program, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def timed_capture(tmp_path_factory):
    """One instrumented capture with call times, read by several tests."""
    return record(tmp_path_factory.mktemp("asyncio"), "instrumented")


def folded(path, *args):
    """{stack without files and lines: value} of a folded report."""
    out = Counter()
    for line in report_output(path, "--format", "folded", *args).splitlines():
        stack, value = line.rsplit(" ", 1)
        frames = [f.split(" (", 1)[0] for f in stack.split(";")]
        out[";".join(frames)] += int(value)
    return out


def ending(stacks, tail):
    """Sum of the stacks that end with `tail` (frames joined by ;)."""
    return sum(v for s, v in stacks.items() if s == tail or s.endswith(";" + tail))


def cpu_under_tasks(stacks):
    """(the stacks of the known program's CPU work, the samples of them
    under their whole task chain, all samples of them) of folded stacks."""
    in_cpu = {s: v for s, v in stacks.items() if ";cpu;top;mid;leaf;burn" in s}
    tasked = sum(v for s, v in in_cpu.items()
                 if "task:main-task;task:group;task:alpha;cpu;" in s
                 or "task:main-task;task:group;task:beta;cpu;" in s
                 or "task:side-main;task:side-alpha;cpu;" in s)
    return in_cpu, tasked, sum(in_cpu.values())


def test_instrumented_counts_calls_per_task(tmp_path):
    path = record(tmp_path, "instrumented", "--no-call-times")
    stacks = folded(path, "--async")
    assert ending(stacks, ALPHA) == STEPS
    assert ending(stacks, BETA) == STEPS
    assert ending(stacks, SIDE) == STEPS
    # Renamed in its first step: the step began as Task-N, the next one is
    # the new name's.
    for k in (1, 2):
        assert ending(stacks, f"task:main-task;task:gathered-{k};gathered;top;mid;leaf;burn") == 1
    # Driven by hand, outside any task: before the loop and in a callback.
    by_hand = {s: v for s, v in stacks.items() if s.endswith("by_hand;handmade;top;mid;leaf;burn")}
    assert sum(by_hand.values()) == 2
    assert not any("task:" in s for s in by_hand), by_hand
    # Task frames sit under the loop's frames, which run them.
    alpha = [s for s in stacks if s.endswith(ALPHA)]
    assert alpha and all(s.split(";")[0] == "<module>" for s in alpha), alpha

    # Without --async the same calls, and no task frame.
    plain = folded(path)
    assert not any("task:" in s for s in plain)
    assert ending(plain, "cpu;top;mid;leaf;burn") == 3 * STEPS
    # Every call is kept (a path ending in a task frame counts its steps).
    assert sum(plain.values()) == sum(v for s, v in stacks.items()
                                      if not s.split(";")[-1].startswith("task:"))


def test_instrumented_says_where_tasks_waited(timed_capture):
    path = timed_capture
    waits = folded(path, "--async", "--off-cpu")
    slept = ending(waits, "task:main-task;task:sleepy;sleepy;waiter;sleep")
    assert 0.8 * SLEEP * 1e9 <= slept <= 1.2 * SLEEP * 1e9, waits
    # Cancelled while it slept: it waited until canceller's 50 ms were up.
    doomed = ending(waits, "task:doomed;doomed;sleep")
    assert 0.03e9 <= doomed <= 1e9, waits
    # The text report lists the task frames among Python frames.
    text = report_output(path, "--async", "--off-cpu")
    assert "task:sleepy > sleepy" in text


def test_babeltrace2_reads_task_events(tmp_path):
    need_tool("babeltrace2")
    path = record(tmp_path, "stack", "--recorder", "builtin")
    proc = subprocess.run(["babeltrace2", str(path / "ctf")], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    resumes = proc.stdout.count("PythonTask.resume:")
    suspends = proc.stdout.count("PythonTask.suspend:")
    # alpha, beta and side-alpha wait STEPS times each, at least.
    assert suspends >= 3 * STEPS and resumes >= suspends, (resumes, suspends)


@pytest.mark.parametrize("fmt", ["text", "svg", "speedscope", "chrome", "pprof"])
def test_every_format_takes_async(timed_capture, tmp_path, fmt):
    path = timed_capture
    out = tmp_path / f"out.{fmt}"
    proc = run_etwtrace("report", path, "--async", "--limit", "0", "--format", fmt, "-o", out)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    if fmt == "pprof":
        import gzip
        data = gzip.decompress(data)
    assert b"task:alpha" in data and b"task:main-task" in data
    if fmt == "speedscope":
        # A track per task and thread: alpha's own steps on alpha's.
        doc = json.loads(data)
        names = [f["name"] for f in doc["shared"]["frames"]]
        (alpha,) = [p for p in doc["profiles"] if " task:alpha (on " in p["name"]]
        opened = [names[e["frame"]] for e in alpha["events"] if e["type"] == "O"]
        assert opened[:3] == ["task:main-task", "task:group", "task:alpha"], opened[:5]
        assert opened.count("burn") == STEPS, opened
        assert any(" task:side-alpha (on " in p["name"] for p in doc["profiles"])


def test_stack_mode_samples_carry_their_task(tmp_path):
    """perf's samples of alpha's and beta's CPU work have their task
    frames (native frames the trampolines make), with the tasks awaiting
    them above."""
    need_perf()
    path = record(tmp_path, "stack", "--recorder", "perf", burn=200000)
    in_cpu, tasked, total = cpu_under_tasks(folded(path, "--async"))
    assert total >= 50, in_cpu
    assert tasked >= 0.9 * total, (tasked, total)
    # Native frames are kept under the Python ones.
    assert any(s.split(";")[-1].endswith("]") for s in in_cpu), list(in_cpu)[:5]
    plain = folded(path)
    assert not any("task:" in s for s in plain)


def test_sampled_samples_carry_their_task(tmp_path):
    """--sampled reads the thread's running task at each sample (the
    offsets asyncio's C module publishes, 3.14+), and the tasks awaiting
    it from memory: alpha's and beta's CPU work is under its task frames."""
    if sys.version_info < (3, 14):
        pytest.skip("--sampled finds the running task through asyncio's debug offsets (3.14+)")
    need_sampler_module()
    if os.geteuid() != 0:
        if REQUIRE_PERF:
            pytest.fail("--sampled must run here (ETWTRACE_REQUIRE_PERF=1): it needs root")
        pytest.skip("--sampled needs root")
    path = record(tmp_path, "sampled", burn=200000)
    in_cpu, tasked, total = cpu_under_tasks(folded(path, "--async"))
    assert total >= 50, in_cpu
    assert tasked >= 0.9 * total, (tasked, total, sorted(in_cpu.items(), key=lambda i: -i[1])[:4])
    assert not any("task:" in s for s in folded(path))


def test_a_program_with_no_tasks_says_so(tmp_path):
    path = tmp_path / "c"
    proc = run_etwtrace("--instrumented", "--capture", path, "--", SCRIPTS / "calls.py", "3")
    assert proc.returncode == 0, proc.stderr
    proc = run_etwtrace("report", path, "--async", "--format", "folded")
    assert proc.returncode == 0 and "holds no asyncio task" in proc.stderr
    proc = run_etwtrace("report", path, "--async", "--off-cpu")
    assert proc.returncode == 1 and "no asyncio task waited" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_uvloop(tmp_path):
    if importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed for this Python (PyPI has no build of it here)")
    path = record(tmp_path, "instrumented", "--no-call-times", program=("uvloop",))
    stacks = folded(path, "--async")
    assert ending(stacks, ALPHA) == STEPS
    assert ending(stacks, BETA) == STEPS
    assert ending(stacks, SIDE) == STEPS
