"""Known calls for the report tests: leaf 15 times from middle, middle
twice from top, in a worker thread too; a mark and a range."""
import threading

import etwtrace


def leaf(i):
    return sum(range(300)) + i * 2     # some work: a share a flame graph draws


def middle(n):
    for i in range(n):
        leaf(i)


def top():
    middle(10)
    middle(5)


def worker():
    with etwtrace.mark_range("worker range"):
        top()


if __name__ == "__main__":
    etwtrace.mark("start mark")
    top()
    t = threading.Thread(target=worker, name="worker")
    t.start()
    t.join()
