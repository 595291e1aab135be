"""A Python function called back from C: sorted() calls key()."""
import etwtrace


def key(x):
    if x == 2:
        etwtrace._mark_stack("key")
    return -x


def outer():
    return sorted([3, 1, 2], key=key)


print(outer())
