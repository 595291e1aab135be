"""A stack-mode capture with perf, end to end: its time against the
program's own, its bytes, and what it leaves in /tmp.

    sudo python bench/capture_time.py [--rounds 3] [--seconds 1] [--preset Default]
                                      [--before PYTHON]

Each round runs the program (tests/scripts/hot.py SECONDS) untraced, then
`python -m etwtrace --stack --capture DIR --recorder perf -- hot.py SECONDS`
(with --before, also under another install of etwtrace: a venv of an
earlier commit, of the same Python), interleaved; a configuration's time
is the median of its rounds.  Per configuration it prints the wall time
from start to the launcher's exit and its ratio to the untraced program,
the capture's bytes (perf's data files, perf.script, the build-id cache,
all), those bytes per second of the program's run, and the perf maps,
jitdumps and jitted images of the capture's processes left in /tmp
afterwards (removed by the bench after counting).  Each capture holds
/tmp/etwtrace-perf.lock while it runs.
"""
import argparse
import fcntl
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAM = os.path.join(HERE, "..", "tests", "scripts", "hot.py")
LOCK = "/tmp/etwtrace-perf.lock"


def untraced(python, seconds):
    start = time.monotonic()
    subprocess.run([python, PROGRAM, str(seconds)], check=True, timeout=600)
    return time.monotonic() - start


def du(path):
    if not os.path.isdir(path):
        return os.lstat(path).st_blocks * 512
    total = 0
    seen = set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:     # a hard link counts once
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def tmp_leftovers(path):
    """The capture's processes' files in /tmp (removed once counted)."""
    pids = [name[4:] for name in os.listdir(os.path.join(path, "ctf"))
            if name.startswith("pid-")] if os.path.isdir(os.path.join(path, "ctf")) else []
    found = []
    for pid in pids:
        found += glob.glob(f"/tmp/perf-{pid}.map") + glob.glob(f"/tmp/jit-{pid}.dump")
        found += glob.glob(f"/tmp/jitted-{pid}-*.so")
    for name in found:
        os.unlink(name)
    return len(found)


def capture(python, seconds, preset, path):
    shutil.rmtree(path, ignore_errors=True)
    cmd = [python, "-m", "etwtrace", "--stack", "--capture", path, "--recorder", "perf",
           "--preset", preset, "--", PROGRAM, str(seconds)]
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=600)
        wall = time.monotonic() - start
    with open(os.path.join(path, "etwtrace-capture.json")) as f:
        manifest = json.load(f)
    sizes = {
        "perf data": sum(du(os.path.join(path, n)) for n in ("perf.data", "perf.jit.data")
                         if os.path.exists(os.path.join(path, n))),
        "perf.script": du(os.path.join(path, "perf.script")),
        "buildid": du(os.path.join(path, "buildid")) if os.path.isdir(
            os.path.join(path, "buildid")) else 0,
        "all": du(path),
    }
    return wall, sizes, tmp_leftovers(path), manifest.get("callgraph")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--preset", default="Default")
    parser.add_argument("--before", metavar="PYTHON")
    args = parser.parse_args()
    configs = {"this": sys.executable}
    if args.before:
        configs = {"before": args.before, **configs}
    times = {"untraced": []}
    results = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="etwtrace-capture-time-") as workdir:
        for _ in range(args.rounds):
            times["untraced"].append(untraced(sys.executable, args.seconds))
            for name, python in configs.items():
                results[name].append(capture(python, args.seconds, args.preset,
                                             os.path.join(workdir, name)))
    base = statistics.median(times["untraced"])
    mb = 1 << 20
    print(f"Python {sys.version.split()[0]}, hot.py {args.seconds:g}, preset {args.preset}, "
          f"{args.rounds} rounds (medians)\n")
    print("| etwtrace | call graph | untraced s | capture s | capture / untraced | "
          "perf data MB | perf.script MB | buildid MB | capture MB | capture MB/s | "
          "/tmp files left |")
    print("|---" * 11 + "|")
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        size = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
        left = statistics.median(r[2] for r in runs)
        print(f"| {name} | {runs[0][3]} | {base:.2f} | {wall:.2f} | {wall / base:.2f} | "
              f"{size['perf data'] / mb:.1f} | {size['perf.script'] / mb:.1f} | "
              f"{size['buildid'] / mb:.1f} | {size['all'] / mb:.1f} | "
              f"{size['all'] / mb / args.seconds:.1f} | {left:g} |")


if __name__ == "__main__":
    main()
