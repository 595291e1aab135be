"""Makes `before` calls of before_exec, then execs a second Python script,
exec_after.py, which makes `after` calls of after_exec."""
import os
import sys


def before_exec():     # LINE:before_exec
    return 1


def main(before, after):   # LINE:main
    for _ in range(before):
        before_exec()
    sys.stdout.flush()
    after_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exec_after.py")
    os.execv(sys.executable, [sys.executable, after_script, str(after)])


main(int(sys.argv[1]), int(sys.argv[2]))
