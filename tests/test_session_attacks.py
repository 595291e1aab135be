"""A local user (nobody, a real second user) against root's recording
session: links planted in its own trace directory, links swapped while
`record stop` runs, a descriptor of its trace directory held past stop, a
capture PATH or snapshot PATH made in advance, a PATH on a way it could
change, odd entries in the staging directory.  Each test shows that the
root-owned victim is unchanged, that the capture is root's alone (no
symlink, no file of another user, none of the victim's bytes), and that
it holds the honest processes' traces.  Also `perf inject --jit`, which
root's stop runs on a perf session's recording of the whole machine:
it writes each JIT image next to the jitdump a process mapped, through
whatever is there.  See README, "Recording sessions" (Permissions)."""

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

import etwtrace
from conftest import SCRIPTS, need_perf
from sessions import (NOBODY, as_user, assert_inner_above_outer, need_nobody, one_line_error,
                      wait_joined)

SECRET = b"root's secret line"


def victim(box, content=SECRET * 100):
    """A file of root's that nobody may not write (nor read)."""
    path = box.path("victim")
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, 0o600)
    return path, content


def as_nobody(box, *args, wait=True):
    """Runs session_attacker.py (or, with "-c", Python code) as nobody."""
    script = box.path("session_attacker.py")
    if not os.path.exists(script):
        shutil.copy(SCRIPTS / "session_attacker.py", script)
        os.chmod(script, 0o644)
    cmd = [sys.executable, *map(str, args if args[0] == "-c" else (script, *args))]
    kwargs = dict(**as_user(NOBODY), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  encoding="utf-8", errors="replace")
    if not wait:
        return subprocess.Popen(cmd, **kwargs)
    r = subprocess.run(cmd, timeout=300, **kwargs)
    assert r.returncode == 0, r.stderr
    return r


def wait_for(path, proc):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def staged(capture, pid):
    return os.path.join(capture, ".session", "ctf", f"pid-{pid}")


def begin(box, capture):
    """A session with an honest process of root's and one of nobody's
    (both run on past stop: their traces are copied), and a process of
    nobody's that ended, whose trace directory the attacker then uses."""
    need_nobody()
    box.start(capture, "--recorder", "builtin")
    honest = [box.worker(), box.worker(user=NOBODY)]
    evil, evil_stop = box.worker(user=NOBODY)
    wait_joined(box, capture, [p.pid for p, _ in honest] + [evil.pid])
    time.sleep(0.5)
    box.finish(evil, evil_stop)
    return honest, evil.pid


def end(box, honest):
    r = box.stop()
    for proc, stop in honest:
        code, _, err = box.finish(proc, stop)
        assert code == 0, err
    return r


def assert_root_alone(capture, *honest_pids):
    """The capture holds the honest processes' traces, and is root's
    alone: no symlink (but perf's own in its build-id cache), nothing of
    another user, no byte of the victim, no staging directory."""
    events = list(etwtrace.open_trace(capture))
    for pid in honest_pids:
        assert_inner_above_outer(events, pid)
    assert not os.path.lexists(os.path.join(capture, ".session"))
    for top, dirs, files in os.walk(capture):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            assert st.st_uid == 0, f"{path} belongs to uid {st.st_uid}"
            if stat.S_ISLNK(st.st_mode):
                # perf's build-id cache links its entries within itself.
                cache = os.path.join(capture, "buildid") + os.sep
                assert path.startswith(cache) and os.path.realpath(path).startswith(cache), path
                continue
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), path
            if stat.S_ISREG(st.st_mode):
                assert not holds_secret(path), f"{path} holds the victim's bytes"
    return events


