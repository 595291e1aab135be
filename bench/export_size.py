"""What the report's exports of one instrumented run weigh (docs/BENCHMARKS.md):
for each format, the file's size, the size the report announced beforehand
(its estimate, for the timeline formats), and the seconds the report took;
then the same for a cut view (--from/--to), and pprof against folded.

    python bench/export_size.py --calls 2000000
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from etwtrace.report import command as _report
from etwtrace.report.scan import Scan
from etwtrace.trace.capture import Capture
from etwtrace.report.view import report_view

SCRIPT = """
import sys
def leaf(i): return i
def middle(n):
    for i in range(n): leaf(i)
def top(total):
    for _ in range(total // 1000): middle(1000)
top(int(sys.argv[1]))
"""


def report(cap, out, *args):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "etwtrace", "report", cap, "-o", out, *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return time.perf_counter() - started, os.path.getsize(out)


def estimate(cap, fmt):
    fmt = _report.FORMATS[fmt]
    if fmt.size is None:
        return None
    with Scan(Capture(cap), None, timeline=fmt.timeline) as scan:
        return fmt.size(report_view(scan, fmt, False, cap, None, False, None, None))


def _size(n):
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2_000_000)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "calls.py")
        with open(script, "w") as f:
            f.write(SCRIPT)
        cap = os.path.join(tmp, "cap")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "etwtrace", "--instrumented", "--capture", cap,
                        "--recorder", "builtin", "--", script, str(opts.calls)], check=True,
                       stderr=subprocess.DEVNULL)
        run = time.perf_counter() - started
        trace = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cap) for f in fs)
        print(f"{opts.calls:,} calls traced in {run:.2f} s; capture {trace / 2**20:.1f} MiB")
        print(f"{'format':<12} {'view':<12} {'size':>10} {'estimate':>10} {'seconds':>8}")
        for fmt in ("text", "folded", "svg", "pprof", "speedscope", "chrome"):
            for label, args in (("whole", ()), ("--to 0.1", ("--to", "0.1"))):
                secs, size = report(cap, os.path.join(tmp, "out"), "--format", fmt, *args)
                guess = estimate(cap, fmt) if fmt in ("speedscope", "chrome") and not args else None
                shown = _size(guess) if guess is not None else ""
                print(f"{fmt:<12} {label:<12} {_size(size):>10} {shown:>10} {secs:8.2f}")


if __name__ == "__main__":
    main()
