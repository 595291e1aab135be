"""Instrumented-mode overhead against the floors and the peers, side by side
in one run (issue #3).

Each configuration runs in its own process, interleaved over several rounds;
a configuration's time is the best of its runs.  Overheads are time over no
tracing; the ratios compare those overheads.

    python3 -m pip install . pyperformance yappi viztracer pyinstrument
    python3 bench/instrumented_overhead.py [--rounds 3] [--repeat 5] [--workloads fib(27),richards]
                                           [--no-peers]

On 3.12+ C calls are measured both through sys.monitoring (etwtrace's
default there) and through the legacy profile function, and the floor of
sys.monitoring (no-op C callbacks for every Python call event) is measured
beside the PEP 523 hook's.  --no-peers leaves
out yappi, viztracer and pyinstrument (when they are not installed).

Also prints the recorder's bytes per push/pop from a capture of fib(27).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from stack_overhead import build_noop_hook, measure  # noqa: E402

CONFIGS = ["none", "noop_hook", "noop_profile", "etwtrace_instr", "etwtrace_instr_capture",
           "etwtrace_instr_untimed_capture", "etwtrace_instr_c_capture", "cprofile", "yappi", "viztracer", "pyinstrument"]
# 3.12+: C calls through the profile function instead of sys.monitoring.
PROFILE_HOOK = "etwtrace_instr_c_profilehook_capture"
LABELS = {
    "noop_hook": "eval hook floor", "noop_profile": "profile hook floor",
    "noop_monitoring": "sys.monitoring floor",
    "etwtrace_instr": "etwtrace", "etwtrace_instr_capture": "etwtrace+capture",
    "etwtrace_instr_untimed_capture": "etwtrace+capture, no call times",
    "etwtrace_instr_c_capture": "etwtrace+C calls+capture", "cprofile": "cProfile",
    PROFILE_HOOK: "etwtrace+C calls (profile hook)+capture",
    "yappi": "yappi", "viztracer": "viztracer", "pyinstrument": "pyinstrument",
}


def _content_bytes(stream):
    """Bytes of a stream's packets up to their content's end (no padding)."""
    import struct
    head = struct.Struct("<IIQQQQQI")
    total = offset = 0
    with open(stream, "rb") as f:
        data = f.read()
    while offset + head.size <= len(data):
        fields = head.unpack_from(data, offset)
        total += fields[4] // 8
        offset += fields[5] // 8
    return total


def bytes_per_event():
    """Trace bytes (packet headers included) per push/pop, fib(27) recorded
    without C calls."""
    root = tempfile.mkdtemp(prefix="etwtrace-bench-bytes-")
    try:
        script = os.path.join(root, "fib_workload.py")
        with open(script, "w") as f:
            f.write("import sys\nsys.path.insert(0, %r)\nimport workloads\n"
                    "workloads.WORKLOADS['fib(27)']()()\n" % HERE)
        capture = os.path.join(root, "cap")
        subprocess.run([sys.executable, "-m", "etwtrace", "--instrumented", "--capture", capture,
                        "--recorder", "builtin", "--", script],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from etwtrace import _ctfdecode
        streams = glob.glob(os.path.join(capture, "ctf", "*", "stream-*"))
        size = sum(_content_bytes(p) for p in streams)
        calls = sum(_ctfdecode.fold(p)["calls"] for p in streams)
        return size / (2 * calls), calls
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ratio(over, config, base):
    return f"{over[config] / base:.2f}" if config in over else "-"


def main():
    import workloads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workloads", default="fib(27),method_calls,richards,deltablue,raytrace,go")
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    global CONFIGS
    if args.no_peers:
        CONFIGS = [c for c in CONFIGS if c not in ("yappi", "viztracer", "pyinstrument")]
    if sys.version_info >= (3, 12):
        # The two routes' floors side by side (issue 27): a no-op PEP 523
        # hook and no-op sys.monitoring callbacks in C for every Python
        # start, resume, return, yield, unwind and throw.
        CONFIGS = CONFIGS[:3] + ["noop_monitoring"] + CONFIGS[3:] + [PROFILE_HOOK]
    build_dir = os.path.join(tempfile.gettempdir(), "etwtrace-bench-build")
    build_noop_hook(build_dir)
    names = args.workloads.split(",")
    for w in names:
        workloads.WORKLOADS[w]   # unknown names fail before the long run
    best = measure(CONFIGS, names, args.rounds, args.repeat, build_dir)
    print(f"Python {sys.version.split()[0]}; best of {args.rounds} rounds x {args.repeat} runs\n")
    shown = CONFIGS[1:]
    print("Time over no tracing:\n")
    print("| workload | no tracing (s) | " + " | ".join(LABELS[c] for c in shown) + " |")
    print("|---" * (2 + len(shown)) + "|")
    for w in names:
        base = best[w, "none"]
        print(f"| {w} | {base:.4f} | " + " | ".join(f"{best[w, c] / base:.2f}" for c in shown) + " |")
    print("\nOverhead ratios (overhead = time - no tracing):\n")
    print("| workload | etwtrace / cProfile | etwtrace+capture / cProfile "
          "| no call times / cProfile | +C calls / cProfile "
          "| capture / eval floor (time) | no call times / eval floor (time) "
          "| capture / profile floor (overhead) | yappi / cProfile "
          "| viztracer / cProfile |" + (" C calls: monitoring / profile hook |" if PROFILE_HOOK in CONFIGS else ""))
    print("|---" * (10 + (PROFILE_HOOK in CONFIGS)) + "|")
    for w in names:
        base = best[w, "none"]
        over = {c: best[w, c] - base for c in CONFIGS}
        cp = over["cprofile"]
        untimed = "etwtrace_instr_untimed_capture"
        print(f"| {w} | {over['etwtrace_instr'] / cp:.2f} | {over['etwtrace_instr_capture'] / cp:.2f} "
              f"| {over[untimed] / cp:.2f} | {over['etwtrace_instr_c_capture'] / cp:.2f} "
              f"| {best[w, 'etwtrace_instr_capture'] / best[w, 'noop_hook']:.2f} "
              f"| {best[w, untimed] / best[w, 'noop_hook']:.2f} "
              f"| {over['etwtrace_instr_capture'] / over['noop_profile']:.2f} "
              f"| {_ratio(over, 'yappi', cp)} | {_ratio(over, 'viztracer', cp)} |"
              + (f" {over['etwtrace_instr_c_capture'] / over[PROFILE_HOOK]:.2f} |"
                 if PROFILE_HOOK in CONFIGS else ""))
    if "noop_monitoring" in CONFIGS:
        print("\nThe floors of the two routes to every Python call (time over no tracing; "
              "overhead as a share of cProfile's):\n")
        print("| workload | PEP 523 floor | sys.monitoring floor | PEP 523 floor / cProfile "
              "| sys.monitoring floor / cProfile |")
        print("|---" * 5 + "|")
        for w in names:
            base = best[w, "none"]
            cp = best[w, "cprofile"] - base
            print(f"| {w} | {best[w, 'noop_hook'] / base:.2f} | {best[w, 'noop_monitoring'] / base:.2f} "
                  f"| {(best[w, 'noop_hook'] - base) / cp:.2f} "
                  f"| {(best[w, 'noop_monitoring'] - base) / cp:.2f} |")
    per_event, calls = bytes_per_event()
    print(f"\nRecorder: {per_event:.2f} bytes per push/pop ({calls:,} calls of fib(27)).")


if __name__ == "__main__":
    main()
