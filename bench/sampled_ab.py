"""What --sampled costs a program, measured inside one process: the program
runs its workload over and over while the sampler attaches and detaches
(--pid, --duration) in turns, and each run's time is compared between the
windows with and without the sampler.  One process, one memory layout:
this takes away the 3-4% that separate processes of the same program
differ by on this machine (docs/BENCHMARKS.md), which hides a 1-2% cost.

    python bench/sampled_ab.py --python /path/to/python3.13 [--cycles 6]
        [--window 3] [--workloads fib(27),richards,...]

The program runs on a CPU of its own (the last); the bench and the
sampler on the others.  Kinds of window take turns: none (no sampler),
floor (the sampler attached to another, idle Python: the program takes
the 999 Hz timer interrupts and a BPF run that returns at once, what any
perf-event sampler costs), sampled (the sampler attached to the program)
and, where perf is installed, perf (perf record -e cpu-clock -F 999 -p
PID, no call stacks: perf's own cheapest sampling, for reference).  Each
ratio is the median run time inside one kind of window over the median
inside the `none` ones (the first and last half second of
each window left out: attach, detach, and the sampler's start-up).  The
spread is the same ratio taken between `none` windows alone (odd against
even): what this machine gives with no sampler at all.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RATE = 999
EDGE = 0.5


def _attached(pid, window, capture):
    """Runs the sampler on process pid for `window` seconds; returns the
    part of that time it was attached, as (begin, end)."""
    sampler = subprocess.Popen(
        [sys.executable, "-m", "etwtrace", "--sampled", "--rate", str(RATE), "--pid",
         str(pid), "--duration", str(window), "--capture", capture],
        stderr=subprocess.PIPE, text=True)
    sampler.stderr.readline()       # "sampling process ...": attached
    start = time.monotonic()
    sampler.communicate(timeout=window + 120)
    return start, start + window


def _perf_window(pid, window, output):
    """perf's own sampling of process pid at RATE Hz (cpu-clock, no call
    stacks: its cheapest) for `window` seconds; returns (begin, end)."""
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(RATE), "-p",
                             str(pid), "-o", output], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.monotonic()
    time.sleep(window)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=120)
    return start, start + window


def measure(python, workload, cycles, window):
    """Ratios of the floor and sampled windows to the none windows, the
    spread between none windows, and the runs counted in each kind."""
    seconds = cycles * 4 * window + 2 * window
    idle = subprocess.Popen([python, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    # The program has a CPU of its own; the bench, the sampler and the
    # rest of the machine share the others.
    cpus = sorted(os.sched_getaffinity(0))
    program_cpu, others = cpus[-1], set(cpus[:-1]) or set(cpus)
    os.sched_setaffinity(0, others)
    proc = subprocess.Popen([python, os.path.join(HERE, "_ab_workload.py"), workload,
                             str(seconds), HERE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {program_cpu}))
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{workload}: workload did not start")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    windows = {"none": [], "floor": [], "sampled": []}
    if shutil.which("perf"):
        windows["perf"] = []
    with tempfile.TemporaryDirectory() as tmp:
        time.sleep(window)      # warm-up
        kinds = list(windows)
        for cycle in range(cycles):
            # Each cycle starts with the next kind: a drift of the machine
            # over the run weighs on every kind alike.
            for kind in kinds[cycle % len(kinds):] + kinds[:cycle % len(kinds)]:
                if kind == "none":
                    start = time.monotonic()
                    time.sleep(window)
                    windows[kind].append((start, time.monotonic()))
                elif kind == "perf":
                    windows[kind].append(_perf_window(proc.pid, window,
                                                      os.path.join(tmp, f"perf{cycle}.data")))
                else:
                    windows[kind].append(_attached(proc.pid if kind == "sampled" else idle.pid,
                                                   window, os.path.join(tmp, f"{kind}{cycle}")))
    idle.communicate()
    runs = [tuple(map(float, line.split())) for line in proc.communicate()[0].split("\n")
            if line.strip()]

    def inside(kind):
        return [end - begin for begin, end in runs
                if any(lo + EDGE <= begin and end <= hi - EDGE for lo, hi in kind)]

    base = statistics.median(inside(windows["none"]))
    spread = (statistics.median(inside(windows["none"][0::2]))
              / statistics.median(inside(windows["none"][1::2])))
    ratios = {k: statistics.median(inside(w)) / base for k, w in windows.items() if k != "none"}
    return ratios, spread, {k: len(inside(w)) for k, w in windows.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--workloads", default="fib(27),richards,deltablue,raytrace,nbody,"
                                                "float,go")
    opts = parser.parse_args()
    version = subprocess.run([opts.python, "-VV"], capture_output=True, text=True).stdout
    print(f"{version.strip()}; {opts.cycles} cycles of {opts.window:g} s windows of each "
          f"kind at {RATE} Hz, one process per workload")
    kinds = ["floor", "sampled"] + (["perf"] if shutil.which("perf") else [])
    print(f"{'workload':<14} " + " ".join(f"{k:>8}" for k in kinds)
          + f" {'spread':>8}   runs none/" + "/".join(kinds))
    for workload in opts.workloads.split(","):
        ratios, spread, counts = measure(opts.python, workload, opts.cycles, opts.window)
        print(f"{workload:<14} " + " ".join(f"{ratios[k]:>7.3f}x" for k in kinds)
              + f" {spread:>7.3f}x   " + "/".join(str(counts[k]) for k in ["none"] + kinds),
              flush=True)


if __name__ == "__main__":
    main()
