"""Threads that run at once (free-threaded builds: no GIL between them) get
one FunctionID per function, keep their own state, and lose no event.
On builds with a GIL these hold too; there they are plain threading tests."""
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from etwtrace.trace import ctf as _ctf
from etwtrace.trace.reader import Event
from conftest import scaled

pytestmark = pytest.mark.versioned

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _run(tmp_path, code, cap="cap"):
    env = dict(os.environ, ETWTRACE_CAPTURE=str(tmp_path / cap))
    if FREE_THREADED:
        env["PYTHON_GIL"] = "0"     # (a build with a GIL refuses the setting)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _folds(path):
    trace_dir = _ctf.trace_dirs(str(path / "ctf"))[0][1]
    version = _ctf.trace_version(trace_dir)
    return [_ctf.fold_stream(s, 0, Event, version) for s in _ctf.stream_files(trace_dir)]


@pytest.mark.skipif(not FREE_THREADED, reason="a free-threaded build (3.13t+)")
def test_the_module_runs_without_the_gil(tmp_path):
    proc = _run(tmp_path, """
        import sys, warnings
        warnings.simplefilter("error")     # the GIL-re-enabled warning fails this
        import etwtrace
        with etwtrace.InstrumentedTracer():
            pass
        print(sys._is_gil_enabled())
    """)
    assert proc.stdout.strip() == "False"


def test_threads_meeting_a_function_at_once_give_it_one_id(tmp_path):
    # 8 threads wait at a barrier, then call a function none has run yet,
    # 1,000 times over (a new function each round).
    _run(tmp_path, """
        import threading, etwtrace
        ROUNDS, THREADS = 1000, 8   # kept under TSan: the race is the point
        functions = []
        for i in range(ROUNDS):
            exec(f"def f{i}():\\n    return {i}")
            functions.append(globals()[f"f{i}"])
        barrier = threading.Barrier(THREADS)
        def run():
            for f in functions:
                barrier.wait()
                f()
        with etwtrace.InstrumentedTracer():
            threads = [threading.Thread(target=run) for _ in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    """)
    folds = _folds(tmp_path / "cap")
    described = {}
    for _, events in folds:
        for e in events:
            if e.name == "PythonFunction" and e.fields["Name"].startswith("f"):
                described.setdefault(e.fields["Name"], []).append(e.fields["FunctionID"])
    assert len(described) == 1000
    assert all(len(ids) == 1 for ids in described.values()), \
        {n: ids for n, ids in described.items() if len(ids) != 1}
    ids = {ids[0] for ids in described.values()}
    assert len(ids) == 1000
    # Every thread's calls name those ids: 8 calls of each function.
    calls = {}
    for folded, _ in folds:
        for node in folded["nodes"]:
            if node[1] in ids:
                calls[node[1]] = calls.get(node[1], 0) + node[2]
    assert calls == {fid: 8 for fid in ids}


def test_eight_threads_keep_exact_counts_in_twenty_runs(tmp_path):
    calls = scaled(200_000)
    code = f"""
        import threading, etwtrace
        def leaf():
            pass
        def middle():
            leaf()
        def work():
            for _ in range({calls}):
                middle()
        with etwtrace.InstrumentedTracer(call_times=False):
            threads = [threading.Thread(target=work) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    """
    for run in range(scaled(20, least=3)):
        cap = f"cap{run}"
        _run(tmp_path, code, cap)
        folds = _folds(tmp_path / cap)
        names = {}
        for _, events in folds:
            for e in events:
                if e.name == "PythonFunction":
                    names[e.fields["FunctionID"]] = e.fields["Name"]
        workers = 0
        for folded, _ in folds:
            assert not folded["truncated"] and not folded["unfinished"]
            assert folded["unmatched_pops"] == folded["mismatched_pops"] == 0, run
            counts = {}
            for node in folded["nodes"]:
                name = names.get(node[1])
                counts[name] = counts.get(name, 0) + node[2]
            if counts.get("work"):
                workers += 1
                assert (counts["work"], counts["middle"], counts["leaf"]) == (1, calls, calls), run
        assert workers == 8, run
