"""outer() calls inner() through a compiled extension's bridge_call.
The extension is built by the test into the directory given as argv[1]."""
import sys
import time

sys.path.insert(0, sys.argv[1])
import etw_bridge  # noqa: E402


def inner():
    total = 0
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        for i in range(2000):
            total += i * i
    return total


def outer():
    return etw_bridge.bridge_call(inner)


if __name__ == "__main__":
    outer()
