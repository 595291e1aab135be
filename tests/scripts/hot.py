"""A CPU-bound loop in inner(), called from outer()."""
import sys


def inner(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def outer(seconds):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        inner(20000)


outer(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
