"""Report speed and memory on large instrumented traces, side by side with
babeltrace2 reading the same trace to text (issue #4).

    python3 bench/report_speed.py [--calls N ...] [--timelines]

For each size: records tests/scripts/many_calls.py N (2 events per call,
plus start-up) with the built-in recorder, then times, one after another in
the same run: iterating over every event of `etwtrace.open_trace`,
`report --format text`, `report --format folded`,
`babeltrace2 TRACE > /dev/null`, and (with --timelines) chrome and
speedscope.  Peak RSS is each command's own (wait4).  Prints a Markdown
table.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "many_calls.py")


def timed(cmd):
    """(seconds, peak RSS MiB) of one command, its output discarded."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {err}")
    return elapsed, usage.ru_maxrss / 1024


def count_events(trace_dir):
    """Events in the trace, as babeltrace2 counts them (one line each)."""
    # Streamed, so this process stays small: a child's peak RSS as wait4
    # reports it starts from its parent's size at fork.
    lines = 0
    with subprocess.Popen(["babeltrace2", trace_dir], stdout=subprocess.PIPE) as proc:
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
            lines += chunk.count(b"\n")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[500_000, 5_000_000])
    parser.add_argument("--timelines", action="store_true")
    opts = parser.parse_args()
    if shutil.which("babeltrace2") is None:
        raise SystemExit("babeltrace2 is needed (apt-get install babeltrace2)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in opts.calls:
            cap = os.path.join(tmp, f"cap{calls}")
            subprocess.run([sys.executable, "-m", "etwtrace", "--instrumented", "--capture", cap,
                            "--recorder", "builtin", "--", SCRIPT, str(calls)],
                           check=True, stderr=subprocess.DEVNULL)
            (trace_dir,) = glob.glob(os.path.join(cap, "ctf", "pid-*"))
            events = count_events(trace_dir)
            size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(trace_dir, "stream-*")))
            report = [sys.executable, "-m", "etwtrace", "report", cap]
            read_all = [sys.executable, "-c", "import sys, etwtrace\n"
                        "with etwtrace.open_trace(sys.argv[1]) as trace:\n"
                        "    for event in trace:\n"
                        "        pass\n", cap]
            measured = {
                "open_trace, every event": timed(read_all),
                "report text": timed(report),
                "report folded": timed(report + ["--format", "folded"]),
                "babeltrace2 to text": timed(["babeltrace2", trace_dir]),
            }
            if opts.timelines:
                for fmt in ("chrome", "speedscope"):
                    measured[f"report {fmt}"] = timed(report + ["--format", fmt])
            rows.append((events, size, measured))
            shutil.rmtree(cap)
    print(f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs\n")
    print("| events | trace MiB | command | seconds | peak RSS MiB | babeltrace2 / this |")
    print("|---:|---:|---|---:|---:|---:|")
    for events, size, measured in rows:
        base = measured["babeltrace2 to text"][0]
        for name, (secs, rss) in measured.items():
            ratio = f"{base / secs:.1f}x" if not name.startswith("babeltrace2") else ""
            print(f"| {events:,} | {size / 2**20:.1f} | {name} | {secs:.2f} | {rss:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
