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
    inner(1)
    # Functions first called after inner() get their trampolines after
    # inner's: stacks must still unwind through inner's (see trampoline.h).
    fresh = {}
    exec("\n".join(f"def later{i}(): return {i}" for i in range(8)), fresh)
    for i in range(8):
        fresh[f"later{i}"]()
    while time.monotonic() < end:
        inner(20000)


outer(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
