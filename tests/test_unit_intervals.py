"""record start --sampled --every, without BPF (marked `unit`): samples
counted by process, thread and stack (sampled/intervals.py, fed as the
sampler's recorder feeds top), each interval's counts as one pprof
profile read back here, the profiles kept within --keep
(capture/profiles.py), and the command line's refusals."""

import os
import types

import pytest

from etwtrace.capture import profiles as _profiles
from etwtrace.cli import args as _args
from etwtrace.errors import UsageError
from etwtrace.report import scan as _scan
from etwtrace.sampled import intervals as _intervals, live as _live
from test_unit_report import _decode_pprof
from test_unit_top import EVAL, FUNCTIONS, HOT_5, HOT_6, MAIN, MODULE, OUTER, chunk

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def recorder_with(clock, *pids):
    """An IntervalRecorder that reads processes `pids` (as SampledRecorder.add
    sets them up, without reading a process), each with FUNCTIONS."""
    intervals = _intervals.Intervals(clock)
    recorder = _intervals.IntervalRecorder(None, intervals)
    for pid in pids:
        feed = recorder.new_writer(pid)
        process = feed.window.process
        process.executable, process.python, process.comm = "/usr/bin/python3.11", "3.11.2", "app"
        recorder.targets[pid] = types.SimpleNamespace(
            writer=feed, name_thread=lambda tid, stream, ts: None, unwinder=None,
            remote=types.SimpleNamespace(close=lambda: None))
        recorder.writers[pid] = feed
        for i, (begin, end, line, is_python, file, name) in enumerate(FUNCTIONS):
            feed.stream(pid).function(0, i + 1, begin, end, line, is_python, file, name)
    return recorder, intervals


def samples_of(blob):
    """{(leaf-first function names, pid, tid): (count, cpu ns)} and the
    labels of each, from a profile."""
    decoded = _decode_pprof(blob)
    out, labels = {}, {}
    for names, values, label in decoded["samples"]:
        key = (names, label["pid"], label["tid"])
        assert key not in out       # one sample per distinct stack of a thread
        out[key] = values
        labels[key] = label
    return decoded["types"], out, labels


FOLD = _scan.interpreter_fold()


def test_an_interval_is_one_profile_of_its_stacks_with_their_labels():
    clock = Clock()
    recorder, intervals = recorder_with(clock, 42)
    recorder.targets[42].writer.stream(43).thread_name(0, 43, "worker")
    stack = [HOT_5, OUTER, MODULE, EVAL + 0x10, MAIN + 8]
    recorder.handle_chunk(42, 42, 1, 6, 6, chunk(*[stack] * 6))
    recorder.handle_chunk(42, 43, 1, 2, 2, chunk([HOT_6, OUTER, MODULE], [HOT_6, OUTER, MODULE]))
    recorder.handle_chunk(77, 77, 1, 1, 1, chunk(stack))        # a process it does not read
    clock.now += 5
    began, ended, counts, samples = intervals.cut()
    assert (ended - began, samples) == (5, 8)
    types_, got, labels = samples_of(_profiles.profile(counts, began, ended, 100, FOLD))
    assert types_ == [("samples", "count"), ("cpu", "nanoseconds")]
    # The interpreter's frames folded, as the report folds them; a sample
    # is worth 1/rate s of CPU.
    assert got == {(("hot", "outer", "<module>", "start_thread"), 42, 42): (6, 60_000_000),
                   (("hot", "outer", "<module>"), 42, 43): (2, 20_000_000)}
    main = labels[(("hot", "outer", "<module>", "start_thread"), 42, 42)]
    assert main["executable"] == "/usr/bin/python3.11" and main["python"] == "3.11.2"
    assert main["thread"] == "app"      # the main thread: the process's name
    assert labels[(("hot", "outer", "<module>"), 42, 43)]["thread"] == "worker"


def test_frames_carry_the_reports_names_files_and_lines():
    frames = {f.name: f for f in [_live.Frame("hot", "/src/app.py", 5, True),
                                  _live.Frame("PyNumber_Add", "/usr/lib/libpython3.11.so", 0,
                                              False)]}
    assert _profiles.frame_label(frames["hot"]) == "hot (/src/app.py:5)"
    assert _profiles.frame_label(frames["PyNumber_Add"]) == "PyNumber_Add [libpython3.11.so]"


def test_each_interval_has_only_its_own_samples():
    clock = Clock()
    recorder, intervals = recorder_with(clock, 42)
    stack = [HOT_5, OUTER, MODULE]
    recorder.handle_chunk(42, 42, 1, 3, 3, chunk(stack, stack, stack))
    clock.now += 2
    first = intervals.cut()
    recorder.handle_chunk(42, 42, 1, 1, 1, chunk(stack))
    clock.now += 2
    second = intervals.cut()
    assert (first[3], second[3], intervals.total) == (3, 1, 4)
    assert second[0] == first[1]        # no gap between intervals, no overlap
    _, got, _ = samples_of(_profiles.profile(second[2], second[0], second[1], 100, FOLD))
    assert got == {(("hot", "outer", "<module>"), 42, 42): (1, 10_000_000)}


def test_a_process_that_ends_mid_interval_keeps_its_samples():
    clock = Clock()
    recorder, intervals = recorder_with(clock, 42, 50)
    recorder.handle_chunk(50, 50, 1, 4, 4, chunk(*[[HOT_5, OUTER, MODULE]] * 4))
    recorder.forget(50)                 # it ended: the sampler forgets it
    recorder.handle_chunk(42, 42, 1, 1, 1, chunk([OUTER, MODULE]))
    clock.now += 3
    began, ended, counts, _ = intervals.cut()
    _, got, labels = samples_of(_profiles.profile(counts, began, ended, 100, FOLD))
    assert got[(("hot", "outer", "<module>"), 50, 50)] == (4, 40_000_000)
    assert labels[(("hot", "outer", "<module>"), 50, 50)]["executable"] == "/usr/bin/python3.11"


