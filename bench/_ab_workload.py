"""Runs one workload of workloads.py for bench/sampled_ab.py: says "ready",
waits for a line on stdin, then runs it again and again for `seconds` and
prints each run's start and end (time.monotonic, the clock the bench's
windows use), one run a line."""
import sys
import time

sys.path.insert(0, sys.argv[3])
from workloads import WORKLOADS   # noqa: E402

run = WORKLOADS[sys.argv[1]]()
seconds = float(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
times = []
until = time.monotonic() + seconds
while time.monotonic() < until:
    start = time.monotonic()
    run()
    times.append((start, time.monotonic()))
print("\n".join(f"{a!r} {b!r}" for a, b in times), flush=True)
