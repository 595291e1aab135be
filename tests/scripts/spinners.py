"""Two threads, each spinning in a function of its own for 1.5 s
(per-thread sampled timelines)."""
import threading
import time


def spin_one(until):
    n = 0
    while time.monotonic() < until:
        n += 1
    return n


def spin_two(until):
    n = 0
    while time.monotonic() < until:
        n += 1
    return n


until = time.monotonic() + 1.5
threads = [threading.Thread(target=spin_one, args=(until,), name="one"),
           threading.Thread(target=spin_two, args=(until,), name="two")]
for t in threads:
    t.start()
for t in threads:
    t.join()
