"""A recursion DEPTH calls of down() deep whose leaf burns CPU for SECONDS:
deep.py [DEPTH [SECONDS]].  Every CPU sample in leaf() has down() DEPTH
times, main() and <module> below it."""
import sys
import time


def leaf(seconds):
    end = time.monotonic() + seconds
    total = 0
    while time.monotonic() < end:
        for i in range(2000):
            total += i * i
    return total


def down(depth, seconds):
    if depth <= 1:
        return leaf(seconds)
    return down(depth - 1, seconds)


def main():
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    down(depth, seconds)


main()
