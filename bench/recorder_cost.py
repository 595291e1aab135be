"""Where instrumented mode's time goes, per call of fib (issue #3): the
eval hook, the tracer's bookkeeping, the clock reads and the rest of the
recorder, measured side by side in one run.

    python3 bench/recorder_cost.py [--rounds 5] [--repeat 7] [--against REV]

It builds two copies of the extension from this tree: the real one, and one
compiled with ETWTRACE_BENCH_NO_CLOCK, whose clock is a counter (no TSC
read); with --against, a third from git revision REV, whose capture runs
beside this tree's.  Each configuration runs fib(27) in its own process,
interleaved over rounds; a configuration's time is its best run.  The
capture with a budget (ETWTRACE_MAX_SIZE, never reached) shows what the
per-packet claim and free-space check cost (issue 22).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from stack_overhead import build_noop_hook  # noqa: E402

CALLS = 635_621   # calls of fib(27), counted by a capture
WORKER = r"""
import os, sys, time
sys.path[:0] = [p for p in os.environ.get("BENCH_PATH", "").split(os.pathsep) if p]
config, repeat = sys.argv[1], int(sys.argv[2])
sys.setrecursionlimit(10000)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
tracer = None
if config == "noop_hook":
    import noop_hook
    noop_hook.enable()
elif config != "none":
    import etwtrace
    tracer = etwtrace.InstrumentedTracer()
    tracer.enable()
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    fib(27)
    best = min(best, time.perf_counter() - t0)
if tracer is not None:
    tracer.disable()
print(best)
"""


def build_copy(target, cflags, rev=None):
    src = os.path.join(target, "src")
    if rev is None:
        shutil.copytree(os.path.join(ROOT, "src"), src)
        shutil.copy(os.path.join(ROOT, "setup.py"), target)
        shutil.copy(os.path.join(ROOT, "pyproject.toml"), target)
    else:
        os.makedirs(target)
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "src", "setup.py",
                                  "pyproject.toml"], check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    env = dict(os.environ, ETWTRACE_CFLAGS=cflags)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", src,
                    "--build-temp", os.path.join(target, "tmp")],
                   cwd=target, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return src


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--against", metavar="REV",
                        help="also time a capture with the extension of git revision REV")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="etwtrace-recorder-cost-")
    try:
        hook_dir = os.path.join(work, "hook")
        build_noop_hook(hook_dir)
        real = build_copy(os.path.join(work, "real"), "")
        no_clock = build_copy(os.path.join(work, "noclock"), "-DETWTRACE_BENCH_NO_CLOCK")
        script = os.path.join(work, "worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        captures = os.path.join(work, "captures")
        # (label, worker config, extension copy, capture?: True, or its
        # ETWTRACE_MAX_SIZE)
        configs = [("no tracing", "none", real, False),
                   ("eval hook floor", "noop_hook", real, False),
                   ("etwtrace, no capture", "etwtrace", real, False),
                   ("etwtrace + capture, clock a counter", "etwtrace", no_clock, True),
                   ("etwtrace + capture", "etwtrace", real, True),
                   ("etwtrace + capture with a budget", "etwtrace", real, "1T")]
        if args.against:
            older = build_copy(os.path.join(work, "against"), "", args.against)
            configs.append((f"etwtrace + capture at {args.against}", "etwtrace", older, True))
        best = {c[0]: float("inf") for c in configs}
        for r in range(args.rounds):
            for label, config, path, capture in configs:
                env = dict(os.environ, BENCH_PATH=os.pathsep.join([path, hook_dir]))
                env.pop("ETWTRACE_CAPTURE", None)
                env.pop("ETWTRACE_MAX_SIZE", None)
                if isinstance(capture, str):
                    env["ETWTRACE_MAX_SIZE"] = capture
                if capture:
                    os.makedirs(captures, exist_ok=True)
                    env["ETWTRACE_CAPTURE"] = os.path.join(captures, f"{r}-{config}-{len(path)}")
                out = subprocess.run([sys.executable, script, config, str(args.repeat)], env=env,
                                     check=True, stdout=subprocess.PIPE, encoding="utf-8").stdout
                best[label] = min(best[label], float(out))
                shutil.rmtree(captures, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ns = {k: v / CALLS * 1e9 for k, v in best.items()}
    base = ns["no tracing"]
    print(f"Python {sys.version.split()[0]}; fib(27), {CALLS:,} calls; best of {args.rounds} "
          f"rounds x {args.repeat} runs\n")
    print("| configuration | ns per call | time / no tracing | time / eval hook floor |")
    print("|---|---|---|---|")
    for label, _, _, _ in configs:
        print(f"| {label} | {ns[label]:.1f} | {ns[label] / base:.2f} "
              f"| {ns[label] / ns['eval hook floor']:.2f} |")
    per_event = lambda a, b: (ns[a] - ns[b]) / 2  # noqa: E731  (a push and a pop per call)
    print("\nPer push/pop event:\n")
    print(f"- recorder in all: {per_event('etwtrace + capture', 'etwtrace, no capture'):.1f} ns")
    print(f"- of which the clock read: {per_event('etwtrace + capture', 'etwtrace + capture, clock a counter'):.1f} ns")
    print(f"- the rest (encoding, packets): "
          f"{per_event('etwtrace + capture, clock a counter', 'etwtrace, no capture'):.1f} ns")
    print(f"- the tracer's bookkeeping beyond the eval hook: "
          f"{per_event('etwtrace, no capture', 'eval hook floor'):.1f} ns")
    print(f"- a budget (claims per packet): "
          f"{per_event('etwtrace + capture with a budget', 'etwtrace + capture'):+.1f} ns")
    if args.against:
        print(f"- this tree against {args.against}: "
              f"{per_event('etwtrace + capture', f'etwtrace + capture at {args.against}'):+.1f} ns")


if __name__ == "__main__":
    main()
