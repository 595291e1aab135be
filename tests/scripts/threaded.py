"""Ten threads, each marking its stack in a, b (called from a) and c."""
import threading

import etwtrace


def a():
    etwtrace._mark_stack("a")
    b()


def b():
    etwtrace._mark_stack("b")
    c()


def c():
    etwtrace._mark_stack("c")


threads = [threading.Thread(target=a) for _ in range(10)]
for t in threads:
    t.start()
for t in threads:
    t.join()
