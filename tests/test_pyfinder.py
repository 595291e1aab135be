"""How a sampled session and --sampled -- script.py find the Python
processes to sample (_pyfinder): new ones, ones that exec into Python,
ones whose interpreter is not readable yet, and ones that end.  No BPF
here: add and remove are recorded, not sampled."""

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

from conftest import client_env, need_sampler_module, need_tool
from etwtrace.sampled import finder as _pyfinder
from etwtrace.sampled.remote import RemoteError

pytestmark = pytest.mark.versioned


class Calls:
    def __init__(self, refuse_first=()):
        self.added, self.removed = [], []
        self.refuse = set(refuse_first)

    def add(self, pid):
        if pid in self.refuse:
            self.refuse.discard(pid)
            raise RemoteError(f"process {pid}: not readable yet")
        self.added.append(pid)

    def remove(self, pid):
        self.removed.append(pid)


def _exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _maps(pid):
    with open(f"/proc/{pid}/maps", "rb") as f:
        return f.read()


def _wait_exe(pid, suffix):
    """Until the process has exec'd into `suffix` and its files are mapped
    (/proc/PID/exe names the new image before exec maps it)."""
    deadline = time.monotonic() + 10
    while True:
        exe = os.readlink(f"/proc/{pid}/exe")
        if exe.endswith(suffix) and os.fsencode(exe) in _maps(pid):
            return
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_children_found_retried_followed_into_exec_and_forgotten():
    python = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE, env=client_env())
    other = subprocess.Popen(["sleep", "30"], env=client_env())
    # A shell that becomes Python when told (a line on its stdin).
    shell = subprocess.Popen(["sh", "-c", f'read x; exec "{sys.executable}" -c "import sys; '
                              'sys.stdin.read()"'], stdin=subprocess.PIPE, env=client_env())
    try:
        _wait_exe(python.pid, os.path.basename(os.path.realpath(sys.executable)))
        finder = _pyfinder.PythonFinder(root=os.getpid())
        calls = Calls(refuse_first={python.pid})
        finder.scan(calls.add, calls.remove)
        # Not readable the first time: tried again at the next scan, and
        # listed as not sampled until then (a session may end first).
        assert calls.added == [] and python.pid in finder.skipped
        finder.scan(calls.add, calls.remove)
        assert calls.added == [python.pid] and python.pid not in finder.skipped
        finder.scan(calls.add, calls.remove)
        assert calls.added == [python.pid]      # once
        # The shell execs into Python: found as a new process.
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        _wait_exe(shell.pid, os.path.basename(os.path.realpath(sys.executable)))
        finder.scan(calls.add, calls.remove)
        assert calls.added == [python.pid, shell.pid]
        assert other.pid not in calls.added
        # Ended: removed, once.
        python.stdin.close()
        python.wait()
        finder.scan(calls.add, calls.remove)
        finder.scan(calls.add, calls.remove)
        assert calls.removed == [python.pid]
    finally:
        for p in (python, other, shell):
            p.kill()
            p.communicate()     # closes its stdin pipe too


def test_a_python_it_cannot_read_is_listed_with_why():
    python = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE, env=client_env())
    try:
        _wait_exe(python.pid, os.path.basename(os.path.realpath(sys.executable)))
        finder = _pyfinder.PythonFinder(root=os.getpid())
        refused = []

        def add(pid):
            refused.append(pid)
            raise RemoteError(f"process {pid} runs Python 3.11")

        _pyfinder.SETTLE_SECONDS, settle = 0.0, _pyfinder.SETTLE_SECONDS
        try:
            finder.scan(add, lambda pid: None)
        finally:
            _pyfinder.SETTLE_SECONDS = settle
        assert finder.skipped == {python.pid: f"process {python.pid} runs Python 3.11"}
        finder.scan(add, lambda pid: None)
        assert refused == [python.pid]          # decided: not tried again
    finally:
        python.kill()
        python.communicate()


