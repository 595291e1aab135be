"""What --sampled costs a program, side by side in one run (docs/BENCHMARKS.md).

Each workload (workloads.py) runs in its own process of a CPython 3.13+,
interleaved over rounds; its time is the best of its runs inside the
process over `--seconds` (after the sampler attached).  Configurations:

  none        untraced
  sampled     python -m etwtrace --sampled --pid PID at 999 Hz (BPF)
  stack+perf  python -m etwtrace --stack --capture (stack mode, perf at 999 Hz)
  py-spy      py-spy record --rate 999 --pid PID (its default, blocking mode)

Also the sampler's own CPU time (user + system, from /proc) while the
program ran, as a share of one core: from attach, and in steady state
(--steady seconds per workload, after 3 s), with the BPF program's own
time per run in that window (kernel.bpf_stats_enabled, switched on for
it; the program's fdinfo).

    python bench/sampled_cost.py --python /path/to/python3.13 [--rounds 3]
        [--workloads fib(27),richards,deltablue,raytrace,nbody,float,go] [--steady 20]

The Python given needs etwtrace installed for stack+perf, pyperformance for
its scripts, and py-spy on PATH for py-spy (each configuration is skipped
with a note when it cannot run).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RATE = 999


def _start(python, workload, seconds):
    proc = subprocess.Popen([python, os.path.join(HERE, "_sampled_workload.py"),
                             workload, str(seconds), HERE],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"{workload}: workload did not start")
    return proc


def _finish(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out = proc.stdout.readline()
    proc.wait()
    return float(out)


def run_none(python, workload, seconds, tmp):
    return _finish(_start(python, workload, seconds)), None


def run_sampled(python, workload, seconds, tmp, keep=None):
    proc = _start(python, workload, seconds)
    cap = keep or os.path.join(tmp, "sampled")
    sampler = subprocess.Popen([sys.executable, "-m", "etwtrace", "--sampled", "--pid",
                                str(proc.pid), "--duration", "600", "--capture", cap],
                               stderr=subprocess.PIPE, text=True)
    sampler.stderr.readline()       # "sampling process ..." : attached
    started, cpu_before = time.monotonic(), _cpu_seconds(sampler.pid)
    best = _finish(proc)
    wall, cpu = time.monotonic() - started, _cpu_seconds(sampler.pid) - cpu_before
    sampler.send_signal(signal.SIGINT)
    sampler.communicate(timeout=600)
    if keep is None:
        shutil.rmtree(cap, ignore_errors=True)
    return best, cpu / wall


def sampler_steady_cpu(python, workload, seconds, warmup=3.0):
    """The sampler's own CPU time in steady state, as a share of one core:
    from `warmup` seconds after it attached (start-up reads the program's
    symbol tables and first code objects) over `seconds` more.  Read from
    /proc/PID/schedstat (nanoseconds on CPU), not the tick-counted stat.
    Also the BPF program's time over the same window, per sample of the
    program (its one busy thread takes RATE samples a second; runs on
    other CPUs that return at once are counted in): None where the
    kernel's BPF statistics cannot be switched on."""
    proc = _start(python, workload, warmup + seconds + 5)
    with tempfile.TemporaryDirectory() as tmp:
        sampler = subprocess.Popen([sys.executable, "-m", "etwtrace", "--sampled", "--pid",
                                    str(proc.pid), "--duration", "600", "--capture",
                                    os.path.join(tmp, "cap")], stderr=subprocess.PIPE, text=True)
        sampler.stderr.readline()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(warmup)
        with _bpf_stats():
            started, before = time.monotonic(), _on_cpu(sampler.pid)
            runs_before = _bpf_runs(sampler.pid)
            time.sleep(seconds)
            wall = time.monotonic() - started
            share = (_on_cpu(sampler.pid) - before) / wall
            runs_after = _bpf_runs(sampler.pid)
        sampler.send_signal(signal.SIGINT)
        sampler.communicate(timeout=600)
    proc.kill()
    proc.wait()
    per_sample = None
    if runs_before and runs_after and runs_after[1] > runs_before[1]:
        per_sample = (runs_after[0] - runs_before[0]) / 1e3 / (RATE * wall)
    return share, per_sample


class _bpf_stats:
    """kernel.bpf_stats_enabled on for the block (it times every BPF
    program run), then as it was."""
    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __enter__(self):
        try:
            with open(self.PATH) as f:
                self.was = f.read().strip()
            with open(self.PATH, "w") as f:
                f.write("1")
        except OSError:
            self.was = None

    def __exit__(self, *exc):
        if self.was is not None:
            with open(self.PATH, "w") as f:
                f.write(self.was)


