"""Children that go untraced (#22): a child started with an environment
that drops the capture (env={"PATH": ...}, os.posix_spawn, os.execve),
or a Python child started with -I/-E/-S, is not traced.  The launcher's
end, the manifest and `report` say which, once each; nothing is said
when every child was traced."""
import json
import os
import sys

import pytest

from conftest import run_etwtrace

# How the report names the interpreter the children run (its file name).
PYTHON_NAME = os.path.basename(sys.executable)

CHILDREN = """\
import json, os, subprocess, sys
child = [sys.executable, "-c", "def child(): pass\\nchild()"]
clean = {"PATH": os.environ["PATH"]}
pids = {}
def popen(name, args, **kw):
    p = subprocess.Popen(args, **kw)
    p.wait()
    pids[name] = p.pid
popen("inherited", child)
popen("copied", child, env=dict(os.environ))
if sys.argv[1:] == ["some-untraced"]:
    popen("cleared", child, env=clean)
    popen("isolated", [sys.executable, "-I", "-c", "pass"])
    subprocess.run(child, env=clean)
    spawned = os.posix_spawn(sys.executable, child, clean)
    os.waitpid(spawned, 0)
    pids["posix_spawn"] = spawned
print(json.dumps(pids))
"""


def _capture(tmp_path, *args):
    script = tmp_path / "children.py"
    script.write_text(CHILDREN)
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--",
                        script, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return cap, proc, json.loads(proc.stdout)


def _said(text):
    return [line for line in text.splitlines() if "started but not traced" in line]


@pytest.mark.versioned
def test_children_started_untraced_are_named_once_each(tmp_path):
    cap, proc, pids = _capture(tmp_path, "some-untraced")
    traced = {int(name.split("-")[1].split(".")[0]) for name in os.listdir(cap / "ctf")}
    assert {pids["inherited"], pids["copied"]} <= traced
    assert not {pids["cleared"], pids["isolated"], pids["posix_spawn"]} & traced

    # The launcher's end: one line.
    said = _said(proc.stderr)
    assert len(said) == 1, proc.stderr
    line = said[0]
    assert line.startswith("etwtrace: 4 child processes were started but not traced: ")
    assert f"pid {pids['cleared']} ({PYTHON_NAME} -c " in line
    assert f"pid {pids['isolated']} ({PYTHON_NAME} -I -c pass; python -I)" in line
    assert "environment without ETWTRACE_CAPTURE" in line
    assert line.count("pid ? (") == 1       # os.posix_spawn's pid is its caller's to know

    # The capture: the manifest's list.
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    kept = manifest["untraced_children"]
    assert len(kept) == 4
    parent = {c["parent"] for c in kept}
    assert len(parent) == 1 and parent <= traced
    known = [c["pid"] for c in kept if c["pid"] is not None]
    assert len(known) == 3 and {pids["cleared"], pids["isolated"]} < set(known)
    assert not set(known) & traced          # subprocess.run's child: known, untraced
    assert all(c["command"][0] == sys.executable for c in kept)

    # The report: one note, in every format.
    for fmt in ("text", "folded"):
        report = run_etwtrace("report", cap, "--format", fmt)
        assert report.returncode == 0, report.stderr
        notes = _said(report.stderr)
        assert len(notes) == 1 and notes[0] == "etwtrace: note: " + line[len("etwtrace: "):]
        assert not _said(report.stdout)


def test_nothing_is_said_when_every_child_is_traced(tmp_path):
    cap, proc, pids = _capture(tmp_path)
    assert not _said(proc.stderr)
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    assert manifest["untraced_children"] == []
    report = run_etwtrace("report", cap)
    assert report.returncode == 0 and not _said(report.stderr + report.stdout)


@pytest.mark.versioned
def test_an_exec_into_a_cleared_environment_is_named_by_its_pid(tmp_path):
    script = tmp_path / "execs.py"
    script.write_text(
        "import os, sys\n"
        "print(os.getpid(), flush=True)\n"
        "os.execve(sys.executable, [sys.executable, '-c', 'print(\"after\")'],\n"
        "          {'PATH': os.environ['PATH']})\n")
    cap = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--capture", cap, "--recorder", "builtin", "--",
                        script, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pid, after = proc.stdout.split()
    assert after == "after"
    said = _said(proc.stderr)
    assert len(said) == 1 and f": pid {pid} ({PYTHON_NAME} -c " in said[0], proc.stderr


def test_why_a_child_goes_untraced():
    from etwtrace.trace import children as _children
    ours = {"ETWTRACE_CAPTURE": "/c", "PYTHONPATH": _children.AUTOSTART_DIR, "PATH": "/bin"}

    def why(args, env, environ=ours):
        return _children.why_untraced(args, env, _children._carriers(environ))
    assert why(["python3", "x.py"], None, ours) is None
    assert why(["python3", "x.py"], dict(ours), ours) is None
    assert why(["ls"], {"PATH": "/bin"}, ours) == "environment without ETWTRACE_CAPTURE"
    assert why(["python3"], dict(ours, ETWTRACE_CAPTURE="/d"), ours) == \
        "environment without ETWTRACE_CAPTURE"
    assert why(["python3"], dict(ours, PYTHONPATH="/x"), ours) == \
        "environment without PYTHONPATH"
    assert why([b"python3"], {b"ETWTRACE_CAPTURE": b"/c",
                              b"PYTHONPATH": os.fsencode(_children.AUTOSTART_DIR)}, ours) is None
    # Interpreter options: -E, -I and -S lose tracing, wherever they sit
    # among the options; after the program (or -c, -m), they are its own.
    assert why(["python3.13", "-X", "dev", "-IB", "x.py"], None, ours) == "python -I"
    assert why(["/usr/bin/python3", "-Wignore", "-S", "-m", "x"], None, ours) == "python -S"
    assert why(["python3", "-c", "pass", "-E"], None, ours) is None
    assert why(["python3", "x.py", "-I"], None, ours) is None
    assert why(["other", "-I"], None, ours) is None
    # A process traced through no variable passes nothing on to lose.
    assert why(["python3", "-I"], {}, {"PATH": "/bin"}) is None



