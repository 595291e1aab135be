"""Calls work() N times (argv[1]) in a thread whose stream file cannot be
made: every descriptor the process may open is taken when the thread
begins (RLIMIT_NOFILE), and given back once its first call is made, so
the rest of the process records on.  The recorder says the thread is not
recorded and counts each of its events as lost."""
import os
import resource
import sys
import threading


def work(i):
    return i + 1


def spin(n):
    total = 0
    for i in range(n):
        total = work(total)
    return total


def side(n, began, result):
    began.set()
    result.append(spin(n))


n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
began, result = threading.Event(), []
thread = threading.Thread(target=side, args=(n, began, result))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
taken = []
try:
    while True:
        taken.append(os.dup(0))
except OSError:
    pass
thread.start()
began.wait()
for fd in taken:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
thread.join()
print(f"calls {result[0]}", flush=True)
