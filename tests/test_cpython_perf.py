"""Against CPython's own perf support (3.12+ `-X perf`, 3.13+ `-X perf_jit`):
perf must see the same Python functions with etwtrace as with CPython's."""
import re
import subprocess
import sys

import pytest

from conftest import SCRIPTS, need_perf, run_etwtrace

pytestmark = pytest.mark.versioned

SCRIPT_FUNCTIONS = {"inner", "outer"}


def _perf():
    from etwtrace.capture import perf as _perf
    return _perf.find_perf()


def _script_functions(perf_script_text):
    """Python functions of hot.py that perf named (CPython's `py::NAME:FILE`
    or etwtrace's map symbols), as bare names."""
    found = set()
    for sym in re.findall(r"py::([^\s:]+):\S*hot\.py", perf_script_text):
        found.add(sym)
    return found & SCRIPT_FUNCTIONS


def _record(tmp_path, name, interpreter_options, jit):
    perf = _perf()
    data = tmp_path / f"{name}.data"
    callgraph = ["--call-graph", "dwarf"] if jit else ["-g"]
    subprocess.run([perf, "record", "-q", "-k", "CLOCK_MONOTONIC", *callgraph, "-o", str(data),
                    "--", sys.executable, *interpreter_options, str(SCRIPTS / "hot.py"), "1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    if jit:
        injected = tmp_path / f"{name}.jit.data"
        subprocess.run([perf, "inject", "--jit", "-i", str(data), "-o", str(injected)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        data = injected
    return subprocess.run([perf, "script", "-i", str(data)], check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, encoding="utf-8", errors="replace",
                          timeout=300).stdout


def _etwtrace_functions(tmp_path):
    cap = tmp_path / "etw"
    proc = run_etwtrace("--capture", cap, "--recorder", "perf", "--preset", "CPU", "--",
                        SCRIPTS / "hot.py", "1")
    assert proc.returncode == 0, proc.stderr
    folded = run_etwtrace("report", cap, "--format", "folded")
    assert folded.returncode == 0, folded.stderr
    names = set()
    for line in folded.stdout.splitlines():
        for frame in line.rsplit(" ", 1)[0].split(";"):
            if re.search(r"hot\.py:\d+\)$", frame):
                names.add(frame.split(" (")[0])
    return names & SCRIPT_FUNCTIONS


@pytest.mark.skipif(sys.version_info < (3, 12), reason="CPython's own perf support needs 3.12+")
def test_same_python_functions_as_x_perf(tmp_path):
    need_perf()
    theirs = _script_functions(_record(tmp_path, "xperf", ["-X", "perf"], jit=False))
    # -X perf is unwound by frame pointers alone: where libpython has none
    # (Debian's 3.14), perf may miss the outer Python frames; etwtrace's
    # capture unwinds by DWARF there and must name them all.
    assert "inner" in theirs
    assert _etwtrace_functions(tmp_path) == SCRIPT_FUNCTIONS


@pytest.mark.skipif(sys.version_info < (3, 13), reason="CPython's jitdump (-X perf_jit) needs 3.13+")
def test_same_python_functions_as_x_perf_jit(tmp_path):
    need_perf()
    theirs = _script_functions(_record(tmp_path, "xperfjit", ["-X", "perf_jit"], jit=True))
    assert theirs == SCRIPT_FUNCTIONS
    assert _etwtrace_functions(tmp_path) == theirs