def test_a_pid_used_again_within_an_interval_is_told_apart():
    clock = Clock()
    recorder, intervals = recorder_with(clock, 42)
    recorder.handle_chunk(42, 42, 1, 1, 1, chunk([HOT_5, MODULE]))
    recorder.forget(42)
    again = _intervals.ProcessInfo(42, "/usr/bin/python3.13", "3.13.1", "other")
    intervals.counts[(again, 42, (_live.Frame("f", "/x.py", 1, True),))] += 2
    began, ended, counts, _ = intervals.cut()
    decoded = _decode_pprof(_profiles.profile(counts, began, ended + 1, 100, FOLD))
    by_exe = {labels["executable"]: labels for _, _, labels in decoded["samples"]}
    assert "exec" not in by_exe["/usr/bin/python3.11"]
    assert by_exe["/usr/bin/python3.13"]["exec"] == 2


def test_a_sample_of_the_interpreters_frames_alone_is_counted():
    clock = Clock()
    recorder, intervals = recorder_with(clock, 42)
    recorder.handle_chunk(42, 42, 1, 1, 1, chunk([EVAL + 0x10, 0x5555]))
    began, ended, counts, _ = intervals.cut()
    _, got, _ = samples_of(_profiles.profile(counts, began, ended + 1, 100, FOLD))
    assert got == {(("[unknown]",), 42, 42): (1, 10_000_000)}


# ---- the profiles on disk ----

def test_the_oldest_profiles_go_past_keep_the_newest_stays(tmp_path):
    said = []
    store = _profiles.ProfileStore(str(tmp_path), keep=250)
    paths = [store.write(bytes(100), 1_800_000_000 + i, said.append) for i in range(4)]
    names = sorted(os.listdir(tmp_path / "profiles"))
    assert names == [os.path.basename(p) for p in paths[2:]]     # the two newest
    assert names[0].startswith("000003-20270115T") and names[0].endswith(".pb.gz")
    assert (store.written, store.removed, store.used) == (4, 2, 200)
    assert said == []
    store.write(bytes(300), 1_800_000_010, said.append)       # over keep alone: kept
    assert len(os.listdir(tmp_path / "profiles")) == 1 and store.used == 300
    assert "over --keep" in said[0]


def test_profiles_go_where_the_store_opened_never_through_a_link(tmp_path):
    """Root's daemon writes the profiles: a name swapped for a link after it
    started, or planted before, must not move where it writes or removes."""
    cap, elsewhere = tmp_path / "cap", tmp_path / "elsewhere"
    cap.mkdir()
    elsewhere.mkdir()
    store = _profiles.ProfileStore(str(cap), keep=150)
    first = store.write(bytes(100), 1_800_000_000, print)
    (cap / "profiles").rename(cap / "moved")
    (cap / "profiles").symlink_to(elsewhere)
    store.write(bytes(100), 1_800_000_001, print)     # keep: the first is removed
    assert os.listdir(elsewhere) == []
    left = os.listdir(cap / "moved")      # the second, where the first was
    assert len(left) == 1 and left[0].startswith("000002-") and left[0] != os.path.basename(first)
    # Planted before: PATH/profiles, or PATH, a link.
    with pytest.raises(OSError):
        _profiles.ProfileStore(str(cap), keep=150)
    (tmp_path / "link").symlink_to(cap / "moved")
    with pytest.raises(OSError):
        _profiles.ProfileStore(str(tmp_path / "link"), keep=150)


def test_a_profile_that_would_eat_the_reserve_is_not_written(tmp_path, monkeypatch):
    said = []
    store = _profiles.ProfileStore(str(tmp_path), keep=1 << 20)
    monkeypatch.setattr(_profiles._budget, "fits", lambda path, size: False)
    assert store.write(bytes(100), 1_800_000_000, said.append) is None
    assert (store.written, store.not_written) == (0, 1)
    assert os.listdir(tmp_path / "profiles") == [] and "reserve" in said[0]


# ---- the command line ----

@pytest.mark.parametrize("args, message", [
    (["--every", "5"], "--every is for --sampled"),
    (["--sampled", "--every", "0"], "--every 0: out of range"),
    (["--sampled", "--every", "-1"], "--every -1: out of range"),
    (["--sampled", "--every", "soon"], "--every takes a number of seconds"),
    (["--sampled", "--keep", "1M"], "--keep is for --every"),
    (["--sampled", "--every", "5", "--keep", "lots"], "--keep needs a size"),
    (["--sampled", "--every", "5", "--keep", "0"], "--keep must be more than 0"),
    (["--sampled", "--every", "5", "--max-size", "1G"], "--keep bounds its profiles"),
])
def test_bad_every_and_keep_are_refused(args, message):
    with pytest.raises(UsageError) as ex:
        _args.parse(["record", "start", "/tmp/x", *args])
    assert message in str(ex.value)


def test_every_takes_seconds_with_or_without_an_s():
    for text, seconds in (("5", 5.0), ("5s", 5.0), ("0.5", None), ("2.5", 2.5)):
        if seconds is None:
            with pytest.raises(UsageError):
                _args.parse(["record", "start", "/tmp/x", "--sampled", "--every", text])
            continue
        opts = _args.parse(["record", "start", "/tmp/x", "--sampled", "--every", text])[1]
        assert opts.every == seconds and opts.keep is None
