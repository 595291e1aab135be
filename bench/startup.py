"""Start-up costs (issue #8): `import etwtrace`, `python -m etwtrace --
script` over plain `python script`, and an interpreter start through the
etwtrace.pth of `--enable VAR` with VAR unset, over one without it.

    python3 bench/startup.py [--runs 40]

Each command runs `--runs` times, interleaved; a command's time is its best
run (wall time of the whole process).  The .pth case uses a fresh venv."""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def best(cmds, runs, env=None):
    times = {name: float("inf") for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            times[name] = min(times[name], time.perf_counter() - t0)
    return {name: t * 1000 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    python = os.path.realpath(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "empty.py")
        with open(script, "w") as f:
            f.write("pass\n")
        venv = os.path.join(tmp, "venv")
        subprocess.run([python, "-m", "venv", "--system-site-packages", venv], check=True)
        vpython = os.path.join(venv, "bin", "python")
        env = {k: v for k, v in os.environ.items() if k != "BENCH_TRACE"}
        plain = best({
            "python -c pass": [python, "-c", "pass"],
            "python -c 'import etwtrace'": [python, "-c", "import etwtrace"],
            "python script.py": [python, script],
            "python -m etwtrace -- script.py": [python, "-m", "etwtrace", "--", script],
            "venv python script.py (no .pth)": [vpython, script],
        }, args.runs, env)
        subprocess.run([vpython, "-m", "etwtrace", "--enable", "BENCH_TRACE"], check=True,
                       stdout=subprocess.DEVNULL)
        pth = best({"venv python script.py (etwtrace.pth, BENCH_TRACE unset)": [vpython, script]},
                   args.runs, env)
    plain.update(pth)
    print(f"Python {sys.version.split()[0]}; best of {args.runs} runs\n")
    print("| command | ms |")
    print("|---|---|")
    for name, ms in plain.items():
        print(f"| `{name}` | {ms:.1f} |")
    print()
    imported = plain["python -c 'import etwtrace'"] - plain["python -c pass"]
    print(f"- `import etwtrace`: {imported:+.1f} ms")
    print(f"- `python -m etwtrace --`: "
          f"{plain['python -m etwtrace -- script.py'] - plain['python script.py']:+.1f} ms")
    print(f"- etwtrace.pth with its variable unset: "
          f"{pth['venv python script.py (etwtrace.pth, BENCH_TRACE unset)'] - plain['venv python script.py (no .pth)']:+.1f} ms")


if __name__ == "__main__":
    main()
