"""A program with its own profile function: sys.setprofile replaces the
one --c-calls installed, in the middle of a C call (setprofile itself)."""
import sys


def prof(frame, event, arg):
    pass


def leaf():
    return 1


def main():
    sys.setprofile(prof)
    leaf()
    sys.setprofile(None)
    leaf()


main()