def _bpf_runs(pid):
    """(run_time_ns, run_cnt) of the BPF program process pid holds, from
    its descriptor's fdinfo, or None."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
            return int(info["run_time_ns"]), int(info["run_cnt"])
        except (OSError, KeyError, ValueError):
            continue
    return None


def _on_cpu(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_stack_perf(python, workload, seconds, tmp, keep=None):
    cap = keep or os.path.join(tmp, "stack")
    proc = subprocess.Popen([python, "-m", "etwtrace", "--stack", "--recorder", "perf",
                             "--capture", cap, "--",
                             os.path.join(HERE, "_sampled_workload.py"), workload, str(seconds),
                             HERE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("stack+perf did not start")
    best = _finish(proc)
    proc.wait()
    if keep is None:
        shutil.rmtree(cap, ignore_errors=True)
    return best, None


def top_python(cap, n=5):
    """The n Python functions with the most samples on top of the Python
    frames (self time, lines merged), as (name, share)."""
    out = subprocess.run([sys.executable, "-m", "etwtrace", "report", cap, "--format",
                          "folded"], capture_output=True, text=True, check=True).stdout
    counts = {}
    total = 0
    for line in out.splitlines():
        stack, value = line.rsplit(" ", 1)
        python = [f.split(" (")[0] for f in stack.split(";") if f.endswith(")")]
        total += int(value)
        if python:
            counts[python[-1]] = counts.get(python[-1], 0) + int(value)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(name, value / max(total, 1)) for name, value in ranked]


def run_pyspy(python, workload, seconds, tmp):
    proc = _start(python, workload, seconds)
    out = os.path.join(tmp, "pyspy.txt")
    spy = subprocess.Popen(["py-spy", "record", "--rate", str(RATE), "--pid", str(proc.pid),
                            "--format", "raw", "--output", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)     # py-spy has no "attached" line: give it time to attach
    best = _finish(proc)
    spy.wait(timeout=120)
    return best, None


CONFIGS = {"none": run_none, "sampled": run_sampled, "stack+perf": run_stack_perf,
           "py-spy": run_pyspy}


def usable(name, python):
    if name == "stack+perf":
        r = subprocess.run([python, "-c", "import etwtrace"], capture_output=True)
        return r.returncode == 0 and shutil.which("perf") is not None
    if name == "py-spy":
        return shutil.which("py-spy") is not None
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--compare", default="richards",
                        help="workload whose top functions are compared")
    parser.add_argument("--workloads", default="fib(27),richards,deltablue,raytrace,nbody,"
                                                "float,go")
    parser.add_argument("--steady", type=float, default=20.0,
                        help="seconds of the sampler's steady-state CPU measurement per "
                             "workload (0: none)")
    opts = parser.parse_args()
    configs = [c for c in CONFIGS if usable(c, opts.python)]
    for c in CONFIGS:
        if c not in configs:
            print(f"(skipped {c}: not available)")
    times = {}
    cpu = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(opts.rounds):
            for workload in opts.workloads.split(","):
                for config in configs:
                    best, share = CONFIGS[config](opts.python, workload, opts.seconds, tmp)
                    key = (workload, config)
                    times[key] = min(times.get(key, float("inf")), best)
                    if share is not None:
                        cpu.append(share)
    version = subprocess.run([opts.python, "-VV"], capture_output=True, text=True).stdout
    print(f"{version.strip()}; {opts.rounds} rounds, best run of {opts.seconds:g} s per process")
    print(f"{'workload':<14} {'none s':>8} " + " ".join(f"{c:>11}" for c in configs[1:]))
    for workload in opts.workloads.split(","):
        base = times[(workload, "none")]
        cells = " ".join(f"{times[(workload, c)] / base:>10.3f}x" for c in configs[1:])
        print(f"{workload:<14} {base:>8.4f} {cells}")
    if "stack+perf" in configs:
        with tempfile.TemporaryDirectory() as tmp:
            workload = opts.compare
            sampled = os.path.join(tmp, "s")
            stack = os.path.join(tmp, "p")
            run_sampled(opts.python, workload, opts.seconds, tmp, keep=sampled)
            run_stack_perf(opts.python, workload, opts.seconds, tmp, keep=stack)
            print(f"top Python functions of {workload} (self samples, share of all):")
            print(f"  {'sampled':<36} stack+perf")
            for (a, x), (b, y) in zip(top_python(sampled), top_python(stack)):
                print(f"  {a:<28} {100 * x:5.1f}%  {b:<28} {100 * y:5.1f}%")
    if cpu:
        print(f"sampler CPU at {RATE} Hz from attach: {100 * sum(cpu) / len(cpu):.2f}% of one "
              f"core (mean over {len(cpu)} runs; max {100 * max(cpu):.2f}%)")
    if opts.steady:
        print(f"sampler CPU at {RATE} Hz in steady state ({opts.steady:g} s after 3 s), "
              "and the BPF program's time per sample:")
        for workload in opts.workloads.split(","):
            share, per_sample = sampler_steady_cpu(opts.python, workload, opts.steady)
            bpf = f"{per_sample:.1f} us" if per_sample is not None else "n/a"
            print(f"  {workload:<14} {100 * share:.2f}% of one core   BPF {bpf}")


if __name__ == "__main__":
    main()
