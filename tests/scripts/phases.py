"""Two phases apart in time: first() 100 times, a pause of 0.6 s, then
second() 100 times (report --from/--to cut between them)."""
import time


def first():
    return 1


def second():
    return 2


for _ in range(100):
    first()
time.sleep(0.6)
for _ in range(100):
    second()
