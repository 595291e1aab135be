"""Runs busy_threads.py N (argv[1]) in two child processes and in this
one, all three starting their calls at once: three processes that record
into one capture together."""
import os
import runpy
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
n = sys.argv[1] if len(sys.argv) > 1 else "1000000"
children = [subprocess.Popen([sys.executable, os.path.join(here, "busy_threads.py"), n, "go"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, encoding="utf-8")
            for _ in range(2)]
for child in children:
    assert child.stdout.readline().strip() == "ready"
for child in children:
    child.stdin.write("go\n")
    child.stdin.flush()
sys.argv[1:] = [n]
runpy.run_path(os.path.join(here, "busy_threads.py"), run_name="__main__")
for child in children:
    out, _ = child.communicate()
    print(f"child {out.strip()}", flush=True)
