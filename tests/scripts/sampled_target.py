"""A target for the BPF sampler (argv: seconds [mode]): inner() (its lines,
marked LINE:inner, are what tests check) called by outer() until the time is up; mode
"callback": key called from C (sorted); "late_library": see below.
Prints "done" at the end, so a test sees the program ran on unharmed."""
import sys
import time


def inner(n):   # LINE:inner
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


def late_library(until):
    """A second in, loads a C extension (_decimal) and works inside it."""
    time.sleep(1)
    import _decimal
    one, up = _decimal.Decimal(1), _decimal.Decimal("1.0001")
    while time.monotonic() < until:
        x = one
        for _ in range(200):
            x = x * up / up


seconds = float(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "plain"
print("ready", flush=True)
run = {"callback": callback, "late_library": late_library}.get(mode, outer)
run(time.monotonic() + seconds)
print("done", flush=True)
