"""Calls a() A times and b() B times (argv: A B): two runs with different
A differ by a known share (report --diff, pprof counts)."""
import sys


def a():
    return 1


def b():
    return 2


def main(count_a, count_b):
    for _ in range(count_a):
        a()
    for _ in range(count_b):
        b()


main(int(sys.argv[1]), int(sys.argv[2]))
