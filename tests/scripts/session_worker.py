"""A program for the recording-session tests.

    session_worker.py STOP_FILE READY_FILE [calls]

Without `calls`: runs outer() -> inner() until STOP_FILE exists (at most
two minutes), recording its native stack from inner() now and then
(PythonStackSample), so a built-in trace has stacks to map.  With
`calls`: makes that many calls of leaf() and marks every tenth of them
("part 0" ... "part 9") with PythonMark events, then waits for STOP_FILE.
READY_FILE is created once the work has begun."""

import os
import sys
import time

import etwtrace


def inner(n, mark):
    total = 0
    for i in range(n):
        total += i
    if mark:
        etwtrace._mark_stack("inner")
    return total


def outer(stop_file, ready_file):
    rounds = 0
    deadline = time.monotonic() + 120
    # os.access, a C function: no Python function but outer and inner
    # runs in the loop (see the note of issue #7 on 3.9's DWARF unwinding).
    while not os.access(stop_file, os.F_OK) and time.monotonic() < deadline:
        inner(2000, rounds % 20 == 0)
        rounds += 1
        if rounds == 1:
            open(ready_file, "w").close()
    print(f"rounds {rounds}", flush=True)


def leaf():
    pass


def calls(n, stop_file, ready_file):
    open(ready_file, "w").close()
    tenth = n // 10
    for part in range(10):
        etwtrace.mark(f"part {part}")
        for _ in range(tenth):
            leaf()
    etwtrace.mark("done")
    deadline = time.monotonic() + 120
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("calls done", flush=True)


if len(sys.argv) > 3:
    calls(int(sys.argv[3]), sys.argv[1], sys.argv[2])
else:
    outer(sys.argv[1], sys.argv[2])
