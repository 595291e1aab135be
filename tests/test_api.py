"""The Python API, run in child interpreters so each test has a fresh tracer."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import etwtrace
from conftest import name_stack, python_functions

pytestmark = pytest.mark.versioned


def run_python(code, tmp_path, capture=True):
    env = dict(os.environ)
    cap = tmp_path / "cap"
    if capture:
        env["ETWTRACE_CAPTURE"] = str(cap)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          cwd=tmp_path, timeout=120)
    return proc, cap


def events_of(cap):
    with etwtrace.open_trace(cap) as trace:
        return list(trace)


def test_marks_while_inactive_warn_and_do_nothing(tmp_path):
    proc, _ = run_python("""
        import warnings, etwtrace
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            etwtrace.mark("x")
            with etwtrace.mark_range("y"):
                pass
            etwtrace._mark_stack("z")
        print(len(w), all(issubclass(x.category, RuntimeWarning) for x in w))
        print(etwtrace.is_active())
    """, tmp_path, capture=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "True", "False"]


def test_marks_and_ranges_are_recorded(tmp_path):
    proc, cap = run_python("""
        import etwtrace
        with etwtrace.StackSamplingTracer() as t:
            assert etwtrace.is_active()
            etwtrace.mark("plain")
            with etwtrace.mark_range("range"):
                t.mark("inside")
        assert not etwtrace.is_active()
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    marks = [(e.opcode, e.fields["Mark"]) for e in events_of(cap) if e.name == "PythonMark"]
    assert marks == [(None, "plain"), ("start", "range"), (None, "inside"), ("stop", "range")]


def test_second_tracer_is_refused(tmp_path):
    proc, _ = run_python("""
        import etwtrace
        etwtrace.StackSamplingTracer().enable()
        try:
            etwtrace.StackSamplingTracer().enable()
        except RuntimeError as ex:
            print("refused:", ex)
    """, tmp_path, capture=False)
    assert proc.returncode == 0, proc.stderr
    assert "refused: a tracer is already enabled" in proc.stdout


def test_ignore_and_include(tmp_path):
    (tmp_path / "ignored_mod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "other_mod.py").write_text("def g():\n    return 2\n")
    proc, cap = run_python("""
        import os, etwtrace, ignored_mod, other_mod
        t = etwtrace.StackSamplingTracer()
        t.ignore(os.path.abspath("ignored_mod.py"), os.path.abspath("other_mod.py"))
        t.include(os.path.abspath("other_mod.py"))
        with t:
            ignored_mod.f()
            other_mod.g()
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {e.fields["Name"] for e in events_of(cap) if e.name == "PythonFunction"}
    assert "g" in names
    assert "f" not in names


def test_tracer_ignores_its_own_files_and_threading(tmp_path):
    proc, cap = run_python("""
        import threading, etwtrace
        with etwtrace.StackSamplingTracer():
            th = threading.Thread(target=lambda: None)
            th.start(); th.join()
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = {e.fields["SourceFile"] for e in events_of(cap) if e.name == "PythonFunction"}
    pkg = os.path.dirname(etwtrace.__file__)
    assert not any(f.startswith(pkg) for f in files)
    assert not any(f.endswith("threading.py") for f in files)


def test_enable_disable_enable_reannounces(tmp_path):
    proc, cap = run_python("""
        import etwtrace
        def f():
            etwtrace._mark_stack("s")
        t = etwtrace.StackSamplingTracer()
        t.enable(); f(); t.disable()
        t.enable(); f(); t.disable()
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = events_of(cap)
    funcs = python_functions(events, "<string>")
    samples = [name_stack(e.stack, funcs) for e in events if e.name == "PythonStackSample"]
    assert samples == [["f"], ["f"]]
    starts = [e for e in events if e.name == "PythonThread" and e.opcode == "start"]
    stops = [e for e in events if e.name == "PythonThread" and e.opcode == "stop"]
    assert len(starts) == 2 and len(stops) == 2
    ids = {e.fields["FunctionID"] for e in funcs if e.fields["Name"] == "f"}
    assert len(ids) == 1, "a function keeps its ID across sessions"


def test_fork_child_is_recorded_under_its_own_pid(tmp_path):
    proc, cap = run_python("""
        import os, etwtrace
        def child_work():
            etwtrace._mark_stack("child")
        def parent_work():
            etwtrace._mark_stack("parent")
        with etwtrace.StackSamplingTracer():
            pid = os.fork()
            if pid == 0:
                child_work()
                etwtrace._tracer.disable()
                os._exit(0)
            os.waitpid(pid, 0)
            parent_work()
            print(os.getpid(), pid)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    parent_pid, child_pid = map(int, proc.stdout.split())
    events = events_of(cap)
    funcs = [e for e in events if e.name == "PythonFunction"]
    by_mark = {e.fields["Mark"]: e for e in events if e.name == "PythonStackSample"}
    assert by_mark["child"].pid == child_pid
    assert by_mark["parent"].pid == parent_pid
    assert name_stack(by_mark["child"].stack, funcs, child_pid) == ["child_work"]
    assert name_stack(by_mark["parent"].stack, funcs, parent_pid) == ["parent_work"]
    assert {e.pid for e in events} == {parent_pid, child_pid}


def test_spawned_python_child_is_traced_into_the_capture(tmp_path):
    child = tmp_path / "child.py"
    child.write_text("import etwtrace\ndef in_child():\n    etwtrace._mark_stack('spawned')\nin_child()\n")
    parent = tmp_path / "parent.py"
    parent.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, {str(child)!r}], check=True)\n")
    cap = tmp_path / "cap"
    proc = subprocess.run([sys.executable, "-m", "etwtrace", "--capture", cap, "--recorder", "builtin",
                           "--", parent], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          encoding="utf-8", timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = events_of(cap)
    sample = next(e for e in events if e.name == "PythonStackSample")
    funcs = [e for e in events if e.name == "PythonFunction"]
    assert sample.fields["Mark"] == "spawned"
    assert name_stack(sample.stack, funcs, sample.pid)[0] == "in_child"
    assert len({e.pid for e in events}) == 2


def test_events_recorded_before_a_crash_are_kept(tmp_path):
    proc, cap = run_python("""
        import os, signal, etwtrace
        def before_crash():
            etwtrace._mark_stack("before")
        etwtrace.StackSamplingTracer().enable()
        etwtrace.mark("still here")
        before_crash()
        os.kill(os.getpid(), signal.SIGSEGV)
    """, tmp_path)
    assert proc.returncode == -signal.SIGSEGV
    events = events_of(cap)
    assert [e.fields["Mark"] for e in events if e.name == "PythonMark"] == ["still here"]
    assert [e.fields["Mark"] for e in events if e.name == "PythonStackSample"] == ["before"]


def test_crash_with_faulthandler_still_reports_and_keeps_events(tmp_path):
    proc, cap = run_python("""
        import faulthandler, os, signal, etwtrace
        faulthandler.enable()
        etwtrace.StackSamplingTracer().enable()
        etwtrace.mark("kept")
        os.kill(os.getpid(), signal.SIGSEGV)
    """, tmp_path)
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error" in proc.stderr
    assert [e.fields["Mark"] for e in events_of(cap) if e.name == "PythonMark"] == ["kept"]
