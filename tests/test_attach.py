"""attach PID / detach PID: tracing a running CPython 3.14+ through
sys.remote_exec, into the recording session that runs; and the one-line
errors everywhere else (no such process, not Python, too old a Python,
another user's process, no session)."""

import os
import subprocess
import sys
import time

import pytest

import etwtrace
from sessions import NOBODY, as_user, need_nobody, one_line_error, stacks_of, wait_joined

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="attaching to processes of any user needs root (CI is root)")
pytestmark = [pytestmark, pytest.mark.versioned]

REMOTE_EXEC = sys.version_info >= (3, 14)


def attach(box, *args, user=None):
    return subprocess.run([sys.executable, "-m", "etwtrace", *map(str, args)], env=box.env,
                          cwd=box.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          encoding="utf-8", errors="replace", timeout=120, **as_user(user))


def untraced(box, user=None):
    """session_worker.py run by plain Python (not launched by etwtrace)."""
    box.count += 1
    stop = os.path.join(box.shared, f"stop-{box.count}")
    ready = os.path.join(box.shared, f"ready-{box.count}")
    proc = subprocess.Popen([sys.executable, "-W", "ignore", box.script, stop, ready],
                            env=box.env, cwd=box.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
                            **as_user(user))
    box.workers.append((proc, stop))
    deadline = time.monotonic() + 60
    while not os.path.exists(ready):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    return proc, stop


@pytest.mark.skipif(not REMOTE_EXEC, reason="sys.remote_exec is CPython 3.14+")
@pytest.mark.parametrize("mode", ["stack", "instrumented"])
def test_attach_and_detach_a_running_program(box, mode):
    capture = box.path("capture")
    proc, stop = untraced(box)
    box.start(capture, "--recorder", "builtin")
    extra = ["--instrumented"] if mode == "instrumented" else []
    r = attach(box, "attach", proc.pid, *extra)
    assert r.returncode == 0 and "records into session" in r.stderr, r.stderr
    wait_joined(box, capture, [proc.pid])
    one_line_error(attach(box, "attach", proc.pid), "traced already")
    time.sleep(0.5)
    r = attach(box, "detach", proc.pid)
    assert r.returncode == 0 and "no longer traced" in r.stderr, r.stderr
    one_line_error(attach(box, "detach", proc.pid), "not traced by etwtrace")
    time.sleep(0.2)
    code, out, err = box.finish(proc, stop)
    assert code == 0 and out.startswith("rounds"), err
    box.stop()
    events = list(etwtrace.open_trace(capture))
    if mode == "stack":
        # outer() was running before the attach, so no trampoline carries
        # it (frames entered later do): stacks begin inner, as far as the
        # trace can name.
        stacks = [s for s in stacks_of(events, proc.pid) if s]
        assert len(stacks) >= 5 and all(s[0] == "inner" for s in stacks), stacks[:3]
    else:
        names = {e.fields["Name"] for e in events if e.name == "PythonFunction"}
        pushes = [e for e in events if e.name == "PythonFunctionPush"]
        assert {"inner", "outer"} <= names and len(pushes) > 50


def test_attach_errors(box):
    one_line_error(attach(box, "attach", "abc"), "needs a process id")
    one_line_error(attach(box, "attach", 2 ** 22 + 12345), "no process")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        one_line_error(attach(box, "attach", sleeper.pid), "not a Python process")
    finally:
        sleeper.kill()
        sleeper.wait()
    proc, stop = untraced(box)
    if REMOTE_EXEC:
        one_line_error(attach(box, "attach", proc.pid), "no recording session is running")
    else:
        one_line_error(attach(box, "attach", proc.pid), "--enable ETWTRACE_ON")
    one_line_error(attach(box, "attach", proc.pid, "--c-calls"), "--c-calls needs --instrumented")
    box.finish(proc, stop)


def test_attach_refuses_another_users_process(box):
    need_nobody()
    proc, stop = untraced(box)
    one_line_error(attach(box, "attach", proc.pid, user=NOBODY), "belongs to another user")
    box.finish(proc, stop)
