"""The USDT probes as their real clients read them: bpftrace (every
argument of every probe, strings included) and `perf probe` on the
emitters (strings, not pointers), as the README's recipes show."""

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import etwtrace._etwtrace as native
from conftest import SCRIPTS, client_env, need_client, need_perf

LIBRARY = native.__file__

# Every probe with its arguments, in order: what the README documents.
PROBES = {
    "function": ("function_id", "begin", "end", "line", "file", "name"),
    "c_function": ("function_id", "module", "name"),
    "push": ("function_id", "caller", "caller_line"),
    "pop": ("function_id",),
    "mark": ("text",),
    "mark_start": ("text",),
    "mark_stop": ("text",),
    "stack_sample": ("text",),
    "thread_start": ("thread_id",),
    "thread_stop": ("thread_id",),
    "thread_name": ("thread_id", "name"),
    "task_resume": ("task",),
    "task_suspend": ("task", "depth"),
}


def _root():
    if os.geteuid() != 0:
        if os.environ.get("ETWTRACE_REQUIRE_PERF") == "1":
            pytest.fail("the probe tests must run as root in CI")
        pytest.skip("attaching uprobes needs root")


def test_every_probe_is_in_the_library_with_at_most_six_arguments():
    need_client("readelf")
    notes = subprocess.run(["readelf", "-n", LIBRARY], stdout=subprocess.PIPE,
                           encoding="utf-8", check=True, env=client_env()).stdout
    found = {}
    for name, args in re.findall(r"Provider: etwtrace\s+Name: (\w+)\s+Location: .*?"
                                 r"Arguments: ([^\n]*)", notes, re.S):
        found.setdefault(name, set()).add(len(args.split()))
    assert set(found) == set(PROBES)
    for name, counts in found.items():
        # x86-64 bpftrace reads arg0..arg5: a 7th argument could not be read.
        assert counts == {len(PROBES[name])}, (name, counts)


