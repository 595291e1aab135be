"""What a PEP 523 eval hook does to CPython's JIT (3.14+, issue #6): does
tier 2 still run hot loops under etwtrace, and what does the JIT gain
there?  For each configuration, a loop-heavy workload (a hot loop in one
function) and a call-heavy one (fib) run with PYTHON_JIT=0 and =1, each in
its own process, interleaved over rounds; a time is the best of the runs.
(sys._jit.is_active() asked from inside the loop said False even without
any hook on 3.15.2, so the JIT's effect is read from the times.)

    python3.15 bench/jit_effect.py [--rounds 5] [--repeat 7]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from stack_overhead import build_noop_hook  # noqa: E402

CONFIGS = {
    "no tracing": "none",
    "no-op hook (floor)": "noop_hook",
    "etwtrace stack": "stack",
    "etwtrace instrumented + capture": "instrumented",
}

WORKER = r"""
import os, sys, time
config, workload, repeat, build_dir, capture = sys.argv[1:6]
if config == "noop_hook":
    sys.path.insert(0, build_dir)
    import noop_hook
    noop_hook.enable()
elif config != "none":
    import etwtrace
    if config == "instrumented":
        os.environ["ETWTRACE_CAPTURE"] = capture
        etwtrace.InstrumentedTracer().enable()
    else:
        etwtrace.StackSamplingTracer().enable()

def hot_loop(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def run():
    if workload == "hot_loop":
        hot_loop(2_000_000)
    else:
        fib(25)

run()
run()
best = float("inf")
for _ in range(int(repeat)):
    t0 = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t0)
print(best)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    jit = getattr(sys, "_jit", None)
    if jit is None or not jit.is_available():
        sys.exit(f"Python {sys.version.split()[0]} has no JIT (3.14+ built with it)")
    work = tempfile.mkdtemp(prefix="etwtrace-jit-bench-")
    try:
        build_noop_hook(work)
        script = os.path.join(work, "worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        best = {}
        for _ in range(args.rounds):
            for workload in ("hot_loop", "fib"):
                for label, config in CONFIGS.items():
                    for on in ("0", "1"):
                        capture = os.path.join(work, "capture")
                        shutil.rmtree(capture, ignore_errors=True)
                        out = subprocess.run(
                            [sys.executable, script, config, workload, str(args.repeat), work,
                             capture], env=dict(os.environ, PYTHON_JIT=on), check=True,
                            stdout=subprocess.PIPE, encoding="utf-8").stdout
                        key = (workload, label, on)
                        best[key] = min(best.get(key, float("inf")), float(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}; best of {args.rounds} rounds x {args.repeat} runs\n")
    print("| workload | configuration | JIT off (ms) | JIT on (ms) | on / off |")
    print("|---|---|---|---|---|")
    for workload in ("hot_loop", "fib"):
        for label in CONFIGS:
            off, on = best[workload, label, "0"], best[workload, label, "1"]
            print(f"| {workload} | {label} | {off * 1e3:.2f} | {on * 1e3:.2f} | {on / off:.3f} |")


if __name__ == "__main__":
    main()