def test_past_skipped_kept_the_pythons_it_cannot_read_are_counted(monkeypatch):
    """A session left running among Pythons it cannot read keeps a bounded
    record: SKIPPED_KEPT of them by pid and why, the rest counted, once each
    however often they are tried again."""
    monkeypatch.setattr(_pyfinder, "SKIPPED_KEPT", 1)
    pythons = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                stdin=subprocess.PIPE, env=client_env()) for _ in range(3)]
    try:
        for p in pythons:
            _wait_exe(p.pid, os.path.basename(os.path.realpath(sys.executable)))
        finder = _pyfinder.PythonFinder(root=os.getpid())

        def add(pid):
            raise RemoteError(f"process {pid} is not readable yet")

        for _ in range(3):      # tried again: within SETTLE_SECONDS of being seen
            finder.scan(add, lambda pid: None)
        assert len(finder.skipped) == 1 and next(iter(finder.skipped)) in [p.pid for p in pythons]
        assert finder.skipped_more == 2
    finally:
        for p in pythons:
            p.kill()
            p.communicate()


def test_a_process_caught_inside_exec_is_looked_at_again(monkeypatch):
    python = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE, env=client_env())
    try:
        _wait_exe(python.pid, os.path.basename(os.path.realpath(sys.executable)))
        real_looks_like_python = _pyfinder._looks_like_python
        assert real_looks_like_python(python.pid, os.readlink(f"/proc/{python.pid}/exe"))
        # A path the process has not mapped: what exec looks like before it maps the image.
        assert real_looks_like_python(python.pid, "/no/such/python") is None
        looks = iter([None, True])      # inside exec at the first scan, Python at the second
        monkeypatch.setattr(_pyfinder, "_looks_like_python", lambda pid, exe: next(looks))
        finder = _pyfinder.PythonFinder(root=os.getpid())
        calls = Calls()
        finder.scan(calls.add, calls.remove)
        assert calls.added == [] and not finder.skipped
        finder.scan(calls.add, calls.remove)
        assert calls.added == [python.pid]
    finally:
        python.kill()
        python.communicate()


# Finds a new Python child and reads it as the sampler does when it adds
# one (its interpreter, symbols and a capture trace), between two marks.
_FIND_AND_READ = """
    import os, subprocess, sys, tempfile
    from etwtrace.sampled import finder, sampler
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); "
                              "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\\n"
    recorder = sampler.SampledRecorder(tempfile.mkdtemp(dir=sys.argv[1]), sampler.load_sampler())
    found = finder.PythonFinder(root=os.getpid())
    os.write(2, b"scan begins\\n")
    found.scan(recorder.add, recorder.forget)
    os.write(2, b"scan ends\\n")
    assert list(recorder.targets) == [child.pid], (recorder.targets, child.pid)
    recorder.close()
    child.stdin.close()
    child.wait()
"""


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="a build with a GIL never spins on its locks")
def test_finding_and_reading_a_new_process_never_yields_the_cpu(tmp_path):
    """On free-threaded 3.13 a buffered file's close calls sched_yield()
    40 times (sampled/unbuffered.py); with the sampled programs busy on
    every CPU each yield left the sampler a time slice behind, and a
    program's workers were found seconds late.  The finder and the reads
    of a new process make no such call."""
    need_tool("strace")
    need_sampler_module()
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-o", log, "-e", "trace=sched_yield,write", sys.executable,
                           "-c", textwrap.dedent(_FIND_AND_READ), tmp_path],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    begin = next(i for i, c in enumerate(calls) if re.match(r'write\(2, "scan begins', c))
    end = next(i for i, c in enumerate(calls) if re.match(r'write\(2, "scan ends', c))
    # The interpreter's own start yields (the probe this counts with).
    assert any(c.startswith("sched_yield(") for c in calls[:begin])
    assert [c for c in calls[begin:end] if c.startswith("sched_yield(")] == []
