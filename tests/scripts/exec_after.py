"""The program exec_before.py execs into: `after` calls of after_exec."""
import sys


def after_exec():  # LINE:after_exec
    return 2


def main(after):    # LINE:main
    for _ in range(after):
        after_exec()


main(int(sys.argv[1]))
