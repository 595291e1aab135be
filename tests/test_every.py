"""record start PATH --sampled --every SECONDS [--keep SIZE] (#26): a
machine-wide sampled session that writes no trace but one pprof profile
per interval into PATH/profiles; `go tool pprof` opens each (skipped
without go, unless ETWTRACE_REQUIRE_CLIENTS=1), and their samples and
labels are read back with the report tests' decoder.  The counting itself
is tested without BPF in test_unit_intervals.py."""

import json
import os
import shutil
import subprocess
import time
from collections import Counter

import pytest

from conftest import client_env, need_client
from sessions import one_line_error
from test_sampled import Running, need_sampler
from test_unit_report import _decode_pprof

HOT = "inner"           # sampled_target.py's hot function


def profiles_of(capture):
    where = os.path.join(capture, "profiles")
    return [os.path.join(where, n) for n in sorted(os.listdir(where))]


def samples_by_pid(path, pid):
    """{leaf-first function names: samples} of process pid in a profile, and
    the labels of one of its samples."""
    with open(path, "rb") as f:
        decoded = _decode_pprof(f.read())
    counts, labels = Counter(), {}
    for names, values, label in decoded["samples"]:
        if label["pid"] == pid:
            counts[names] += values[0]
            labels = label
    return counts, labels


def pprof_top(path):
    need_client("go")
    r = subprocess.run(["go", "tool", "pprof", "-top", path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120, env=client_env())
    assert r.returncode == 0, r.stdout
    # The rows: flat flat% sum% cum cum% NAME.
    return [line.split(None, 5)[5] for line in r.stdout.splitlines()
            if len(line.split(None, 5)) == 6 and line.split()[1].endswith("%")]


def manifest_of(capture):
    with open(os.path.join(capture, "etwtrace-capture.json")) as f:
        return json.load(f)


@pytest.mark.versioned
def test_a_profile_per_interval_that_pprof_reads(box):
    """Over a hot program for about 7 s with --every 2: a profile each
    interval (snapshot's at once, stop's last), each opened by pprof with
    the hot function, and labelled with the process and thread."""
    need_sampler()
    capture = box.path("capture")
    target = Running("sampled_target.py", 12)
    try:
        started = box.start(capture, "--sampled", "--every", "2")
        assert "a profile every 2 s" in started.stderr and "99 Hz" in started.stderr
        time.sleep(3)
        status = box.record("status")
        assert status.returncode == 0, status.stderr
        assert "interval 2 s; " in status.stderr and "samples a second" in status.stderr
        assert "profile written" in status.stderr or "profiles written" in status.stderr
        assert "no sample lost" in status.stderr or "samples lost" in status.stderr
        one_line_error(box.record("snapshot", box.path("elsewhere")),
                       "leave out the snapshot's PATH")
        before = set(profiles_of(capture))
        snap = box.record("snapshot")
        assert snap.returncode == 0, snap.stderr
        written = snap.stderr.split("written to ", 1)[1].strip()
        assert written in set(profiles_of(capture)) - before
        time.sleep(4)
        stopped = box.stop()
        assert "session ended: " in stopped.stderr and "profiles" in stopped.stderr
    finally:
        target.proc.kill()
        target.proc.wait()
    profiles = profiles_of(capture)
    listing_hot = [p for p in profiles if HOT in pprof_top(p)]
    assert len(listing_hot) >= 3, profiles
    # Its own samples: the hot function under its caller, named with its
    # file, with the labels a fleet's backend groups by.
    counts, labels = samples_by_pid(listing_hot[1], target.proc.pid)
    assert sum(n for names, n in counts.items() if names[:2] == (HOT, "outer")) > 0, counts
    assert labels["tid"] == target.proc.pid and labels["thread"]
    assert labels["python"].count(".") == 2
    assert os.path.isabs(labels["executable"]) and "python" in labels["executable"]
    manifest = manifest_of(capture)
    assert manifest["profiles_written"] == len(profiles) and manifest["samples"] > 0
    assert manifest["every"] == 2 and manifest["rate"] == 99
    assert "samples_lost" in manifest
    assert not os.path.exists(os.path.join(capture, ".session"))     # no trace


def test_keep_removes_the_oldest_profiles(box):
    need_sampler()
    capture = box.path("capture")
    target = Running("sampled_target.py", 10)
    try:
        box.start(capture, "--sampled", "--every", "1", "--keep", "1K")
        time.sleep(4.5)
        status = box.record("status")
        assert "kept (the oldest removed past --keep)" in status.stderr, status.stderr
        box.stop()
    finally:
        target.proc.kill()
        target.proc.wait()
    manifest = manifest_of(capture)
    profiles = profiles_of(capture)
    assert manifest["profiles_written"] >= 4 and manifest["profiles_removed"] >= 1
    assert manifest["profiles_kept"] == len(profiles)
    assert manifest["profiles_written"] == manifest["profiles_kept"] + manifest["profiles_removed"]
    assert not any(os.path.basename(p).startswith("000001-") for p in profiles)
    assert len(profiles) == 1 or sum(os.path.getsize(p) for p in profiles) <= 1024


def test_a_process_that_ends_mid_interval_keeps_its_samples(box):
    """A program of 2.5 s in an interval of 60 s: its samples, named, are in
    the profile stop writes after it ended."""
    need_sampler()
    capture = box.path("capture")
    box.start(capture, "--sampled", "--every", "60")
    short = Running("sampled_target.py", 2.5)
    status, out = short.finish()
    assert status == 0 and out.strip() == "done"
    time.sleep(1.5)         # (the session sees it gone at its next look)
    box.stop()
    (profile,) = profiles_of(capture)
    counts, labels = samples_by_pid(profile, short.proc.pid)
    # inner called by outer, under the native frames it ran (allocation,
    # arithmetic: the stack tags fold the evaluator's frames, not those).
    hot = sum(n for names, n in counts.items()
              if any(pair == (HOT, "outer") for pair in zip(names, names[1:])))
    assert hot >= 20, counts.most_common(5)
    assert labels["executable"]
    if shutil.which("go"):
        assert HOT in pprof_top(profile)


def test_bad_every_options_are_one_line_errors(box):
    capture = box.path("capture")
    for args, text in [
            (["--every", "5"], "--every is for --sampled"),
            (["--sampled", "--every", "0"], "--every 0: out of range"),
            (["--sampled", "--keep", "10M"], "--keep is for --every"),
            (["--sampled", "--every", "5", "--keep", "10Q"], "--keep needs a size"),
            (["--sampled", "--every", "5", "--max-size", "1G"], "--keep bounds"),
    ]:
        r = box.record("start", capture, *args)
        one_line_error(r, text)
        assert r.returncode == 2 and r.stderr.startswith("etwtrace: error: ")
    assert not os.path.exists(capture)
