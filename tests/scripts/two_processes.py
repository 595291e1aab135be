"""A parent that makes `parent` calls of parent_work and runs a child
Python process (this script with "child") that makes `child` calls of
child_work."""
import subprocess
import sys


def parent_work():
    return 1


def child_work():
    return 2


def main():
    if sys.argv[1] == "child":
        for _ in range(int(sys.argv[2])):
            child_work()
        return
    parent, child = int(sys.argv[1]), int(sys.argv[2])
    subprocess.run([sys.executable, __file__, "child", str(child)], check=True)
    for _ in range(parent):
        parent_work()


main()
