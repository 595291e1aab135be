"""One function calling from many lines, so its caller lines come from a
per-unit line table (built after the two-entry cache keeps missing)."""
import sys


def leaf(x=0):
    return x


def dispatch(rounds):
    for _ in range(rounds):
        leaf()  # site
        leaf(1)  # site
        leaf(  # site
            2)
        y = leaf(3) + leaf(4)  # site x2
        leaf(y)  # site
        leaf()  # site
        leaf()  # site
        try:
            raise ValueError
        except ValueError:
            leaf()  # site
        leaf()  # site
        leaf()  # site


def gen():
    while True:
        try:
            yield
        except KeyError:
            pass


def thrower(rounds):
    # Resuming a generator by throw() evaluates its frame with an exception
    # set, while this function's line table may be built.
    g = gen()
    next(g)
    for _ in range(rounds):
        g.throw(KeyError)  # throw site
        leaf()  # throw site


dispatch(int(sys.argv[1]))
thrower(int(sys.argv[1]))
