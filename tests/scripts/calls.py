"""Known call counts: f is called N times from loop (N from argv), g twice
from f's first call, and C callables (len, sorted with a Python key) from
known lines."""
import sys


def g():
    return 1


def f(i):
    if i == 0:
        g()
        g()
    return i


def key(x):
    return -x


def c_calls():
    n = len([1, 2, 3])                      # len called from c_calls
    return sorted([3, 1, 2], key=key), n    # sorted called from c_calls


def loop(n):
    for i in range(n):
        f(i)


loop(int(sys.argv[1]))
c_calls()
