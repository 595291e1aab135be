"""Instrumented mode against cProfile the way issue 27 judges it: whole
processes, start-up cancelled, best of N (docs/BENCHMARKS.md).

Each configuration runs `fib(N)` in a process of its own, and again with
fib(0); the difference is the time of fib(N) under it, start-up and
shutdown (a capture's end included) taken out.  Configurations, in turn
within each round:

  none          python fib.py N
  cprofile      python -m cProfile -o /dev/null fib.py N
  capture       python -m etwtrace --instrumented --recorder builtin --capture DIR -- fib.py N
  no_call_times the same with --no-call-times
  pep523_floor  a no-op PEP 523 hook (bench/noop_hook.c) around fib
  monitoring_floor  no-op sys.monitoring callbacks for every Python call event (3.12+)

Printed: each configuration's seconds, and its overhead (its time less
none's) as a share of cProfile's.  The floors are built here with the
Python's headers (gcc); they are left out, with a note, where that fails.

    python bench/whole_process.py [--n 31] [--rounds 7]
"""
import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIB = """import sys
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
n = int(sys.argv[1])
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])
    import noop_hook
    getattr(noop_hook, sys.argv[3])()
fib(n)
"""


def build_floors(work):
    """The directory holding noop_hook built for this Python, or None."""
    target = os.path.join(work, "noop_hook" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-std=gnu11", "-I", sysconfig.get_paths()["include"],
           os.path.join(HERE, "noop_hook.c"), "-o", target]
    if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        print("note: the floors are left out (noop_hook.c did not build here)")
        return None
    return work


def command(config, n, fib, capture, floors):
    py = sys.executable
    if config == "none":
        return [py, fib, n]
    if config == "cprofile":
        return [py, "-m", "cProfile", "-o", os.devnull, fib, n]
    if config in ("capture", "no_call_times"):
        extra = ["--no-call-times"] if config == "no_call_times" else []
        return [py, "-m", "etwtrace", "--instrumented", *extra, "--recorder", "builtin",
                "--capture", capture, "--", fib, n]
    enable = {"pep523_floor": "enable", "monitoring_floor": "enable_monitoring"}[config]
    return [py, fib, n, floors, enable]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=31)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="etwtrace-whole-")
    try:
        fib = os.path.join(work, "fib.py")
        with open(fib, "w") as f:
            f.write(FIB)
        capture = os.path.join(work, "capture")
        floors = build_floors(work)
        configs = ["none", "cprofile", "capture", "no_call_times"]
        if floors:
            configs.append("pep523_floor")
            if sys.version_info >= (3, 12):
                configs.append("monitoring_floor")
        best = {}
        for _ in range(args.rounds):
            for config in configs:
                for n in (str(args.n), "0"):
                    shutil.rmtree(capture, ignore_errors=True)
                    start = time.perf_counter()
                    subprocess.run(command(config, n, fib, capture, floors), check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    took = time.perf_counter() - start
                    best[config, n] = min(best.get((config, n), took), took)
        net = {c: best[c, str(args.n)] - best[c, "0"] for c in configs}
        jit = os.environ.get("PYTHON_JIT", "")
        print(f"Python {sys.version.split()[0]}{' PYTHON_JIT=' + jit if jit else ''}; "
              f"fib({args.n}) whole process, start-up cancelled, best of {args.rounds}")
        print("| configuration | s | overhead / cProfile's |")
        print("|---|---|---|")
        cprofile = net["cprofile"] - net["none"]
        for c in configs:
            share = "" if c == "none" else f"{(net[c] - net['none']) / cprofile:.3f}"
            print(f"| {c} | {net[c]:.3f} | {share} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
