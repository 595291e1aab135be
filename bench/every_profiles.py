"""What a machine-wide `record start PATH --sampled --every N` costs and
writes (docs/BENCHMARKS.md), over one busy CPython:

* profiles: how many were written, and whether `go tool pprof -top`
  opens each and lists the hot function;
* bytes: the session's PATH at the end (profiles and manifest), and all
  the daemon wrote (/proc/PID/io wchar: its state file each second too);
* CPU: the session's own processes, as a share of one core over the
  session: the daemon (/proc/PID/schedstat, read until it exits) and the
  start, status and stop commands (their rusage); and the BPF program's
  own time, which runs in the sampled process, not in the session
  (kernel.bpf_stats_enabled on for the run).

Run as root; it takes /tmp/etwtrace-perf.lock while it samples:
    python bench/every_profiles.py [--python /usr/bin/python3] [--seconds 21]
        [--every 5] [--rate HZ ...]
"""

import argparse
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from sampled_cost import _bpf_runs     # (bench/ is the script's path)

LOCK = "/tmp/etwtrace-perf.lock"
HOT = """
import sys, time
def hot_function(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
end = time.monotonic() + float(sys.argv[1])
print("ready", flush=True)
while time.monotonic() < end:
    hot_function(10000)
"""


class DaemonWatch(threading.Thread):
    """The daemon's CPU time and bytes written, read every 50 ms until it
    exits (the last reading is its total)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.cpu_ns = 0
        self.wchar = 0
        self.bpf = None

    def run(self):
        while True:
            try:
                with open(f"/proc/{self.pid}/schedstat") as f:
                    cpu = int(f.read().split()[0])
                with open(f"/proc/{self.pid}/io") as f:
                    io = dict(line.split(":", 1) for line in f)
                bpf = _bpf_runs(self.pid)
            except (OSError, ValueError):
                return
            self.cpu_ns, self.wchar = cpu, int(io["wchar"])
            self.bpf = bpf or self.bpf
            time.sleep(0.05)


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _tree_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(python, seconds, every, rate, tmp):
    env = dict(os.environ, ETWTRACE_SESSION_DIR=os.path.join(tmp, "control"))
    path = os.path.join(tmp, f"cap-{rate or 'default'}")
    etwtrace = [sys.executable, "-m", "etwtrace", "record"]
    hot = subprocess.Popen([python, "-c", HOT, str(seconds + 10)], stdout=subprocess.PIPE,
                           text=True)
    assert hot.stdout.readline().strip() == "ready"
    cli = 0.0
    try:
        before = _children_cpu()
        options = ["--rate", str(rate)] if rate else []
        subprocess.run([*etwtrace, "start", path, "--sampled", "--every", str(every), *options],
                       env=env, check=True, stderr=subprocess.PIPE)
        cli += _children_cpu() - before
        with open(os.path.join(env["ETWTRACE_SESSION_DIR"], "state.json")) as f:
            state = json.load(f)
        watch = DaemonWatch(state["daemon"])
        watch.start()
        began = time.monotonic()
        time.sleep(seconds / 2)
        before = _children_cpu()
        status = subprocess.run([*etwtrace, "status"], env=env, stderr=subprocess.PIPE,
                                text=True).stderr.strip()
        cli += _children_cpu() - before
        time.sleep(max(0.0, began + seconds - time.monotonic()))
        before = _children_cpu()
        stopped = subprocess.run([*etwtrace, "stop"], env=env, stderr=subprocess.PIPE,
                                 text=True, check=True).stderr.strip()
        cli += _children_cpu() - before
        wall = time.monotonic() - began
        watch.join(10)
    finally:
        hot.kill()
        hot.wait()
    profiles = sorted(os.listdir(os.path.join(path, "profiles")))
    listed = 0
    for name in profiles:
        top = subprocess.run(["go", "tool", "pprof", "-top", os.path.join(path, "profiles", name)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        listed += top.returncode == 0 and "hot_function" in top.stdout
    with open(os.path.join(path, "etwtrace-capture.json")) as f:
        manifest = json.load(f)
    return {
        "rate": manifest["rate"], "wall": wall, "profiles": len(profiles),
        "profiles listing hot_function": listed,
        "PATH bytes": _tree_bytes(path), "daemon wrote (wchar)": watch.wchar,
        "samples": manifest["samples"], "samples_lost": manifest["samples_lost"],
        "daemon CPU % of a core": 100 * watch.cpu_ns / 1e9 / wall,
        "start+status+stop CPU s": cli,
        "session CPU % of a core": 100 * (watch.cpu_ns / 1e9 + cli) / wall,
        "BPF program ns/run": (watch.bpf[0] / watch.bpf[1]) if watch.bpf and watch.bpf[1] else None,
        "status": status, "stop": stopped,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--seconds", type=float, default=21)
    ap.add_argument("--every", type=float, default=5)
    ap.add_argument("--rate", type=int, nargs="*", default=[0],
                    help="rates to run (0: --every's default)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="etwtrace-every-bench-")
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    try:
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with open(stats_path) as f:
                was = f.read().strip()
            with open(stats_path, "w") as f:
                f.write("1")
            try:
                for rate in args.rate:
                    result = run(args.python, args.seconds, args.every, rate, tmp)
                    print(f"--every {args.every:g}, {args.seconds:g} s, rate "
                          f"{result.pop('rate')} Hz:")
                    for key, value in result.items():
                        shown = f"{value:.2f}" if isinstance(value, float) else value
                        print(f"  {key}: {shown}")
            finally:
                with open(stats_path, "w") as f:
                    f.write(was)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
