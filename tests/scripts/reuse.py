"""Functions made and freed in a loop (argv: seconds, output path): each
f<i> spins for 20 ms and is dropped; its name and time window go to the
output, one per line, so every sample can be checked against the function
really running then."""
import sys
import time

seconds, out = float(sys.argv[1]), sys.argv[2]
windows = []
until = time.monotonic() + seconds
i = 0
while time.monotonic() < until:
    ns = {}
    exec(f"def f{i}(t):\n    while __import__('time').monotonic() < t:\n        pass\n", ns)
    start = time.monotonic_ns()
    ns[f"f{i}"](time.monotonic() + 0.02)
    windows.append(f"f{i} {start} {time.monotonic_ns()}")
    del ns
    i += 1
with open(out, "w") as f:
    f.write("\n".join(windows) + "\n")
