"""Deep stacks in stack mode under perf: how deep perf's stacks reach, and
what each way of taking them costs in capture bytes.

    sudo python bench/deep_stacks.py [--depths 30,100] [--seconds 1]
        [--ways Default,Default/dwarf:16384,CPU/dwarf:16384,CPU/dwarf:65528,CPU/fp]

For this interpreter it prints the C stack bytes a Python call takes under
the stack-mode hook (tests/scripts/stack_bytes.py), then for each way and
depth a table row of: the native frames perf shows per Python frame, the
share of leaf() samples whose stack reaches <module> (and the share marked
[truncated]), and perf.data bytes per sample (CPU samples and context
switches) and per second of the program's run (its first to last CPU
sample).  A way is a preset, Default (CPU samples and context switches)
or CPU (CPU samples alone): as shipped, or with its call graphs forced
(ETWTRACE_CALLGRAPH) as /fp or /dwarf:STACK_COPY_BYTES (Default/dwarf:16384
is how Default recorded before issue 28).  Each capture holds
/tmp/etwtrace-perf.lock while perf runs.
"""
import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "tests", "scripts")
LOCK = "/tmp/etwtrace-perf.lock"

PROFILE = """[Default]
cpu_samples = yes
frequency = 999
context_switches = yes
stack_sample_probe = yes
dwarf_stack_size = {size}

[CPU]
cpu_samples = yes
frequency = 999
context_switches = no
stack_sample_probe = yes
dwarf_stack_size = {size}
"""


def stack_bytes():
    out = subprocess.run([sys.executable, "-m", "etwtrace", "--stack", "--",
                          os.path.join(SCRIPTS, "stack_bytes.py")],
                         stdout=subprocess.PIPE, encoding="utf-8", check=True).stdout
    return int(out)


def capture(way, depth, seconds, workdir):
    path = os.path.join(workdir, f"{way.replace(':', '-').replace('/', '-')}-{depth}")
    env = dict(os.environ)
    preset, _, forced = way.partition("/")
    if forced:
        kind, _, size = forced.partition(":")
        profile = os.path.join(workdir, "profile")
        with open(profile, "w") as f:
            f.write(PROFILE.format(size=size or 65528))
        env.update(ETWTRACE_PROFILE=profile, ETWTRACE_CALLGRAPH=kind)
    cmd = [sys.executable, "-m", "etwtrace", "--stack", "--capture", path, "--recorder", "perf",
           "--preset", preset, "--", os.path.join(SCRIPTS, "deep.py"), str(depth), str(seconds)]
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.monotonic()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)
        wall = time.monotonic() - start
    return path, wall


def measure(path, depth):
    import etwtrace
    with etwtrace.open_trace(path) as trace:
        events = list(trace)
    funcs = [e for e in events if e.name == "PythonFunction"
             and e.fields["SourceFile"].endswith("deep.py")]
    pid = funcs[0].pid
    ranges = [(f.fields["BeginAddress"], f.fields["EndAddress"], f.fields["Name"]) for f in funcs]

    def names(stack):
        found = []
        for i, ip in enumerate(stack):
            for begin, end, name in ranges:
                if begin <= ip < end:
                    found.append((i, name))
        return found

    leaf = whole = marked = 0
    between = []
    samples = 0
    first = last = None
    for e in events:
        if e.name not in ("SampledProfile", "CSwitch"):
            continue
        samples += 1
        if e.name != "SampledProfile" or e.pid != pid:
            continue
        first = e.timestamp if first is None else first
        last = e.timestamp
        found = names(e.stack)
        if not found or found[0][1] != "leaf":
            continue
        leaf += 1
        whole += found[-1][1] == "<module>" and len(found) == depth + 3
        marked += bool(e.fields.get("Truncated"))
        downs = [i for i, name in found if name == "down"]
        between += [b - a for a, b in zip(downs, downs[1:])]
    size = os.path.getsize(os.path.join(path, "perf.data"))
    with open(os.path.join(path, "etwtrace-capture.json")) as f:
        callgraph = json.load(f).get("callgraph")
    return {
        "callgraph": callgraph,
        "native": statistics.median(between) if between else None,
        "leaf": leaf, "whole": whole, "marked": marked,
        "bytes_per_sample": size / max(samples, 1),
        "bytes_per_second": size / max((last - first) / 1e9, 1e-3) if first else 0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="30,100")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--ways", default="Default,Default/dwarf:16384,CPU,CPU/dwarf:16384,"
                                          "CPU/dwarf:65528,CPU/fp")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}: {stack_bytes()} bytes of C stack per Python "
          "call in stack mode\n")
    print("| way | call graph | depth | native frames / Python frame | leaf samples | "
          "reach <module> | marked [truncated] | perf.data bytes / sample | perf.data MB/s | "
          "capture wall s |")
    print("|---" * 10 + "|")
    with tempfile.TemporaryDirectory(prefix="etwtrace-deep-") as workdir:
        for way in args.ways.split(","):
            for depth in map(int, args.depths.split(",")):
                path, wall = capture(way, depth, args.seconds, workdir)
                m = measure(path, depth)
                n = max(m["leaf"], 1)
                print(f"| {way} | {m['callgraph']} | {depth} | {m['native']} | {m['leaf']} | "
                      f"{100 * m['whole'] / n:.1f}% | {100 * m['marked'] / n:.1f}% | "
                      f"{m['bytes_per_sample']:,.0f} | {m['bytes_per_second'] / 1e6:.1f} | "
                      f"{wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