def test_readme_documents_every_probe_and_its_arguments():
    readme = (SCRIPTS.parent.parent / "README.md").read_text()
    for name, args in PROBES.items():
        row = next((l for l in readme.splitlines() if l.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        assert [a.strip(" `") for a in row.split("|")[2].split(",")] == list(args), row


def _bpftrace(program, command):
    """Runs bpftrace on `program` while `command` runs; its output."""
    bt = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                          start_new_session=True, env=client_env())
    try:
        # bpftrace says "Attaching N probes..." before it attaches them.
        first = bt.stdout.readline()
        while first and not first.startswith("Attaching"):
            first = bt.stdout.readline()
        assert first, "bpftrace ended before attaching"
        time.sleep(1.5)
        proc = subprocess.run(command, cwd=SCRIPTS, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, encoding="utf-8", timeout=120)
        assert proc.returncode == 0, proc.stderr
        time.sleep(0.5)
    finally:
        os.killpg(bt.pid, signal.SIGINT)
        out, _ = bt.communicate(timeout=60)
    return out


def test_bpftrace_reads_every_argument_of_the_probes():
    need_client("bpftrace")
    _root()
    lib = LIBRARY
    program = (
        f'usdt:{lib}:etwtrace:function {{ printf("F %d %d %d %d %s %s\\n", arg0, arg1, arg2, '
        f'arg3, str(arg4), str(arg5)); }} '
        f'usdt:{lib}:etwtrace:push {{ printf("P %d %d %d\\n", arg0, arg1, arg2); }} '
        f'usdt:{lib}:etwtrace:pop {{ printf("O %d\\n", arg0); }} '
        f'usdt:{lib}:etwtrace:mark {{ printf("M %s\\n", str(arg0)); }} '
        f'usdt:{lib}:etwtrace:mark_start {{ printf("S %s\\n", str(arg0)); }} '
        f'usdt:{lib}:etwtrace:mark_stop {{ printf("E %s\\n", str(arg0)); }} '
        f'usdt:{lib}:etwtrace:thread_start {{ printf("T %d\\n", arg0); }} '
        f'usdt:{lib}:etwtrace:thread_name {{ printf("N %d %s\\n", arg0, str(arg1)); }}')
    out = _bpftrace(program, [sys.executable, "-m", "etwtrace", "--instrumented", "--",
                              "report_calls.py"])
    functions = {}
    for line in out.splitlines():
        parts = line.split(" ", 6)
        if parts[0] == "F" and len(parts) == 7 and parts[5].endswith("report_calls.py"):
            fid, begin, end, first_line = map(int, parts[1:5])
            functions[parts[6]] = (fid, first_line)
            assert begin == end == 0        # instrumented mode: no trampolines
    # The names, files and first lines of report_calls.py's functions.
    assert {n: l for n, (_, l) in functions.items()} == {
        "<module>": 1, "leaf": 8, "middle": 12, "top": 17, "worker": 22}
    ids = {fid: name for name, (fid, _) in functions.items()}
    pushes = Counter(ids[int(l.split()[1])] for l in out.splitlines()
                     if l.startswith("P ") and int(l.split()[1]) in ids)
    pops = Counter(ids[int(l.split()[1])] for l in out.splitlines()
                   if l.startswith("O ") and int(l.split()[1]) in ids)
    assert pushes == {"<module>": 1, "top": 2, "middle": 4, "leaf": 30, "worker": 1}
    assert pops == pushes
    # A push names its caller and the caller's line: leaf from middle's loop.
    leaf_callers = {(ids.get(int(l.split()[2])), int(l.split()[3])) for l in out.splitlines()
                    if l.startswith("P ") and ids.get(int(l.split()[1])) == "leaf"}
    assert leaf_callers == {("middle", 14)}
    assert "M start mark" in out.splitlines()
    assert "S worker range" in out.splitlines() and "E worker range" in out.splitlines()
    assert any(l.startswith("T ") for l in out.splitlines())
    # report_calls.py's worker thread, by the name threading gave it.
    assert any(re.fullmatch(r"N \d+ worker", l) for l in out.splitlines()), out


def test_bpftrace_reads_stack_marks_and_their_text():
    need_client("bpftrace")
    _root()
    program = f'usdt:{LIBRARY}:etwtrace:stack_sample {{ printf("K %s\\n", str(arg0)); }}'
    out = _bpftrace(program, [sys.executable, "-m", "etwtrace", "--", "by_arg.py", "a", "c"])
    assert [l for l in out.splitlines() if l.startswith("K ")] == ["K a", "K c"]


def test_perf_probe_recipe_prints_names_not_pointers(tmp_path):
    """The README's `perf probe` recipe: the emitter's parameters by name,
    strings as strings."""
    need_perf()
    perf = "perf"
    event = "etwtrace_test:py_function"
    subprocess.run([perf, "probe", "-q", "-d", event], stderr=subprocess.DEVNULL)
    added = subprocess.run([perf, "probe", "-q", "-x", LIBRARY, "-a",
                            "etwtrace_test:py_function=etw_emit_function function_id line "
                            "file:string name:string"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert added.returncode == 0, added.stderr
    try:
        data = tmp_path / "probe.data"
        rec = subprocess.run([perf, "record", "-q", "-e", event, "-o", data, "--",
                              sys.executable, "-m", "etwtrace", "--", "hot.py"],
                             cwd=SCRIPTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             encoding="utf-8")
        assert rec.returncode == 0, rec.stderr
        script = subprocess.run([perf, "script", "-i", data], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, encoding="utf-8").stdout
    finally:
        subprocess.run([perf, "probe", "-q", "-d", event], stderr=subprocess.DEVNULL)
    named = set(re.findall(r'line=(0x[0-9a-f]+) file_string="([^"]*)" name_string="([^"]*)"',
                           script))
    assert {(int(l, 16), n) for l, f, n in named if f.endswith("hot.py")} >= {
        (5, "inner"), (12, "outer"), (1, "<module>")}
