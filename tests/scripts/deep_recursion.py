"""Deep recursion as users write it once they raise the recursion limit
(test_deep_recursion.py): python deep_recursion.py LIMIT DEPTH [STACK_KIB
[uncaught]].  Runs on the main thread, or with STACK_KIB (not 0) in a
thread with a stack that big.  At the bottom of the recursion it marks
the stack (PythonStackSample, when traced) and recurses in C; then it
recurses until RecursionError, which with uncaught ends it."""
import sys
import threading

import etwtrace

NESTED = 300        # levels of C recursion (repr) at the bottom
THROUGH_C = 100     # levels of recursion through a C function (map)


def down(n):
    if n == 0:
        return at_the_bottom()
    return down(n - 1) + 1


def at_the_bottom():
    if etwtrace.is_active():
        etwtrace._mark_stack("bottom")
    nested = []
    for _ in range(NESTED):
        nested = [nested]
    return len(repr(nested)) + through_c(THROUGH_C)


def through_c(n):
    return 0 if n == 0 else sum(map(through_c, [n - 1])) + 1


def endless(n):
    return endless(n + 1) + 1


def run(depth, uncaught):
    print(down(depth), flush=True)
    if uncaught:
        endless(0)
    try:
        endless(0)
    except RecursionError:
        print("RecursionError", flush=True)
    print(down(depth // 2), flush=True)    # and it runs on after one


def main():
    limit, depth = int(sys.argv[1]), int(sys.argv[2])
    stack_kib = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    uncaught = sys.argv[4:] == ["uncaught"]
    sys.setrecursionlimit(limit)
    if not stack_kib:
        run(depth, uncaught)
        return
    threading.stack_size(stack_kib * 1024)
    worker = threading.Thread(target=thread_main, args=(depth,))
    worker.start()
    worker.join()


def thread_main(depth):
    run(depth, False)


main()
