"""Stack-mode overhead, side by side in one run.

Each configuration runs in its own process, interleaved over several rounds;
a configuration's time is the best of its runs.  Ratios are against no
tracing and against the floor (a no-op PEP 523 hook).

    python3 bench/stack_overhead.py [--rounds 3] [--repeat 5] [--workloads fib(25),richards]
                                    [--cpython-perf] [--before PYTHON]

--cpython-perf (3.12+) adds CPython's own perf support in the same run:
`-X perf` (perf map trampolines, 3.12+) and `-X perf_jit` (jitdump, 3.13+).
--before PYTHON adds stack mode as another install of etwtrace has it (a
venv of an earlier commit, of the same Python), interleaved in the same
rounds: before and after side by side.
"""
import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ["none", "noop_hook", "etwtrace", "etwtrace_capture"]


def build_noop_hook(build_dir):
    os.makedirs(build_dir, exist_ok=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = os.path.join(build_dir, "noop_hook" + suffix)
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-std=gnu11", "-I", sysconfig.get_paths()["include"],
           os.path.join(HERE, "noop_hook.c"), "-o", target]
    subprocess.run(cmd, check=True)


# CPython's own perf support: interpreter options, no tracer in the worker.
X_OPTIONS = {"x_perf": ["-X", "perf"], "x_perf_jit": ["-X", "perf_jit"]}


BEFORE = "@before"
before_python = None    # --before


def run(config, workload, repeat, build_dir, capture_root):
    capture = os.path.join(capture_root, f"{config}-{abs(hash(workload))}")
    shutil.rmtree(capture, ignore_errors=True)
    options = X_OPTIONS.get(config, [])
    python = sys.executable
    if config.endswith(BEFORE):
        python, config = before_python, config[:-len(BEFORE)]
    out = subprocess.run(
        [python, *options, os.path.join(HERE, "_worker.py"),
         "none" if options else config, workload, str(repeat), build_dir, capture],
        check=True, stdout=subprocess.PIPE, encoding="utf-8")
    return float(out.stdout.strip().splitlines()[-1])


def measure(configs, names, rounds, repeat, build_dir):
    """{(workload, config): best seconds}, configurations interleaved over
    rounds so that drifts in the machine's speed hit them all alike."""
    capture_root = tempfile.mkdtemp(prefix="etwtrace-bench-")
    best = {(w, c): float("inf") for w in names for c in configs}
    for _ in range(rounds):
        for w in names:
            for c in configs:
                best[w, c] = min(best[w, c], run(c, w, repeat, build_dir, capture_root))
    shutil.rmtree(capture_root, ignore_errors=True)
    return best


def main():
    sys.path.insert(0, HERE)
    import workloads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(workloads.WORKLOADS))
    parser.add_argument("--cpython-perf", action="store_true",
                        help="also -X perf (3.12+) and -X perf_jit (3.13+)")
    parser.add_argument("--before", metavar="PYTHON",
                        help="also stack mode with this interpreter's etwtrace (an earlier "
                             "commit's venv)")
    args = parser.parse_args()
    global before_python
    before_python = args.before
    configs = list(CONFIGS)
    if args.cpython_perf:
        if sys.version_info < (3, 12):
            parser.error("--cpython-perf needs Python 3.12 or later")
        configs += ["x_perf"] + (["x_perf_jit"] if sys.version_info >= (3, 13) else [])
    if args.before:
        configs += ["etwtrace" + BEFORE, "etwtrace_capture" + BEFORE]
    build_dir = os.path.join(tempfile.gettempdir(), "etwtrace-bench-build")
    build_noop_hook(build_dir)
    names = args.workloads.split(",")
    best = measure(configs, names, args.rounds, args.repeat, build_dir)
    print(f"Python {sys.version.split()[0]}; best of {args.rounds} rounds x {args.repeat} runs\n")
    if args.before:
        print("| workload | no tracing (s) | no-op hook (floor) | stack, before / floor | "
              "stack, after / floor | stack + capture, before / floor | "
              "stack + capture, after / floor |")
        print("|---" * 7 + "|")
        for w in names:
            floor = best[w, "noop_hook"]
            print(f"| {w} | {best[w, 'none']:.4f} | {floor / best[w, 'none']:.3f} | "
                  f"{best[w, 'etwtrace' + BEFORE] / floor:.3f} | {best[w, 'etwtrace'] / floor:.3f} | "
                  f"{best[w, 'etwtrace_capture' + BEFORE] / floor:.3f} | "
                  f"{best[w, 'etwtrace_capture'] / floor:.3f} |")
        return
    extra = configs[len(CONFIGS):]
    names_of = {"x_perf": "-X perf", "x_perf_jit": "-X perf_jit"}
    print("| workload | no tracing (s) | no-op hook (floor) | etwtrace stack | etwtrace stack + capture | "
          + "".join(f"{names_of[c]} | " for c in extra)
          + "etwtrace / floor | capture / floor |"
          + "".join(f" etwtrace / {names_of[c]} |" for c in extra))
    print("|---" * (7 + 2 * len(extra)) + "|")
    for w in names:
        base = best[w, "none"]
        floor = best[w, "noop_hook"]
        et = best[w, "etwtrace"]
        cap = best[w, "etwtrace_capture"]
        print(f"| {w} | {base:.4f} | {floor / base:.3f} | {et / base:.3f} | {cap / base:.3f} | "
              + "".join(f"{best[w, c] / base:.3f} | " for c in extra)
              + f"{et / floor:.3f} | {cap / floor:.3f} |"
              + "".join(f" {et / best[w, c]:.3f} |" for c in extra))


if __name__ == "__main__":
    main()
