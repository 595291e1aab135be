"""What a --capture leaves when it ends: one copy of perf's data, its size
said, nothing of its processes in /tmp, and what its end does shown on a
terminal while it runs."""
import glob
import json
import os
import pty
import re
import subprocess
import sys

import pytest

from conftest import SCRIPTS, need_perf, run_etwtrace

from etwtrace.capture import launcher as _launcher


def _pids(cap):
    return {int(d.name[4:]) for d in (cap / "ctf").iterdir() if d.name.startswith("pid-")}


def _in_tmp(pids):
    found = []
    for pid in pids:
        found += glob.glob(f"/tmp/perf-{pid}.map") + glob.glob(f"/tmp/jit-{pid}.dump")
        found += glob.glob(f"/tmp/jitted-{pid}-*.so")
    return found


def _summary(stderr, cap):
    """The capture's last line: its size and its largest files."""
    m = re.search(rf"capture saved to {re.escape(str(cap))} \(([\d.]+) (MiB|KiB|bytes)"
                  r"(: [^;]*)?; finished [\d.]+ s after the program\)", stderr)
    assert m, stderr
    return m.group(3) or ""


def test_perf_capture_keeps_one_copy_of_perf_data_and_says_its_size(tmp_path):
    need_perf()
    cap = tmp_path / "cap"
    proc = run_etwtrace("--stack", "--capture", cap, "--recorder", "perf", "--",
                        SCRIPTS / "hot.py", "0.5", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (cap / "perf.data").is_file() and (cap / "perf.script").is_file()
    assert not (cap / "perf.jit.data").exists()
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    from etwtrace.capture import perf as _perf
    if _perf.needs_jit_inject(manifest["callgraph"]):
        # The injected data, with the images' mmaps, is what was kept.
        assert manifest["perf_jit_injected"] is True
        listed = subprocess.run(["perf", "buildid-list", "-i", str(cap / "perf.data")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                encoding="utf-8").stdout
        assert "jitted-" in listed
    assert "perf.data" in _summary(proc.stderr, cap)
    # Not on a terminal: no progress line, only the summary.
    assert "finishing the capture" not in proc.stderr
    # Nothing of the capture's processes is left in /tmp; the capture
    # holds their perf maps (and jitdumps, images).
    pids = _pids(cap)
    assert pids and not _in_tmp(pids)
    for pid in pids:
        assert (cap / "maps" / f"perf-{pid}.map").is_file()


def test_builtin_capture_leaves_nothing_in_tmp(tmp_path):
    cap = tmp_path / "cap"
    proc = run_etwtrace("--stack", "--capture", cap, "--recorder", "builtin", "--",
                        SCRIPTS / "two_processes.py", "3", "4", timeout=120)
    assert proc.returncode == 0, proc.stderr
    pids = _pids(cap)
    assert len(pids) == 2
    assert not _in_tmp(pids)
    assert all((cap / "maps" / f"perf-{pid}.map").is_file() for pid in pids)
    _summary(proc.stderr, cap)


def _run_on_terminal(*args):
    """Runs etwtrace with its stderr on a pseudo-terminal; returns
    (exit status, what it wrote there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "etwtrace", *map(str, args)], cwd=SCRIPTS,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break       # EIO: every writer closed the terminal
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=120), out.decode(errors="replace")


def test_progress_is_shown_on_a_terminal_while_the_capture_ends(tmp_path):
    need_perf()
    cap = tmp_path / "cap"
    status, err = _run_on_terminal("--stack", "--capture", cap, "--recorder", "perf", "--",
                                   SCRIPTS / "hot.py", "0.3")
    assert status == 0, err
    # One line, rewritten in place, then cleared before the summary.
    assert re.search(r"\retwtrace: finishing the capture: perf script of [\d.]+ \w+ "
                     r"\([\d.]+ s\)", err), err
    last = err.rstrip().splitlines()[-1]
    assert "capture saved to" in last and "finishing" not in last.split("\r")[-1], err


@pytest.mark.unit
def test_only_own_copied_files_of_ended_processes_leave_tmp(tmp_path, monkeypatch):
    """remove_tmp_copies: a file the capture holds a copy of goes; one it
    does not hold, a symlink, another user's file, and the files of a
    process still running stay."""
    cap = tmp_path / "cap"
    for d in ("maps", "jit"):
        (cap / d).mkdir(parents=True)
    # Above pid_max (2**22 at most): no such process runs.
    ended, running, others = 2**22 + 11, os.getpid(), 2**22 + 12
    made = []

    def tmp_file(name, copy=True):
        path = f"/tmp/{name}"
        with open(path, "w") as f:
            f.write("x")
        made.append(path)
        if copy:
            where = "maps" if name.startswith("perf-") else "jit"
            (cap / where / name).write_text("x")
        return path

    try:
        gone = [tmp_file(f"perf-{ended}.map"), tmp_file(f"jit-{ended}.dump"),
                tmp_file(f"jitted-{ended}-0.so")]
        kept = [tmp_file(f"jitted-{ended}-1.so", copy=False), tmp_file(f"perf-{running}.map")]
        theirs = tmp_file(f"perf-{others}.map")
        link = f"/tmp/jit-{others}.dump"
        os.symlink(theirs, link)
        made.append(link)
        (cap / "jit" / f"jit-{others}.dump").write_text("x")
        kept += [link]
        _launcher.remove_tmp_copies(str(cap), {ended, running})
        # As another user: our files are theirs to keep.
        monkeypatch.setattr(os, "geteuid", lambda: os.stat(theirs).st_uid + 1)
        _launcher.remove_tmp_copies(str(cap), {others}, owner=os.stat(theirs).st_uid + 2)
        assert not [p for p in gone if os.path.lexists(p)]
        assert all(os.path.lexists(p) for p in kept + [theirs])
    finally:
        for path in made:
            if os.path.lexists(path):
                os.unlink(path)
