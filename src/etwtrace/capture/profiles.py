"""A sampled session's profiles (record start PATH --sampled --every
SECONDS [--keep SIZE]): one gzipped pprof profile per interval in
PATH/profiles, named by their number and the UTC time their interval
began (so names sort oldest first), the oldest removed once they hold more
than --keep.  The daemon (session.py) asks due_in() after each read of the
sampler's ring, and calls write() at an interval's end, a snapshot and
the stop;
the counting is sampled/intervals.py's, the encoding the report's
(report/formats/profile_proto.py)."""

import os
import time
from collections import Counter

from ..report import scan as _scan
from ..report.calltree import shown
from ..report.formats import profile_proto as _pprof
from ..sampled import intervals as _intervals, live as _live
from ..trace import budget as _budget, safefs as _safefs
from ..trace.capture import CaptureError
from .. import sizes as _sizes

DIRECTORY = "profiles"
SUFFIX = ".pb.gz"
DEFAULT_KEEP = 100 << 20
# A continuous profile's rate (Parca's agent samples at 19 Hz,
# Pyroscope's at 100): hundreds of samples an interval, a tenth of a
# capture's unwinding (docs/BENCHMARKS.md).
DEFAULT_RATE = 99
# The longest wait between reads of the sampler's ring (it wakes the
# daemon sooner when a quarter full): 2.5 times the capture's, which
# halves the daemon's running cost at 99 Hz (docs/BENCHMARKS.md).  A
# process that ends within it after a stack never seen before leaves
# that stack's functions without file and line (their names stay).
WAIT_MS = 250
# Each sample twice: as a count, and as the CPU time it stands for (the
# profile's default type, what pprof -top shows first).
SAMPLE_TYPES = [("samples", "count"), ("cpu", "nanoseconds")]
# The stack of a sample whose frames are all the interpreter's own.
UNNAMED = ("[unknown]",)


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


class ProfileStore:
    """PATH/profiles: the profiles written, within `keep` bytes.  Every file
    is made, renamed and removed through a descriptor of the directory,
    held for the store's life (the session's daemon runs as root: a name
    swapped for a link after it started must not move where it writes).
    `parent_fd`: PATH's descriptor (the session's CaptureDir holds one);
    without it, PATH is opened here, never through a link."""

    def __init__(self, path, keep, parent_fd=None):
        self.path = os.path.join(path, DIRECTORY)       # (for what it says)
        self.keep = keep
        self.written = 0        # profiles written
        self.removed = 0        # written, then removed past --keep
        self.not_written = 0    # left unwritten: the disk's reserve
        self.files = []         # [name, size] of those there, oldest first
        parent = _safefs.open_dir(path) if parent_fd is None else parent_fd
        try:
            try:
                os.mkdir(DIRECTORY, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
            self.fd = _safefs.open_dir(DIRECTORY, dir_fd=parent)
        finally:
            if parent_fd is None:
                os.close(parent)
        if os.fstat(self.fd).st_uid != os.geteuid():
            os.close(self.fd)
            raise CaptureError(f"{self.path} is not a directory of this user; "
                               "refusing to write into it")

    @property
    def used(self):
        return sum(size for _, size in self.files)

    def write(self, data, began, say):
        """Writes one profile (whole, or not at all); its path, or None when
        it would leave the file system less than etwtrace's reserve."""
        if not _budget.fits(self.fd, len(data)):
            self.not_written += 1
            say(f"etwtrace: a profile of {_sizes.size_text(len(data))} was not written: "
                "the file system's free space is down to etwtrace's reserve")
            return None
        self.written += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(began))
        name = f"{self.written:06d}-{stamp}{SUFFIX}"
        tmp = f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            raise
        self.files.append([name, len(data)])
        self._prune(say)
        return os.path.join(self.path, name)

    def _prune(self, say):
        """Removes the oldest profiles past `keep` (never the newest)."""
        while len(self.files) > 1 and self.used > self.keep:
            name, _ = self.files.pop(0)
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            self.removed += 1
        if self.used > self.keep:
            say(f"etwtrace: the newest profile alone is over --keep "
                f"{_sizes.size_text(self.keep)}: kept")


class IntervalProfiles:
    """The session's sampling counted into intervals, each written as a
    profile when it ends."""

    def __init__(self, sampling, path, every, keep, rate, say, path_fd=None):
        self.sampling = sampling
        self.every = every
        self.rate = rate
        self.say = say
        self.store = ProfileStore(path, keep, path_fd)
        self.intervals = _intervals.Intervals()
        self.fold = _live.Window(fold=_scan.interpreter_fold()).folds
        self.recorder = _intervals.IntervalRecorder(sampling.sampler_module, self.intervals)
        sampling.record_with(self.recorder)
        self.last = None            # (samples, seconds) of the last whole interval
        self.last_path = None
        self.lost_at_close = None

    def close(self):
        """Stops sampling, counting what it took last into the interval
        that runs; returns the samples lost in all."""
        self.lost_at_close = self.sampling.close()
        return self.lost_at_close

    def due_in(self, now=None):
        """Seconds until the interval that runs ends."""
        now = time.time() if now is None else now
        return self.intervals.began + self.every - now

    def write(self):
        """Ends the interval that runs and writes its profile (its path,
        or None)."""
        began, ended, counts, samples = self.intervals.cut()
        if ended - began >= self.every * 0.5:
            self.last = (samples, ended - began)
        data = profile(
            counts, began, ended, self.rate, self.fold,
            comments=[f"etwtrace: every CPython sampled at {self.rate} Hz, "
                      f"{samples} samples from {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(began))}"
                      f" UTC for {ended - began:.1f} s"])
        self.last_path = self.store.write(data, began, self.say)
        return self.last_path

    def lost(self):
        """Samples lost so far (sampler.Sampling.lost), or in all once
        sampling stopped."""
        if self.lost_at_close is not None:
            return self.lost_at_close
        return self.sampling.lost()

    def samples_per_second(self, now=None):
        """Over the interval that runs (once a second of it has passed),
        else over the last one."""
        now = time.time() if now is None else now
        elapsed = now - self.intervals.began
        if elapsed >= 1.0 or self.last is None:
            return self.intervals.samples / elapsed if elapsed > 0 else 0.0
        samples, seconds = self.last
        return samples / seconds if seconds > 0 else 0.0

    def status(self):
        """What the session's state file says of the profiles (status)."""
        return {"profiles_written": self.store.written, "profiles_kept": len(self.store.files),
                "profiles_removed": self.store.removed,
                "profiles_not_written": self.store.not_written,
                "profiles_bytes": self.store.used, "last_profile": self.last_path,
                "samples": self.intervals.total, "samples_lost": self.lost(),
                "samples_per_second": round(self.samples_per_second(), 1),
                "processes_now": len(self.recorder.targets)}
