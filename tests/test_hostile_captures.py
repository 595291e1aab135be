"""Captures made or damaged by someone else (#22): one process's bad trace
is left out with a one-line warning naming it and the rest is reported;
no reader follows a symlink inside a capture; FIFOs, devices, sparse or
huge files and deeply nested JSON end in a one-line error (exit 1), never
a hang or a traceback; so does an output that cannot be written."""
import os
import shutil
import stat
import subprocess
import sys
import warnings

import pytest

import etwtrace
from conftest import SCRIPTS, run_etwtrace

PARENT, CHILD = 300, 200
HANG = 60       # seconds: a reader that takes longer has hung


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A capture of two processes: the parent's calls, then a child's."""
    path = tmp_path_factory.mktemp("hostile") / "cap"
    proc = run_etwtrace("--instrumented", "--capture", path, "--recorder", "builtin", "--",
                        SCRIPTS / "two_processes.py", PARENT, CHILD)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture
def cap(original, tmp_path):
    """A copy of the capture to damage."""
    copy = tmp_path / "cap"
    shutil.copytree(original, copy, symlinks=True)
    return copy


def _dirs(cap):
    """(parent's trace directory, child's), told apart by the functions
    their streams name."""
    dirs = sorted((cap / "ctf").glob("pid-*"))
    assert len(dirs) == 2, dirs
    return tuple(sorted(dirs, key=lambda d: b"parent_work" not in _stream_bytes(d)))


def _stream_bytes(trace_dir):
    return b"".join(p.read_bytes() for p in trace_dir.glob("stream-*"))


def _report(cap, *args):
    proc = subprocess.run([sys.executable, "-m", "etwtrace", "report", str(cap), "--limit", "0",
                           *map(str, args)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          errors="replace", timeout=HANG, cwd=SCRIPTS)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _calls(text):
    """{function name: calls} of a text report's table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].isdigit() and "two_processes.py" in parts[4]:
            rows[parts[4].split(" (")[0]] = int(parts[0])
    return rows


def _fails(cap, *args, says):
    """A report that must fail in one line, exit 1."""
    proc = _report(cap, *args)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etwtrace: error: "), proc.stderr
    assert says in lines[0], lines[0]
    return lines[0]


def _open_trace_calls(cap):
    """({name: pushes}, [warning texts]) from open_trace."""
    names, pushes = {}, {}
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for e in etwtrace.open_trace(cap):
            if e.name == "PythonFunction":
                names[(e.pid, e.image, e.fields["FunctionID"])] = e.fields["Name"]
            elif e.name == "PythonFunctionPush":
                name = names.get((e.pid, e.image, e.fields["FunctionID"]))
                pushes[name] = pushes.get(name, 0) + 1
    return pushes, [str(w.message) for w in said]


def test_the_undamaged_capture_reports_both_processes(cap):
    proc = _report(cap)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = _calls(proc.stdout)
    assert rows["parent_work"] == PARENT and rows["child_work"] == CHILD


# ---- one process's bad trace ----

def test_a_garbage_trace_is_left_out_with_a_warning_naming_it(cap):
    _parent, child = _dirs(cap)
    streams = sorted(child.glob("stream-*"))
    for stream in streams:
        stream.write_bytes(os.urandom(4096))
    for ring in child.glob(".ring-*"):
        ring.unlink()
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    rows = _calls(proc.stdout)
    assert rows["parent_work"] == PARENT and "child_work" not in rows
    warned = proc.stderr.strip().splitlines()
    assert warned and all(l.startswith("etwtrace: warning: ") for l in warned), proc.stderr
    assert any(str(streams[0]) in l and "corrupt" in l for l in warned), proc.stderr
    # ... and the report says so at its top, as it says losses.
    assert proc.stdout.startswith("WARNING: ") and str(streams[0]) in proc.stdout.splitlines()[0]

    pushes, said = _open_trace_calls(cap)
    assert pushes["parent_work"] == PARENT and "child_work" not in pushes
    assert any(str(streams[0]) in w and "corrupt" in w for w in said), said


