"""Helpers of the recording-session tests (test_session.py, test_attach.py):
a session of each test's own (Box), processes run as user nobody, and
what their traces must show.  The `box` fixture is in conftest.py."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import NOBODY_UID, SCRIPTS, name_stack, python_functions

NOBODY = NOBODY_UID
REQUIRE_NOBODY = os.environ.get("ETWTRACE_REQUIRE_NOBODY") == "1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the machine's recording session is root's (CI is root)")


def as_user(user):
    """Popen arguments that run a process as `user` (None: as we are), with
    that user's group alone."""
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def _nobody_reason():
    try:
        r = subprocess.run([sys.executable, "-c", "import etwtrace._etwtrace"], **as_user(NOBODY),
                           cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    except (OSError, subprocess.SubprocessError) as ex:
        return str(ex)
    if r.returncode != 0:
        last = (r.stdout.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return f"user nobody cannot run {sys.executable} ({last}); .ci/run opens /root for it"
    return None


def need_nobody():
    reason = _nobody_reason() if os.geteuid() == 0 else "not root"
    if reason is None:
        return
    if REQUIRE_NOBODY:
        pytest.fail(f"user nobody is required here (ETWTRACE_REQUIRE_NOBODY=1) but: {reason}")
    pytest.skip(reason)


class Box:
    """One test's session directory, capture paths and worker programs."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="etwtrace-session-test-", dir="/tmp")
        os.chmod(self.root, 0o755)
        self.shared = os.path.join(self.root, "shared")     # workers of any user write here
        os.mkdir(self.shared)
        os.chmod(self.shared, 0o1777)
        self.control = os.path.join(self.root, "control")
        self.env = dict(os.environ, ETWTRACE_SESSION_DIR=self.control)
        self.script = os.path.join(self.root, "session_worker.py")
        shutil.copy(SCRIPTS / "session_worker.py", self.script)
        os.chmod(self.script, 0o644)
        self.workers = []
        self.count = 0

    def path(self, name):
        return os.path.join(self.root, name)

    def record(self, *args, user=None, timeout=300):
        return subprocess.run([sys.executable, "-m", "etwtrace", "record", *map(str, args)],
                              env=self.env, cwd=self.root, **as_user(user), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
                              timeout=timeout)

    def start(self, path, *options, user=None):
        r = self.record("start", path, *options, user=user)
        assert r.returncode == 0, r.stderr
        return r

    def stop(self, user=None):
        r = self.record("stop", user=user)
        assert r.returncode == 0, r.stderr
        return r

    def worker(self, mode="stack", calls=None, user=None):
        """Starts session_worker.py under python -m etwtrace (no capture of
        its own) and waits until it runs; returns (process, stop file)."""
        self.count += 1
        stop = os.path.join(self.shared, f"stop-{self.count}")
        ready = os.path.join(self.shared, f"ready-{self.count}")
        args = [sys.executable, "-m", "etwtrace", f"--{mode}", "--", self.script, stop, ready]
        if calls:
            args.append(str(calls))
        proc = subprocess.Popen(args, env=self.env, cwd=self.root, **as_user(user),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                encoding="utf-8", errors="replace")
        self.workers.append((proc, stop))
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.02)
        return proc, stop

    @staticmethod
    def finish(proc, stop):
        open(stop, "w").close()
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err

    def cleanup(self):
        for proc, stop in self.workers:
            if proc.poll() is None:
                open(stop, "w").close()
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
        if os.path.exists(os.path.join(self.control, "state.json")):
            self.record("stop")
        shutil.rmtree(self.root, ignore_errors=True)


def etwtrace_messages(stderr):
    """etwtrace's lines in a traced program's stderr, but for the refusal of
    a /tmp perf file another user left under the same pid: with pid_max at
    32768 and thousands of perf captures keeping theirs (README), a
    process of nobody may meet one of root's, and refusing it is right."""
    return [line for line in stderr.splitlines() if "etwtrace" in line
            and "exists and is not this user's file" not in line]


def wait_joined(box, capture, pids, timeout=10):
    """Waits until every process of `pids` records into the session (its
    trace directory is there): processes look every 200 ms."""
    staging = os.path.join(capture, ".session", "ctf")
    deadline = time.monotonic() + timeout
    while True:
        present = set(os.listdir(staging)) if os.path.isdir(staging) else set()
        if all(f"pid-{pid}" in present for pid in pids):
            return
        assert time.monotonic() < deadline, f"processes {pids} did not join: {present}"
        time.sleep(0.05)


def stacks_of(events, pid):
    funcs = [f for f in python_functions(events, "session_worker.py") if f.pid == pid]
    return [name_stack(e.stack, funcs) for e in events
            if e.pid == pid and e.name == "PythonStackSample"]


def assert_inner_above_outer(events, pid):
    stacks = [s for s in stacks_of(events, pid) if s]
    assert stacks, f"no stack of process {pid} maps to its functions"
    for names in stacks:
        assert names[:2] == ["inner", "outer"], names


def one_line_error(r, text):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert text in lines[0], lines[0]
