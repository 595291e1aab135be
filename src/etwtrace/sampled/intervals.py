"""record start --sampled --every: the BPF sampler's samples of every
process counted in memory by (process, thread, stack), as `top` counts
them (live.Feed names each sample's frames), interval by interval; each
interval's counts become one pprof profile (capture/profiles.py) instead
of a trace of every sample.

Memory and the work at the end of an interval grow with the number of
distinct stacks, not with samples.  A process that ends mid-interval keeps
its samples: they are counted under its ProcessInfo, which the interval
holds until its profile is written."""

import os
import time
from collections import Counter

from .live import Feed, LiveRecorder


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
