"""record start --sampled --every: the BPF sampler's samples of every
process counted in memory by (process, thread, stack), as `top` counts
them (live.Feed names each sample's frames), and each interval's counts
turned into one pprof profile (report/formats/profile_proto.py's encoder)
instead of a trace of every sample.

Memory and the work at the end of an interval grow with the number of
distinct stacks, not with samples.  A process that ends mid-interval keeps
its samples: they are counted under its ProcessInfo, which the interval
holds until its profile is written."""

import os
import time
from collections import Counter

from ..report.calltree import shown
from ..report.formats import profile_proto as _pprof
from .live import Feed, LiveRecorder

# Each sample twice: as a count, and as the CPU time it stands for (the
# profile's default type, what pprof -top shows first).
SAMPLE_TYPES = [("samples", "count"), ("cpu", "nanoseconds")]
# The stack of a sample whose frames are all the interpreter's own.
UNNAMED = ("[unknown]",)


class ProcessInfo:
    """What a profile says of a sampled process (its labels)."""

    def __init__(self, pid, executable="", python="", comm=""):
        self.pid = pid
        self.executable = executable
        self.python = python
        self.comm = comm
        self.thread_names = {}      # tid -> OS name (live.Feed fills it)

    def describe(self, target):
        """Fills in what the sampler's _Target read of the process."""
        try:
            self.executable = os.readlink(f"/proc/{self.pid}/exe")
        except OSError:
            self.executable = target.remote.binary or ""
        h = target.remote.offsets.version_hex
        self.python = f"{h >> 24}.{(h >> 16) & 0xFF}.{(h >> 8) & 0xFF}"
        self.comm = target.comm or ""

    def thread_name(self, tid):
        """A thread's OS name: its own, or (the main thread, a thread not
        named) the process's."""
        return self.thread_names.get(tid) or self.comm


class Intervals:
    """The samples of the interval that runs, by (process, thread, leaf-first
    frames); cut() ends it and starts the next."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.began = clock()
        self.counts = Counter()
        self.samples = 0        # in this interval
        self.total = 0          # in all of them

    def tally(self, process):
        """Where a live.Feed puts the samples of `process`."""
        return _Tally(self, process)

    def cut(self):
        """(began, ended, counts, samples) of the interval that ends now."""
        ended = self.clock()
        done = (self.began, ended, self.counts, self.samples)
        self.began, self.counts, self.samples = ended, Counter(), 0
        return done


class _Tally:
    """A process's samples into the interval that runs (a live.Window's
    add(), which live.Feed calls)."""

    def __init__(self, intervals, process):
        self.intervals = intervals
        self.process = process

    def add(self, tid, frames, now, count=1):
        intervals = self.intervals
        intervals.counts[(self.process, tid, frames)] += count
        intervals.samples += count
        intervals.total += count


class IntervalRecorder(LiveRecorder):
    """The sampler's recorder, counting each process's samples into
    `intervals` (no capture is written)."""

    def __init__(self, sampler, intervals):
        super().__init__(sampler, None)
        self.intervals = intervals

    def new_writer(self, pid):
        process = ProcessInfo(pid)
        feed = Feed(self.intervals.tally(process), self.clock)
        feed.thread_names = process.thread_names
        return feed

    def add(self, pid):
        target = super().add(pid)
        target.writer.window.process.describe(target)
        return target


def frame_label(frame):
    """A live.Frame as the report labels it (calltree.label_of and
    scan's native frames), which the pprof encoder reads back."""
    if frame.python:
        return f"{shown(frame.name)} ({shown(frame.file)}:{frame.line})"
    return f"{frame.name} [{os.path.basename(frame.file)}]"


def profile(counts, began, ended, rate, fold=None, comments=()):
    """The gzipped profile.proto of one interval's `counts` ({(ProcessInfo,
    tid, leaf-first frames): samples}) sampled at `rate` Hz: the frames
    `fold` says are the interpreter's own left out, as the report does."""
    fold = fold or (lambda frame: False)
    period = 1_000_000_000 // rate
    labels = {}         # leaf-first frames -> root-first labels
    images = {}         # ProcessInfo -> (pid, image)
    samples = Counter()
    thread_names = {}
    process_labels = {}
    for (process, tid, frames), n in counts.items():
        key = images.get(process)
        if key is None:
            # A pid used again within the interval: its second process
            # is told apart as the report tells an exec'd program.
            image = 1 + sum(1 for p in images if p.pid == process.pid)
            key = images[process] = (process.pid, image)
            process_labels[key] = [("executable", process.executable),
                                   ("python", process.python)]
        named = labels.get(frames)
        if named is None:
            named = labels[frames] = tuple(frame_label(f) for f in reversed(frames)
                                           if not fold(f))
        if not named:
            named = UNNAMED      # (the report leaves these out; counted here)
        samples[((key, tid), named)] += n
        name = process.thread_name(tid)
        if name:
            thread_names[(key, tid)] = name
    values = {key: (n, n * period) for key, n in samples.items()}
    return _pprof.encode(values, SAMPLE_TYPES, duration_ns=int((ended - began) * 1e9),
                         comments=comments, thread_names=thread_names,
                         process_labels=process_labels, time_ns=int(began * 1e9),
                         period=period)
