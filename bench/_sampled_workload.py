"""Runs one workload of workloads.py for the sampled-cost benchmark: says
"ready", waits for a line on stdin (a sampler attaches meanwhile), runs it
again and again for `seconds` (at least 3 times) and prints the best time
of one run, in seconds."""
import sys
import time

sys.path.insert(0, sys.argv[3])
from workloads import WORKLOADS   # noqa: E402

run = WORKLOADS[sys.argv[1]]()
seconds = float(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
best = float("inf")
until = time.perf_counter() + seconds
runs = 0
while runs < 3 or time.perf_counter() < until:
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
    runs += 1
print(best, flush=True)