def test_notes_a_capture_holds_are_read_as_data(tmp_path):
    # The notes come from the traced processes (another user's, in a
    # session): garbage lines, deep JSON and a symlink in their place are
    # skipped; report says what the readable notes say.
    cap, proc, pids = _capture(tmp_path, "some-untraced")
    manifest_path = cap / "etwtrace-capture.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["untraced_children"]       # as a capture without a launcher has it
    manifest_path.write_text(json.dumps(manifest))
    notes = [p for p in (cap / "ctf").glob("pid-*/untraced-children")]
    assert len(notes) == 1
    with open(notes[0], "a") as f:
        f.write("not json\n" + "[" * 100000 + "\n" + '{"n": "x", "command": 5}\n')
    for name in os.listdir(cap / "ctf"):
        other = cap / "ctf" / name / "untraced-children"
        if not other.exists():
            other.symlink_to(notes[0])      # read once, through its own name only
    report = run_etwtrace("report", cap)
    assert report.returncode == 0, report.stderr
    said = _said(report.stderr)
    assert len(said) == 1 and "4 child processes" in said[0], report.stderr


# ---- through a recording session ----

# Traced through etwtrace.pth (--enable ENABLE_VAR), as the README says
# children are followed into a session: tracing passes on by ENABLE_VAR,
# which a cleared environment drops.
ENABLE_VAR = "ETWTRACE_CHILDREN_TEST"
SESSION_WORKER = """\
import json, os, subprocess, sys
child = [sys.executable, "-c", "def child(): pass\\nchild()"]
cleared = subprocess.Popen(child, env={"PATH": os.environ["PATH"]})
cleared.wait()
inherited = subprocess.Popen(child)
inherited.wait()
print(json.dumps({"worker": os.getpid(), "cleared": cleared.pid,
                  "inherited": inherited.pid}))
"""


def _enabled_python(root):
    """A venv in `root` (which user nobody may read) that sees the
    etwtrace under test and traces every start with ENABLE_VAR set."""
    import subprocess
    import venv
    import etwtrace
    env_dir = os.path.join(root, "venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = os.path.join(env_dir, "bin", "python")
    site = subprocess.check_output([python, "-c", "import sysconfig; "
                                    "print(sysconfig.get_paths()['purelib'])"],
                                   encoding="utf-8").strip()
    with open(os.path.join(site, "_etwtrace_under_test.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(os.path.abspath(etwtrace.__file__))) + "\n")
    enable = subprocess.run([python, "-m", "etwtrace", "--enable", ENABLE_VAR],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert enable.returncode == 0, enable.stderr
    return python


def test_a_sessions_untraced_children_are_named_once_each(box):
    """Root's worker and user nobody's each start a child with a cleared
    environment (untraced) and one with theirs (traced, it joins): `record
    stop` names the two untraced ones in one line, the manifest lists them
    once each, with their parents, and `report` says the same."""
    import subprocess
    from pathlib import Path
    from sessions import NOBODY, as_user, need_nobody
    need_nobody()
    python = _enabled_python(box.root)
    script = os.path.join(box.root, "children_worker.py")
    with open(script, "w") as f:
        f.write(SESSION_WORKER)
    os.chmod(script, 0o644)
    capture = box.path("capture")
    box.start(capture, "--recorder", "builtin")
    workers = []
    for user in (None, NOBODY):
        env = dict(box.env, **{ENABLE_VAR: "1", f"{ENABLE_VAR}_TYPE": "instrumented"})
        run = subprocess.run([python, script], env=env,
                             cwd=box.root, **as_user(user), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, encoding="utf-8", timeout=120)
        assert run.returncode == 0 and "etwtrace" not in run.stderr, run.stderr
        workers.append(json.loads(run.stdout))
    stop = box.stop()
    said = _said(stop.stderr)
    assert len(said) == 1, stop.stderr
    line = said[0]
    assert line.startswith("etwtrace: 2 child processes were started but not traced: "), line
    for w in workers:
        assert line.count(f"pid {w['cleared']} (") == 1, line
        assert f"pid {w['inherited']} (" not in line
    assert line.count(f"environment without {ENABLE_VAR}") == 2, line

    manifest = json.loads(Path(capture, "etwtrace-capture.json").read_text())
    users = manifest["process_users"]
    for w, user in zip(workers, (0, NOBODY)):
        # The worker and the child that kept its environment joined the
        # session; the cleared one did not.
        assert users.get(str(w["worker"])) == users.get(str(w["inherited"])) == user, users
        assert str(w["cleared"]) not in users
    kept = sorted((c["pid"], c["parent"]) for c in manifest["untraced_children"])
    assert kept == sorted((w["cleared"], w["worker"]) for w in workers), kept
    assert all(c["command"][0] == python and c["why"] == f"environment without {ENABLE_VAR}"
               for c in manifest["untraced_children"])

    report = run_etwtrace("report", capture)
    assert report.returncode == 0, report.stderr
    assert _said(report.stderr) == ["etwtrace: note: " + line[len("etwtrace: "):]]
