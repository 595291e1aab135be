"""What recording sessions cost a traced process (docs/BENCHMARKS.md):

* with no session running: the CPU time of its session watcher thread
  (one stat(2) of each session path every 200 ms), from the thread's
  schedstat, over an idle minute-long run, as a share of that time;
* joining: how long after `record start` returns a running process
  records into the session, and how long its rundown of N functions takes
  (first to last rundown event in its trace);
* a traced program's run time with sessions watched and with
  ETWTRACE_SESSION=ignore, side by side.

Run as root (the machine's session), e.g.:
    python bench/session_cost.py --seconds 30 --functions 20000
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import etwtrace

IDLE = """
import time, sys
time.sleep(float(sys.argv[1]))
"""

MANY = """
import os, sys, time
n = int(sys.argv[1])
fns = []
for i in range(n):
    ns = {}
    exec(f"def f{i}():\\n    return {i}", ns)
    fns.append(ns[f"f{i}"])
for f in fns:
    f()
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
"""

FIB = """
import sys
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
fib(int(sys.argv[1]))
"""


def watcher_cpu_ns(pid):
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != "etwtrace-watch":
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                return int(f.read().split()[0])
        except OSError:
            continue
    return None


def idle_cost(work, env, seconds):
    script = os.path.join(work, "idle.py")
    with open(script, "w") as f:
        f.write(IDLE)
    proc = subprocess.Popen([sys.executable, "-m", "etwtrace", "--", script, str(seconds + 2)],
                            env=env)
    time.sleep(1)
    first = watcher_cpu_ns(proc.pid)
    time.sleep(seconds)
    last = watcher_cpu_ns(proc.pid)
    proc.wait()
    return (last - first) / (seconds * 1e9)


def join_and_rundown(work, env, functions):
    script = os.path.join(work, "many.py")
    with open(script, "w") as f:
        f.write(MANY)
    ready, stop = os.path.join(work, "ready"), os.path.join(work, "stop")
    proc = subprocess.Popen([sys.executable, "-m", "etwtrace", "--", script, str(functions),
                             ready, stop], env=env)
    while not os.path.exists(ready):
        time.sleep(0.01)
    capture = os.path.join(work, "capture")
    record = [sys.executable, "-m", "etwtrace", "record"]
    subprocess.run(record + ["start", capture, "--recorder", "builtin"], env=env, check=True,
                   stderr=subprocess.DEVNULL)
    started = time.monotonic()
    staging = os.path.join(capture, ".session", "ctf", f"pid-{proc.pid}")
    while not os.path.isdir(staging):
        time.sleep(0.001)
    joined = time.monotonic() - started
    time.sleep(1)
    open(stop, "w").close()
    proc.wait()
    subprocess.run(record + ["stop"], env=env, check=True, stderr=subprocess.DEVNULL)
    times = [e.timestamp for e in etwtrace.open_trace(capture) if e.name == "PythonFunction"]
    return joined, len(times), (max(times) - min(times)) / 1e6


def fib_times(work, env, rounds):
    script = os.path.join(work, "fib.py")
    with open(script, "w") as f:
        f.write(FIB)
    best = {}
    for _ in range(rounds):
        for label, extra in (("watching", {}), ("ignore", {"ETWTRACE_SESSION": "ignore"})):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "etwtrace", "--", script, "27"],
                           env=dict(env, **extra), check=True)
            best[label] = min(best.get(label, 1e9), time.perf_counter() - t)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--functions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the machine's session is root's")
    work = tempfile.mkdtemp(prefix="etwtrace-session-bench-")
    env = dict(os.environ, ETWTRACE_SESSION_DIR=os.path.join(work, "control"))
    try:
        share = idle_cost(work, env, args.seconds)
        joined, n, rundown_ms = join_and_rundown(work, env, args.functions)
        best = fib_times(work, env, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}")
    print(f"| no session: watcher CPU share | {share * 100:.5f}% "
          f"({share * args.seconds * 1e6 / args.seconds:.1f} us per second) |")
    print(f"| joining after record start returns | {joined * 1000:.0f} ms |")
    print(f"| rundown of {n} PythonFunction events | {rundown_ms:.1f} ms "
          f"({rundown_ms * 1e6 / max(n, 1):.0f} ns each) |")
    print(f"| fib(27) traced, watching sessions / ETWTRACE_SESSION=ignore (best of "
          f"{args.rounds}) | {best['watching']:.3f} s / {best['ignore']:.3f} s = "
          f"{best['watching'] / best['ignore']:.3f} |")


if __name__ == "__main__":
    main()