def holds_secret(path):
    """Whether the data of file `path` (its holes skipped) holds SECRET."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return False        # (no data after offset)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            # Overlapping reads: a SECRET across two reads is found.
            for at in range(start, end, 1 << 20):
                if SECRET in os.pread(fd, (1 << 20) + len(SECRET), at):
                    return True
            offset = end
        return False
    finally:
        os.close(fd)


def test_planted_stream_links_are_not_written_through(box):
    target, content = victim(box, b"")      # an empty root-owned file
    capture = box.path("capture")
    honest, evil = begin(box, capture)
    as_nobody(box, "plant", staged(capture, evil), target)
    trace = staged(capture, evil)
    assert any(os.path.islink(os.path.join(trace, n)) for n in os.listdir(trace))
    r = end(box, honest)
    with open(target, "rb") as f:
        assert f.read() == content
    warning = [l for l in r.stderr.splitlines() if "warning" in l]
    assert len(warning) == 1 and f"skipped {staged(capture, evil)}: stream-" in warning[0] \
        and "is a symbolic link" in warning[0], r.stderr
    events = assert_root_alone(capture, *(p.pid for p, _ in honest))
    assert evil not in {e.pid for e in events}


def test_links_swapped_while_stop_runs_reach_nothing(box):
    target, content = victim(box)
    before = os.stat(target)
    capture = box.path("capture")
    honest, evil = begin(box, capture)
    ready, stop = os.path.join(box.shared, "swap-ready"), os.path.join(box.shared, "swap-stop")
    swapper = as_nobody(box, "swap", staged(capture, evil), target, ready, stop, wait=False)
    try:
        wait_for(ready, swapper)
        r = end(box, honest)
    finally:
        open(stop, "w").close()
        out, err = swapper.communicate(timeout=60)
    # The swapping ran from before stop began until after it ended.
    assert swapper.returncode == 0 and re.match(r"rounds [1-9]", out), (out, err)
    after = os.stat(target)
    with open(target, "rb") as f:
        assert f.read() == content
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    # The attacker's trace was a link or its real self when root looked:
    # skipped, or copied as it was.
    events = assert_root_alone(capture, *(p.pid for p, _ in honest))
    if evil in {e.pid for e in events}:
        assert_inner_above_outer(events, evil)
    else:
        assert f"skipped {staged(capture, evil)}" in r.stderr, r.stderr


def test_a_descriptor_held_past_stop_does_not_reach_the_capture(box):
    target, content = victim(box)
    capture = box.path("capture")
    honest, evil = begin(box, capture)
    ready, go = os.path.join(box.shared, "hold-ready"), os.path.join(box.shared, "hold-go")
    result = os.path.join(box.shared, "hold-result")
    holder = as_nobody(box, "hold", staged(capture, evil), target, ready, go, result, wait=False)
    try:
        wait_for(ready, holder)
        r = end(box, honest)
    finally:
        open(go, "w").close()
        holder.communicate(timeout=60)
    with open(result) as f:
        outcome = f.read()
    assert "added" not in outcome and outcome.count("refused") == 2, outcome
    assert "warning" not in r.stderr, r.stderr
    # The attacker's own trace is kept: copied into root's new files.
    assert_root_alone(capture, evil, *(p.pid for p, _ in honest))
    kept = os.listdir(os.path.join(capture, "ctf", f"pid-{evil}"))
    assert "metadata" in kept and all(n == "metadata" or re.match(r"stream-\d+-tid-\d+$", n)
                                      for n in kept), kept
    assert "stream-9-tid-1" not in kept and "stream-8-tid-1" not in kept
    with open(target, "rb") as f:
        assert f.read() == content
    report = subprocess.run([sys.executable, "-m", "etwtrace", "report", capture],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert report.returncode == 0 and "inner" in report.stdout, report.stderr


def test_a_sparse_stream_costs_root_no_disk(box):
    capture = box.path("capture")
    honest, evil = begin(box, capture)
    # (Small enough that a copy which fills holes would not harm the disk.)
    size = 4 << 30
    as_nobody(box, "sparse", staged(capture, evil), size)
    end(box, honest)
    assert_root_alone(capture, *(p.pid for p, _ in honest))
    kept = os.path.join(capture, "ctf", f"pid-{evil}")
    streams = [os.path.join(kept, n) for n in os.listdir(kept) if n.startswith("stream-")]
    assert streams
    for stream in streams:
        st = os.stat(stream)
        assert st.st_size == size and st.st_blocks * 512 < (1 << 20), (stream, st)


def test_odd_entries_in_the_staging_directory_are_skipped_with_a_warning(box):
    need_nobody()
    private = box.path("rootonly")
    os.mkdir(private, 0o700)
    with open(os.path.join(private, "keep"), "wb") as f:
        f.write(SECRET)
    capture = box.path("capture")
    box.start(capture, "--recorder", "builtin")
    roots, stop_roots = box.worker()
    mine, stop_mine = box.worker(user=NOBODY)
    wait_joined(box, capture, [roots.pid, mine.pid])
    time.sleep(0.5)
    ctf = os.path.join(capture, ".session", "ctf")
    # Made by nobody: a link named as a trace; a claim on the pid of
    # root's running process (a copy of nobody's own trace); a FIFO and a
    # directory among a trace's streams; a very deep tree.
    as_nobody(box, "-c", f"""if 1:
        import os, shutil
        ctf, mine, roots, private = {ctf!r}, {mine.pid}, {roots.pid}, {private!r}
        os.symlink(private, os.path.join(ctf, "pid-999991"))
        shutil.copytree(os.path.join(ctf, f"pid-{{mine}}"), os.path.join(ctf, f"pid-{{roots}}.2"))
        for pid, odd in ((999992, "fifo"), (999993, "dir")):
            trace = os.path.join(ctf, f"pid-{{pid}}")
            os.mkdir(trace, 0o700)
            shutil.copy(os.path.join(ctf, f"pid-{{mine}}", "metadata"), trace)
            if odd == "fifo":
                os.mkfifo(os.path.join(trace, "stream-0-tid-1"))
            else:
                os.mkdir(os.path.join(trace, "stream-0-tid-1"))
        os.mkdir(os.path.join(ctf, "pid-999994"), 0o700)
        """)
    as_nobody(box, "deep", os.path.join(ctf, "pid-999994"), 2000)
    r = box.record("stop", timeout=120)
    assert r.returncode == 0, r.stderr
    box.finish(roots, stop_roots)
    box.finish(mine, stop_mine)
    warnings = [l for l in r.stderr.splitlines() if "warning" in l]
    expected = {
        "pid-999991": "it is not a directory",
        f"pid-{roots.pid}.2": f"but process {roots.pid} runs as uid 0",
        "pid-999992": "stream-0-tid-1 is a FIFO",
        "pid-999993": "stream-0-tid-1 is a directory",
        "pid-999994": "d is a directory",
    }
    assert len(warnings) == len(expected), r.stderr
    for name, why in expected.items():
        assert any(f"skipped {os.path.join(ctf, name)}: " in l and why in l for l in warnings), \
            (name, r.stderr)
    assert os.listdir(private) == ["keep"]
    events = assert_root_alone(capture, roots.pid, mine.pid)
    assert {e.pid for e in events} == {roots.pid, mine.pid}


def test_a_path_another_user_made_is_refused(box):
    need_nobody()
    private = box.path("rootonly")
    os.mkdir(private, 0o700)
    squat = os.path.join(box.shared, "capture")
    as_nobody(box, "-c", f"import os; os.mkdir({squat!r}, 0o777); "
              f"os.symlink({private!r}, os.path.join({squat!r}, 'maps'))")
    one_line_error(box.record("start", squat, "--recorder", "builtin"),
                   f"{squat} exists and belongs to another user (uid {NOBODY})")
    assert box.record("status").returncode == 1
    # Nor does a capture of root's use it.
    r = subprocess.run([sys.executable, "-m", "etwtrace", "--capture", squat, "--recorder",
                        "builtin", "--", box.script, "stop", "ready"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, encoding="utf-8", cwd=box.root)
    one_line_error(r, "belongs to another user")
    assert os.listdir(private) == [] and os.listdir(squat) == ["maps"]
    assert os.lstat(squat).st_uid == NOBODY


def test_a_path_another_user_could_replace_is_refused(box):
    need_nobody()
    theirs = box.path("theirs")
    os.mkdir(theirs)
    os.chown(theirs, NOBODY, NOBODY)
    one_line_error(box.record("start", os.path.join(theirs, "capture")),
                   f"another user could replace it ({theirs} belongs to uid {NOBODY})")
    everyones = box.path("everyones")
    os.mkdir(everyones)
    os.chmod(everyones, 0o777)          # not sticky: anyone may rename in it
    one_line_error(box.record("start", os.path.join(everyones, "capture")),
                   f"({everyones} is writable by other users)")
    # A symlink another user could point elsewhere is resolved once and
    # its target checked: here nobody's directory.
    link = os.path.join(box.shared, "link")
    as_nobody(box, "-c", f"import os; os.symlink({theirs!r}, {link!r})")
    one_line_error(box.record("start", os.path.join(link, "capture")),
                   f"({theirs} belongs to uid {NOBODY})")
    assert os.listdir(theirs) == [] and os.listdir(everyones) == []
    assert box.record("status").returncode == 1


def test_snapshot_names_cannot_be_squatted(box):
    need_nobody()
    capture = os.path.join(box.shared, "capture")     # in a sticky directory, as /tmp
    box.start(capture, "--ring", "1M")
    proc, stop = box.worker(mode="instrumented", user=NOBODY)
    wait_joined(box, capture, [proc.pid])
    time.sleep(0.5)
    # Every name the old default could take in the next two minutes.
    r = as_nobody(box, "-c", f"""if 1:
        import os, time
        now = time.time()
        for s in range(-5, 120):
            name = {capture!r} + "-snapshot-" + time.strftime("%Y%m%d-%H%M%S",
                                                              time.localtime(now + s))
            os.mkdir(name, 0o777)
            print(name)
        """)
    squatted = r.stdout.split()
    r = box.record("snapshot")
    assert r.returncode == 0, r.stderr
    target = re.search(r"saved to (\S+)", r.stderr).group(1)
    assert target.startswith(capture + "-snapshot-") and target not in squatted
    st = os.lstat(target)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    assert all(os.listdir(name) == [] for name in squatted)
    pushes = [e for e in etwtrace.open_trace(target)
              if e.pid == proc.pid and e.name == "PythonFunctionPush"]
    assert len(pushes) > 100
    # A snapshot PATH given that another user made is refused.
    one_line_error(box.record("snapshot", squatted[0]), "belongs to another user")
    box.finish(proc, stop)
    box.stop()
    assert_root_alone(target)


# ---- perf inject ----

in_chroot = pytest.mark.skipif(
    os.environ.get("ETWTRACE_IN_CHROOT") == "1",
    reason="perf -a in a chroot (.ci/test-sid) does not find the chroot's files; the host's "
    "run tests this")


def start_perf(box, capture):
    """A perf session whose stop runs perf inject (DWARF call graphs)."""
    need_nobody()
    need_perf()
    box.start(capture, "--recorder", "perf", "--preset", "CPU")
    with open(os.path.join(box.control, "state.json")) as f:
        if json.load(f).get("callgraph") != "dwarf":
            box.stop()
            pytest.skip("this Python keeps frame pointers: stop runs no perf inject")


@in_chroot
def test_perf_inject_does_not_write_through_links_in_tmp(box):
    target, content = victim(box)
    capture = box.path("capture")
    start_perf(box, capture)
    proc, stop = box.worker(user=NOBODY)
    wait_joined(box, capture, [proc.pid])
    # Where perf inject writes the images of the process's trampolines.
    links = [f"/tmp/jitted-{proc.pid}-{k}.so" for k in range(50)]
    try:
        as_nobody(box, "-c", f"import os\nfor link in {links!r}: os.symlink({target!r}, link)")
        time.sleep(1)
        r = end(box, [(proc, stop)])
    finally:
        for link in links:
            if os.path.islink(link):
                os.unlink(link)
    with open(target, "rb") as f:
        assert f.read() == content
    assert_root_alone(capture, proc.pid)
    if "perf inject --jit failed" in r.stderr:
        pytest.skip(f"perf inject failed here (another traced process?): {r.stderr}")
    images = glob.glob(os.path.join(capture, "jit", f"jitted-{proc.pid}-*.so"))
    assert images
    for image in images:
        with open(image, "rb") as f:
            assert f.read(4) == b"\x7fELF"


@in_chroot
def test_perf_inject_does_not_write_next_to_another_users_jitdump(box):
    target, content = victim(box)
    theirs = box.path("theirs")
    os.mkdir(theirs)
    os.chown(theirs, NOBODY, NOBODY)
    capture = box.path("capture")
    start_perf(box, capture)
    honest = [box.worker()]
    ready, stop = os.path.join(box.shared, "jit-ready"), os.path.join(box.shared, "jit-stop")
    mapper = as_nobody(box, "jitdump", theirs, target, ready, stop, wait=False)
    try:
        wait_for(ready, mapper)
        wait_joined(box, capture, [honest[0][0].pid])
        time.sleep(1)
        r = end(box, honest)
    finally:
        open(stop, "w").close()
        mapper.communicate(timeout=60)
    assert mapper.returncode == 0
    with open(target, "rb") as f:
        assert f.read() == content
    assert_root_alone(capture, honest[0][0].pid)
    assert r.stderr.strip().splitlines()[-1].startswith("etwtrace: session saved to")


def test_perf_inject_of_roots_capture_does_not_write_through_links_in_tmp(box):
    """The images of a --capture of root's have names known once its pid
    is: nobody puts links there while the program runs."""
    need_nobody()
    need_perf()
    target, content = victim(box)
    ready, go = os.path.join(box.shared, "pid"), os.path.join(box.shared, "go")
    program = box.path("program.py")
    with open(program, "w") as f:
        f.write(f"""if 1:
            import os, time
            def inner(n):
                return sum(range(n))
            def outer():
                for _ in range(200):
                    inner(20000)
            with open({ready!r} + ".new", "w") as f:
                f.write(str(os.getpid()))
            os.rename({ready!r} + ".new", {ready!r})
            while not os.path.exists({go!r}):
                time.sleep(0.02)
            outer()
            """)
    capture = box.path("capture")
    launcher = subprocess.Popen([sys.executable, "-m", "etwtrace", "--capture", capture,
                                 "--recorder", "perf", "--", program], cwd=box.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    links = []
    try:
        wait_for(ready, launcher)
        with open(ready) as f:
            pid = int(f.read())
        links = [f"/tmp/jitted-{pid}-{k}.so" for k in range(50)]
        as_nobody(box, "-c", f"import os\nfor link in {links!r}: os.symlink({target!r}, link)")
        open(go, "w").close()
        _, err = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
        for link in links:
            if os.path.islink(link):
                os.unlink(link)
    assert launcher.returncode == 0, err
    with open(target, "rb") as f:
        assert f.read() == content
    with open(os.path.join(capture, "etwtrace-capture.json")) as f:
        if json.load(f).get("callgraph") != "dwarf":
            pytest.skip("this Python keeps frame pointers: no perf inject ran")
    images = glob.glob(os.path.join(capture, "jit", f"jitted-{pid}-*.so"))
    assert images
    for image in images:
        with open(image, "rb") as f:
            assert f.read(4) == b"\x7fELF"