def test_a_trace_damaged_midway_keeps_what_came_before(cap):
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    data = bytearray(stream.read_bytes())
    data[len(data) // 2:] = os.urandom(len(data) - len(data) // 2)
    stream.write_bytes(bytes(data))
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    assert _calls(proc.stdout)["parent_work"] == PARENT
    assert str(stream) in proc.stderr and "left out" in proc.stderr


def test_bad_metadata_leaves_out_that_process(cap):
    _parent, child = _dirs(cap)
    (child / "metadata").write_text("not a trace\n")
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    assert _calls(proc.stdout)["parent_work"] == PARENT
    assert f"{child}" in proc.stderr and "not an etwtrace CTF trace" in proc.stderr


def test_every_process_bad_is_an_error(cap):
    for trace_dir in _dirs(cap):
        for stream in trace_dir.glob("stream-*"):
            stream.write_bytes(b"\xde\xad\xbe\xef" * 64)
        for ring in trace_dir.glob(".ring-*"):
            ring.unlink()
    _fails(cap, says="no process's trace could be read")


# ---- links inside a capture are never followed ----

def test_a_linked_stream_is_not_followed(cap, tmp_path):
    """The child's stream moved out of the capture and linked back in (as a
    user's process adding `stream-9-tid-1 -> /etc/shadow` would): followed,
    the child's calls would be reported."""
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(stream, outside / stream.name)
    for ring in child.glob(".ring-*"):
        ring.unlink()
    os.symlink(outside / stream.name, child / "stream-9-tid-1")
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    rows = _calls(proc.stdout)
    assert rows["parent_work"] == PARENT and "child_work" not in rows
    assert "stream-9-tid-1" in proc.stderr and "not followed" in proc.stderr
    pushes, said = _open_trace_calls(cap)
    assert "child_work" not in pushes and any("stream-9-tid-1" in w for w in said)


def test_a_linked_trace_directory_and_metadata_are_not_followed(cap, tmp_path):
    _parent, child = _dirs(cap)
    moved = tmp_path / child.name
    shutil.move(child, moved)
    os.symlink(moved, child)            # ctf/pid-N -> a directory elsewhere
    rows = _calls(_report(cap).stdout)
    assert rows["parent_work"] == PARENT and "child_work" not in rows

    os.unlink(child)
    child.mkdir()
    for entry in moved.iterdir():
        shutil.copy(entry, child / entry.name)
    (child / "metadata").unlink()
    os.symlink(moved / "metadata", child / "metadata")
    proc = _report(cap)
    assert proc.returncode == 0 and "child_work" not in _calls(proc.stdout)
    assert "metadata" in proc.stderr and "not followed" in proc.stderr


def test_a_linked_ctf_directory_is_an_error(cap, tmp_path):
    moved = tmp_path / "ctf-elsewhere"
    shutil.move(cap / "ctf", moved)
    os.symlink(moved, cap / "ctf")
    _fails(cap, says="not followed")


def test_a_linked_ring_is_not_followed(cap, tmp_path):
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    ring = stream.with_name(".ring-" + stream.name[len("stream-"):])
    fake = tmp_path / "fake-ring"
    fake.write_bytes(b"\0" * 4096)
    if ring.exists():
        ring.unlink()
    os.symlink(fake, ring)
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    assert _calls(proc.stdout)["child_work"] == CHILD
    assert str(ring) in proc.stderr and "not followed" in proc.stderr


# ---- FIFOs, devices, sparse and huge files: no hang ----

def test_a_fifo_as_the_manifest_is_an_error_not_a_hang(cap):
    manifest = cap / "etwtrace-capture.json"
    manifest.unlink()
    os.mkfifo(manifest)
    _fails(cap, says="FIFO")


def test_a_device_as_the_manifest_is_an_error(cap):
    manifest = cap / "etwtrace-capture.json"
    manifest.unlink()
    if os.geteuid() == 0:
        os.mknod(manifest, stat.S_IFCHR | 0o600, os.makedev(1, 5))      # /dev/zero
        _fails(cap, says="a device")
        manifest.unlink()
    os.symlink("/dev/zero", manifest)
    _fails(cap, says="not followed")


def test_a_huge_sparse_manifest_is_an_error(cap):
    manifest = cap / "etwtrace-capture.json"
    with open(manifest, "r+b") as f:
        f.truncate(30 * 2**30)
    _fails(cap, says="more than")


def test_deeply_nested_json_is_an_error(cap):
    (cap / "etwtrace-capture.json").write_text("[" * 100_000)
    _fails(cap, says="nested too deep")


def test_a_fifo_as_a_stream_leaves_that_thread_out(cap):
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    stream.unlink()
    os.mkfifo(stream)
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    assert _calls(proc.stdout)["parent_work"] == PARENT
    assert str(stream) in proc.stderr and "FIFO" in proc.stderr


def test_a_sparse_ring_of_200_gb_is_left_out(cap):
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    ring = stream.with_name(".ring-" + stream.name[len("stream-"):])
    with open(ring, "wb") as f:
        f.truncate(200 * 2**30)
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    assert _calls(proc.stdout)["child_work"] == CHILD
    assert str(ring) in proc.stderr and "not the size of a ring" in proc.stderr


def test_a_stream_larger_than_its_file_system_is_left_out(cap):
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    fs = os.statvfs(stream)
    with open(stream, "r+b") as f:
        f.truncate(fs.f_blocks * fs.f_frsize + 2**20)
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    rows = _calls(proc.stdout)
    assert rows["parent_work"] == PARENT and "child_work" not in rows
    assert str(stream) in proc.stderr and "sparse" in proc.stderr


def test_a_packet_claiming_gigabytes_of_zeros_is_read_in_no_time(cap):
    """A packet header whose sizes say 8 GiB, then a hole: events are never
    made out of zeros."""
    import struct
    _parent, child = _dirs(cap)
    (stream,) = child.glob("stream-*")
    head = bytearray(stream.read_bytes()[:60])
    struct.pack_into("<QQ", head, 24, 8 * 2**30 * 8, 8 * 2**30 * 8)
    with open(stream, "wb") as f:
        f.write(bytes(head))
        f.truncate(8 * 2**30)
    proc = _report(cap)
    assert proc.returncode == 0, proc.stderr
    assert _calls(proc.stdout)["parent_work"] == PARENT


def test_a_fifo_as_perf_script_is_an_error(cap):
    os.mkfifo(cap / "perf.script")
    _fails(cap, says="FIFO")


def test_a_sparse_perf_script_is_an_error(cap):
    with open(cap / "perf.script", "wb") as f:
        f.truncate(30 * 2**30)
    _fails(cap, says="sparse")


# ---- outputs that fail ----

@pytest.mark.parametrize("fmt", ["text", "folded", "chrome", "pprof"])
def test_a_full_output_is_a_one_line_error(cap, fmt):
    _fails(cap, "--format", fmt, "-o", "/dev/full", says="cannot write /dev/full")


def test_a_full_stdout_is_a_one_line_error(cap):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "etwtrace", "report", str(cap)],
                              stdout=full, stderr=subprocess.PIPE, encoding="utf-8",
                              timeout=HANG)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0], proc.stderr


def test_an_output_in_a_read_only_directory_is_a_one_line_error(cap, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        # Root writes anywhere a mode allows nothing: a read-only mount.
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]
                          ).returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs")
    else:
        ro.chmod(0o555)
    try:
        _fails(cap, "-o", ro / "out.txt", says="cannot write")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])
