"""An --every session left running with processes coming and going
(issue 26, item 5): does anything grow?  Written to docs/BENCHMARKS.md.

For `--minutes`, a machine-wide `record start PATH --sampled --every 10`
runs while:
  * a new short-lived Python starts every second, spends about 1.5 s in a
    function named after its number (churn_N), and exits (the session
    looks for new processes once a second: one that lives less may end
    unseen);
  * one long-lived Python starts and ends a thread every second, each
    thread busy for 0.5 s in `thread_work`.
Every 10 s it reads the session daemon's memory (VmRSS) and the entries of
the BPF program's `targets` map (one per process sampled; bpftool, when
installed).  At the end, each profile is read back with
`go tool pprof -traces`: how many of the short-lived processes that were
sampled have their function named in them.

Run as root; it takes /tmp/etwtrace-perf.lock while the session runs:
    python bench/every_soak.py [--minutes 5] [--python /usr/bin/python3]
"""

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

LOCK = "/tmp/etwtrace-perf.lock"
SHORT = """
import sys, time
def churn_{n}():
    s = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        for i in range(1000):
            s += i
churn_{n}()
"""
LONG = """
import sys, threading, time
def thread_work():
    s, end = 0, time.monotonic() + 0.5
    while time.monotonic() < end:
        s += 1
end = time.monotonic() + float(sys.argv[1])
print("ready", flush=True)
while time.monotonic() < end:
    t = threading.Thread(target=thread_work)
    t.start()
    time.sleep(1)
    t.join()
"""


def daemon_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def targets_entries(pid):
    """Entries of the daemon's `targets` BPF map, or None without bpftool."""
    if shutil.which("bpftool") is None:
        return None
    held = set()        # the ids of the maps the daemon holds (its fds' fdinfo)
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                held.update(int(line.split()[1]) for line in f if line.startswith("map_id:"))
        except OSError:
            continue
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], stdout=subprocess.PIPE,
                                     text=True).stdout or "[]")
    ids = [m["id"] for m in maps if m.get("name") == "targets" and m["id"] in held]
    if not ids:
        return None
    dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(ids[0])],
                          stdout=subprocess.PIPE, text=True).stdout
    return len(json.loads(dump or "[]"))


def named_in_profiles(profiles, pids):
    """Of `pids` (short-lived process -> its number), those with samples in
    the profiles, and those of them whose churn_N function is named."""
    sampled, named = set(), set()
    for path in profiles:
        text = subprocess.run(["go", "tool", "pprof", "-traces", path], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout
        for block in text.split("-----------+-------------------------------------------------------"):
            found = re.search(r"^\s*pid:\s+(\d+)$", block, re.M)
            if not found or int(found.group(1)) not in pids:
                continue
            pid = int(found.group(1))
            sampled.add(pid)
            if f"churn_{pids[pid]}" in block:
                named.add(pid)
    return sampled, named


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--python", default="/usr/bin/python3")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("every_soak: run as root (a machine-wide sampled session)")
    seconds = args.minutes * 60
    tmp = tempfile.mkdtemp(prefix="etwtrace-every-soak-")
    env = dict(os.environ, ETWTRACE_SESSION_DIR=os.path.join(tmp, "control"))
    path = os.path.join(tmp, "cap")
    record = [sys.executable, "-m", "etwtrace", "record"]
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    long_lived = subprocess.Popen([args.python, "-c", LONG, str(seconds + 30)],
                                  stdout=subprocess.PIPE, text=True)
    assert long_lived.stdout.readline().strip() == "ready"
    short = {}          # pid -> its number
    readings = []       # (seconds in, daemon RSS, targets entries)
    try:
        subprocess.run([*record, "start", path, "--sampled", "--every", "10"], env=env,
                       check=True, stderr=subprocess.PIPE)
        with open(os.path.join(env["ETWTRACE_SESSION_DIR"], "state.json")) as f:
            daemon = json.load(f)["daemon"]
        began = time.monotonic()
        running = []
        n = 0
        next_reading = began
        while time.monotonic() - began < seconds:
            n += 1
            proc = subprocess.Popen([args.python, "-c", SHORT.format(n=n)])
            short[proc.pid] = n
            running.append(proc)
            running = [p for p in running if p.poll() is None]
            if time.monotonic() >= next_reading:
                readings.append((round(time.monotonic() - began), daemon_rss(daemon),
                                 targets_entries(daemon)))
                next_reading += 10
            time.sleep(1)
        for p in running:
            p.wait()
        time.sleep(1.5)
        readings.append((round(time.monotonic() - began), daemon_rss(daemon),
                         targets_entries(daemon)))
        subprocess.run([*record, "stop"], env=env, check=True, stderr=subprocess.PIPE)
    finally:
        long_lived.kill()
        long_lived.wait()
        os.close(lock)
    profiles = [os.path.join(path, "profiles", p)
                for p in sorted(os.listdir(os.path.join(path, "profiles")))]
    sampled, named = named_in_profiles(profiles, short)
    with open(os.path.join(path, "etwtrace-capture.json")) as f:
        manifest = json.load(f)
    print(f"{args.minutes:g} minutes, {len(short)} short-lived processes, "
          f"{len(profiles)} profiles, {manifest.get('samples')} samples "
          f"({manifest.get('samples_lost')} lost)")
    print("| s in | daemon RSS MiB | targets map entries |")
    print("|---|---|---|")
    for at, rss, entries in readings:
        print(f"| {at} | {rss / 2**20:.1f} | {'' if entries is None else entries} |")
    print(f"short-lived processes with samples: {len(sampled)}; "
          f"with their function named: {len(named)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
