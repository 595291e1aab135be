"""A process that execs another Python program (#22): each program (image)
is a process of its own in open_trace, (pid, image) with its own
FunctionIDs, and in every report format; the calls made before the exec
are counted and named after their own functions."""
import json
import re
import subprocess
from collections import Counter

import pytest

import etwtrace
from conftest import (SCRIPTS, client_env, need_client, report_output, run_etwtrace,
                      script_line)

BEFORE, AFTER = 777, 333


def _capture(tmp_path, name, *options):
    path = tmp_path / name
    proc = run_etwtrace("--instrumented", *options, "--capture", path, "--recorder", "builtin",
                        "--", SCRIPTS / "exec_before.py", BEFORE, AFTER)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def untimed(tmp_path_factory):
    """Recorded without call times: folded stacks count calls."""
    return _capture(tmp_path_factory.mktemp("exec"), "untimed", "--no-call-times")


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    return _capture(tmp_path_factory.mktemp("exec"), "timed")


# Where each program's functions are, found by their LINE: markers.
BEFORE_EXEC = f"exec_before.py:{script_line('exec_before.py', 'before_exec')}"
AFTER_EXEC = f"exec_after.py:{script_line('exec_after.py', 'after_exec')}"
BEFORE_MAIN = f"exec_before.py:{script_line('exec_before.py', 'main')}"
AFTER_MAIN = f"exec_after.py:{script_line('exec_after.py', 'main')}"


def _is(label, name, where):
    """Whether a report's frame label is `name (.../where)`."""
    return label.startswith(name + " (") and label.endswith("/" + where + ")")


def _calls_by_image(path):
    """({(pid, image, name): pushes}, {(pid, image, FunctionID): {names}})"""
    names = {}
    pushes = Counter()
    with etwtrace.open_trace(path) as trace:
        for e in trace:
            if e.name == "PythonFunction":
                names.setdefault((e.pid, e.image, e.fields["FunctionID"]), set()).add(
                    e.fields["Name"])
            elif e.name == "PythonFunctionPush":
                (name,) = names[(e.pid, e.image, e.fields["FunctionID"])]
                pushes[(e.pid, e.image, name)] += 1
    return pushes, names


@pytest.mark.versioned
def test_each_image_is_its_own_process_in_open_trace(untimed):
    pushes, names = _calls_by_image(untimed)
    (pid,) = {p for p, _image, _name in pushes}
    assert pushes[(pid, 1, "before_exec")] == BEFORE
    assert pushes[(pid, 2, "after_exec")] == AFTER
    assert pushes[(pid, 2, "before_exec")] == 0 and pushes[(pid, 1, "after_exec")] == 0
    # FunctionIDs are per image: each names one function.
    assert all(len(n) == 1 for n in names.values()), names
    ids = {image: {fid for (_p, i, fid) in names if i == image} for image in (1, 2)}
    assert ids[1] & ids[2], "the images' FunctionIDs overlap, so this checks nothing"


def test_folded_counts_the_calls_before_and_after_the_exec(untimed):
    lines = report_output(untimed, "--format", "folded").splitlines()
    counts = {}
    for line in lines:
        stack, _, value = line.rpartition(" ")
        counts[stack] = int(value)
    (before,) = [s for s in counts if _is(s.split(";")[-1], "before_exec", BEFORE_EXEC)]
    (after,) = [s for s in counts if _is(s.split(";")[-1], "after_exec", AFTER_EXEC)]
    assert _is(before.split(";")[-2], "main", BEFORE_MAIN)
    assert _is(after.split(";")[-2], "main", AFTER_MAIN)
    assert counts[before] == BEFORE and counts[after] == AFTER


def _pid(path):
    (name,) = [p.name for p in (path / "ctf").glob("pid-*") if "." not in p.name]
    return int(name[len("pid-"):])


def test_text_counts_both_programs(timed):
    text = report_output(timed, "--limit", "0")
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].isdigit():
            rows.append((parts[4], int(parts[0])))
    assert [n for label, n in rows if _is(label, "before_exec", BEFORE_EXEC)] == [BEFORE]
    assert [n for label, n in rows if _is(label, "after_exec", AFTER_EXEC)] == [AFTER]


def test_svg_speedscope_and_chrome_name_the_image(timed):
    pid = _pid(timed)
    svg = report_output(timed, "--format", "svg")
    assert f'data-n="process {pid}"' in svg and f'data-n="process {pid} (exec 2)"' in svg

    doc = json.loads(report_output(timed, "--format", "speedscope"))
    names = [p["name"] for p in doc["profiles"]]
    assert f"pid {pid} MainThread" in names and f"pid {pid} (exec 2) MainThread" in names

    chrome = json.loads(report_output(timed, "--format", "chrome"))
    processes = {e["pid"]: e["args"]["name"] for e in chrome["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(processes.values()) == [f"python {pid}", f"python {pid} (exec 2)"]
    by_name = {v: k for k, v in processes.items()}
    calls = Counter((e["pid"], e["name"].split(" (")[0]) for e in chrome["traceEvents"]
                    if e["ph"] == "B")
    assert calls[(by_name[f"python {pid}"], "before_exec")] == BEFORE
    assert calls[(by_name[f"python {pid} (exec 2)"], "after_exec")] == AFTER


def test_pprof_labels_the_image(timed, tmp_path):
    need_client("go")
    out = tmp_path / "calls.pb.gz"
    report_output(timed, "--format", "pprof", "-o", out)
    proc = subprocess.run(["go", "tool", "pprof", "-raw", str(out)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8",
                          env=client_env(HOME=str(tmp_path), PPROF_TMPDIR=str(tmp_path)),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    # -raw prints each sample's values, its labels, then its locations.
    samples = proc.stdout.split("\n\n")[0]
    labelled = re.findall(r"exec:\[(\d+)\]", proc.stdout)
    assert labelled and set(labelled) == {"2"}, samples[:2000]
