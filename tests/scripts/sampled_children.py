"""A program whose work is done by Python workers it starts (argv: seconds,
multiprocessing start method): each worker calls inner from outer for the
given seconds while the program waits; prints "done" at the end."""
import multiprocessing
import sys
import time


def inner(n):
    return sum(i * i for i in range(n))


def outer(seconds):
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        inner(5000)


if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[2])
    workers = [context.Process(target=outer, args=(float(sys.argv[1]),)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print("done", flush=True)
