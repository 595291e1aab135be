"""A target for etwtrace top (argv: seconds): hot_inner() takes most of
the own time; warm_outer() calls it and works a little itself, so it has
the larger total share; a second thread, "side", spins in side_spin() a
little and sleeps.  Prints "ready" once both run."""
import itertools
import sys
import threading
import time


def hot_inner(n):
    # Small ints and no new objects: its time is the evaluator's, so its
    # own share is far above any native function's.
    x = 0
    for _ in itertools.repeat(None, n):
        x = (x + 3) & 255
    return x


def warm_outer(until):
    while time.monotonic() < until:
        hot_inner(20000)
        x = 0
        for i in range(1000):
            x += i


def side_spin(until):
    while time.monotonic() < until:
        end = time.monotonic() + 0.01
        while time.monotonic() < end:
            pass
        time.sleep(0.03)


until = time.monotonic() + float(sys.argv[1])
side = threading.Thread(target=side_spin, args=(until,), name="side")
side.start()
print("ready", flush=True)
warm_outer(until)
side.join()
