"""Three threads each call work() N times (argv[1], default 1,000,000;
with argv[2] "go", once a line comes on stdin, after saying "ready"), or,
when argv[1] is "until", until the file argv[2] exists (1000 calls, then a
pause of argv[3] ms, default 0); then the main thread says how many calls
were made: a busy program whose capture grows fast, and whose output
proves it ran to its end."""
import os
import sys
import threading
import time


def work(i):
    return i + 1


def spin(n, done, slot):
    total = 0
    for i in range(n):
        total = work(total)
    done[slot] = total


def spin_until(path, done, slot):
    pause = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0
    total = 0
    while not os.path.exists(path):
        for i in range(1000):
            total = work(total)
        if pause:
            time.sleep(pause)
    done[slot] = total


done = [0, 0, 0]
if sys.argv[1:2] == ["until"]:
    target, arg = spin_until, sys.argv[2]
else:
    target, arg = spin, int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    if sys.argv[2:3] == ["go"]:
        print("ready", flush=True)
        sys.stdin.readline()
threads = [threading.Thread(target=target, args=(arg, done, k)) for k in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"calls {sum(done)}", flush=True)
