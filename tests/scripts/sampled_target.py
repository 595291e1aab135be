"""A target for the BPF sampler (argv: seconds [mode]): inner() called by
outer() in a loop until the time is up, and in mode "callback" a Python
key function called from C (sorted) doing the same work; prints "done"
at the end, so a test sees the program ran on unharmed."""
import sys
import time


def inner(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def outer(until):
    while time.monotonic() < until:
        inner(5000)


def key(x):
    return inner(2000) * 0 - x


def callback(until):
    while time.monotonic() < until:
        sorted(range(20), key=key)


seconds = float(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "plain"
print("ready", flush=True)
(callback if mode == "callback" else outer)(time.monotonic() + seconds)
print("done", flush=True)
