"""Blocks in known functions: sleeps, and waits on a lock another thread holds."""
import threading
import time

lock = threading.Lock()
held = threading.Event()


def holder():
    with lock:
        held.set()
        time.sleep(0.3)


def waiter():
    held.wait()
    with lock:
        pass


def sleeper():
    time.sleep(0.2)


def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


if __name__ == "__main__":
    spin(200_000)
    t = threading.Thread(target=holder)
    t.start()
    waiter()
    t.join()
    sleeper()
