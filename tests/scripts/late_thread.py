"""Calls work() N times (argv[1]), then starts a thread that calls it N
more times and ends the process with os._exit(0): the thread's own end
(its pthread exit, where the recorder closes its stream) never runs.
With a small --max-size, the capture stops during the first calls, so
the thread is one that began after the stop (not recorded): what it lost
must be counted even though its process ends first."""
import os
import sys
import threading


def work(i):
    return i + 1


def spin(n):
    total = 0
    for i in range(n):
        total = work(total)
    return total


def late(n, first):
    total = spin(n)
    print(f"calls {first + total}", flush=True)
    os._exit(0)


n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
first = spin(n)
threading.Thread(target=late, args=(n, first)).start()
threading.Event().wait()        # ended by the thread's os._exit
