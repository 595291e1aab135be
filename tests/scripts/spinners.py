"""Two threads, each spinning in a function of its own for 1.5 s
(per-thread sampled timelines)."""
import ctypes
import sys
import threading
import time


def os_name(name):
    """What CPython 3.14+ does for each threading.Thread: its name given to
    the OS thread too (the --sampled tests read threads' names there)."""
    if sys.version_info < (3, 14) and sys.platform == "linux":
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)    # PR_SET_NAME


def spin_one(until):
    os_name("one")
    n = 0
    while time.monotonic() < until:
        n += 1
    return n


def spin_two(until):
    os_name("two")
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
