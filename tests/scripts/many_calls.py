"""leaf() called N times (argv[1]) from loop(): the call tree has the same
paths whatever N is."""
import sys


def leaf(i):
    return i


def loop(n):
    for i in range(n):
        leaf(i)


loop(int(sys.argv[1]))
