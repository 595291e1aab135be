"""What following asyncio tasks costs (issue 24), side by side in one run.

Two builds of etwtrace run the same programs: this tree's (tasks followed)
and the one at --before REV (a commit before tasks were followed), each in
its own venv.  Programs: 1,000 asyncio tasks stepping through
asyncio.sleep(0), with steps of about 1.6 us (asyncio's least) and of
about 15 us (the case the issue bounds: at most 5% added to stack and to
instrumented mode), and fib, which uses no coroutine (what a program
without asyncio pays: nothing).

Each configuration runs in its own process, interleaved over the rounds;
its time is the best of its runs, timed by the program around its work
(a capture's start and end are not the program's cost).

    python3 bench/asyncio_tasks.py [--before be65a9d] [--rounds 5]
"""
import argparse
import os
from statistics import median
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)

TASKS = """
import asyncio
def work(n):
    s = 0
    for i in range(n):
        s += i
    return s
async def worker():
    for _ in range(STEPS):
        work(WORK)
        await asyncio.sleep(0)
async def main():
    await asyncio.gather(*(worker() for _ in range(1000)))
import time
start = time.perf_counter()
asyncio.run(main())
print(time.perf_counter() - start)
"""
# Steps of about 1.6 us (the least a step of asyncio's loop costs here) and
# of about 15 us (a step that does some work, as a request handler's).
LEAN = TASKS.replace("STEPS", "200").replace("WORK", "20")
WORKING = TASKS.replace("STEPS", "100").replace("WORK", "400")

FIB = """
import time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
start = time.perf_counter()
fib(30)
print(time.perf_counter() - start)
"""

MODES = {
    "none": None,
    "stack": ["--stack", "--recorder", "builtin"],
    "instrumented": ["--instrumented", "--recorder", "builtin"],
}


def make_venv(where, source):
    subprocess.run([sys.executable, "-m", "venv", where], check=True)
    subprocess.run([os.path.join(where, "bin", "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", source], check=True)
    return os.path.join(where, "bin", "python")


def before_tree(rev, where):
    """A copy of the tree at `rev` (git archive), to build."""
    os.makedirs(where)
    archive = subprocess.run(["git", "-C", TREE, "archive", rev], check=True,
                             stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    return where


def run_once(python, mode, program, scratch):
    script = os.path.join(scratch, "program.py")
    capture = os.path.join(scratch, "capture")
    subprocess.run(["rm", "-rf", capture], check=True)
    if MODES[mode] is None:
        cmd = [python, script]
    else:
        cmd = [python, "-m", "etwtrace", *MODES[mode], "--capture", capture,
               "--max-size", "2G", "--", script]
    with open(script, "w") as f:
        f.write(program)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         timeout=600, encoding="utf-8").stdout
    return float(out.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="be65a9d",
                        help="the commit to compare with (default: be65a9d)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="etwtrace-bench-async-") as tmp:
        pythons = {
            "after": make_venv(os.path.join(tmp, "after"), TREE),
            "before": make_venv(os.path.join(tmp, "before"),
                                before_tree(args.before, os.path.join(tmp, "src"))),
        }
        scratch = os.path.join(tmp, "run")
        os.makedirs(scratch)
        programs = {"1000 tasks, 1.6 us steps": LEAN, "1000 tasks, 15 us steps": WORKING,
                    "fib(30)": FIB}
        times = {}
        for _ in range(args.rounds):
            for pname, program in programs.items():
                for mode in MODES:
                    for build, python in pythons.items():
                        if mode == "none" and build == "before":
                            continue
                        t = run_once(python, mode, program, scratch)
                        times.setdefault((pname, mode, build), []).append(t)
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds; this tree against "
          f"{args.before}; seconds, best (median)\n")
    print("| program | mode | before | after | after / before, best (median) | "
          "over no tracing, before | after |")
    print("|---|---|---|---|---|---|---|")
    for pname in programs:
        none = min(times[(pname, "none", "after")])
        for mode in ("stack", "instrumented"):
            b, a = times[(pname, mode, "before")], times[(pname, mode, "after")]
            print(f"| {pname} | {mode} | {min(b):.3f} ({median(b):.3f}) | "
                  f"{min(a):.3f} ({median(a):.3f}) | {min(a) / min(b):.3f} "
                  f"({median(a) / median(b):.3f}) | {min(b) / none:.2f} | {min(a) / none:.2f} |")

if __name__ == "__main__":
    main()
