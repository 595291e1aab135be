"""Threads that only call functions the main thread already registered, and
raise no events of their own."""
import threading


def work():
    return sum(range(100))


work()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
