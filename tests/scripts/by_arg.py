"""Marks a stack in a, b and c for each of the names given: 'a b' marks in
a, then in b called from a."""
import sys

import etwtrace

WANTED = set(sys.argv[1:])


def a():
    if "a" in WANTED:
        etwtrace._mark_stack("a")
    b()


def b():
    if "b" in WANTED:
        etwtrace._mark_stack("b")
    c()


def c():
    if "c" in WANTED:
        etwtrace._mark_stack("c")


a()
