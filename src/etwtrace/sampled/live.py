"""What `etwtrace top` shows: the BPF sampler's samples of one process over
the last seconds, counted by function (or line), in memory; no capture is
written.

The sampler's recorder (sampler.SampledRecorder) hands each process's
events to a writer; here that writer is a Feed, which keeps the functions
the sampler describes (PythonFunction events) and puts each sample's stack,
named, into a Window of per-second counts.  Drawing it is the command
line's (cli/top.py)."""

import bisect
import struct
import time
from collections import Counter, namedtuple

from .sampler import RemoteError, SampledError, SampledRecorder, Sampling

# A frame of a sample: native frames have line 0 and their file's path.
Frame = namedtuple("Frame", "name file line python")
UNKNOWN = Frame("[unknown]", "", 0, False)
# A row of the view: a function (or line) and its samples in the window.
Row = namedtuple("Row", "frame own total")

_COUNT = struct.Struct("<I")
_EVENT_HEAD = 13        # an extended header: id, event id, time (ctfwrite)
STACK_CACHE = 65536     # named stacks remembered per process (then it starts again)
FRAME_CACHE = 65536     # frames whose folding is remembered


class Symbols:
    """One process's functions by address, as the sampler described them:
    Python lines at their synthetic ranges, native functions at theirs."""

    def __init__(self):
        self.begins = []
        self.items = []

    def add(self, begin, end, frame):
        i = bisect.bisect_left(self.begins, begin)
        if i < len(self.begins) and self.begins[i] == begin:
            self.items[i] = (end, frame)
        else:
            self.begins.insert(i, begin)
            self.items.insert(i, (end, frame))

    def find(self, address):
        i = bisect.bisect_right(self.begins, address) - 1
        if i >= 0:
            end, frame = self.items[i]
            if address < end:
                return frame
        return UNKNOWN


class Feed:
    """A process's events, as the sampler's recorder writes them into a
    capture's TraceWriter: here they go into `window`."""

    recording = True

    def __init__(self, window, clock=time.monotonic):
        self.window = window
        self.clock = clock
        self.symbols = Symbols()
        self.stacks = {}        # encoded stack -> its frames, leaf first
        self.threads = {}
        self.thread_names = {}  # tid -> its OS name, where not the process's

    def stream(self, tid):
        thread = self.threads.get(tid)
        if thread is None:
            thread = self.threads[tid] = _ThreadFeed(self, tid)
        return thread

    def frames(self, payload):
        """The frames of an encoded stack (u32 count, u64 addresses)."""
        frames = self.stacks.get(payload)
        if frames is None:
            if len(self.stacks) >= STACK_CACHE:
                self.stacks.clear()
            (n,) = _COUNT.unpack_from(payload)
            find = self.symbols.find
            frames = self.stacks[payload] = tuple(
                find(a) for a in struct.unpack_from(f"<{n}Q", payload, 4))
        return frames

    def flush(self):
        pass

    def close(self):
        pass


class _ThreadFeed:
    """One thread's events (a StreamWriter's interface)."""

    def __init__(self, feed, tid):
        self.feed = feed
        self.tid = tid

    def function(self, ts, function_id, begin, end, line, is_python, file, name):
        self.feed.symbols.add(begin, end, Frame(name, file, line if is_python else 0,
                                                bool(is_python)))
        self.feed.stacks.clear()    # (a stack named before may name it now)

    def thread_name(self, ts, tid, name):
        """A thread's OS name, as the recorder reads it (top reads the
        names of the threads it shows from /proc itself; a profile of an
        interval labels samples with it)."""
        self.feed.thread_names[tid] = name

    def sample(self, ts, payload):
        """A sample, its stack encoded (ctfwrite.sample_payload)."""
        feed = self.feed
        feed.window.add(self.tid, feed.frames(payload), feed.clock())

    def extend(self, events, first, last, samples=0):
        """Encoded SampledProfile events (the sampler's chunks): each an
        extended header, then its stack encoded."""
        feed = self.feed
        now = feed.clock()
        at, size = 0, len(events)
        while at < size:
            begin = at + _EVENT_HEAD
            (n,) = _COUNT.unpack_from(events, begin)
            at = begin + 4 + 8 * n
            feed.window.add(self.tid, feed.frames(bytes(events[begin:at])), now)
        return True


class Window:
    """The samples of the last `seconds`, counted per second by thread and
    stack; `fold(frame)`: whether a frame is the interpreter's own, shown
    as part of the function that calls it (stack tags)."""

    def __init__(self, seconds=5, fold=None):
        self.seconds = seconds
        self.fold_test = fold or (lambda frame: False)
        self.folded = {}        # frame -> fold_test(frame), asked once a frame
        self.buckets = {}       # whole second -> Counter((tid, frames))

    def add(self, tid, frames, now, count=1):
        second = int(now)
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = Counter()
            for old in [s for s in self.buckets if s <= second - self.seconds]:
                del self.buckets[old]
        bucket[(tid, frames)] += count

    def counts(self, now):
        """(tid, frames) -> samples, in the window that ends `now`."""
        total = Counter()
        for second, bucket in self.buckets.items():
            if int(now) - self.seconds < second <= int(now):
                total.update(bucket)
        return total

    def threads(self, now):
        """The threads with samples in the window, by samples, most first."""
        by_thread = Counter()
        for (tid, _), n in self.counts(now).items():
            by_thread[tid] += n
        return [tid for tid, _ in sorted(by_thread.items(), key=lambda kv: (-kv[1], kv[0]))]

    def rows(self, now, sort="own", lines=False, tid=None):
        """(samples, rows): the window's samples (of thread `tid`, or all)
        and a Row per function (per line with `lines`), each with the
        samples it was the leaf of (own) and those it was on the stack of
        (total), sorted by `sort` ("own" or "total"), most first."""
        own, total = Counter(), Counter()
        samples = 0
        for (thread, frames), n in self.counts(now).items():
            if tid is not None and thread != tid:
                continue
            samples += n
            shown = [self._key(f, lines) for f in frames if not self.folds(f)]
            if not shown:
                continue
            own[shown[0]] += n
            for key in set(shown):
                total[key] += n
        rows = [Row(key, own[key], n) for key, n in total.items()]
        first = (lambda r: (-r.own, -r.total)) if sort == "own" else \
                (lambda r: (-r.total, -r.own))
        rows.sort(key=lambda r: (*first(r), r.frame.name, r.frame.file, r.frame.line))
        return samples, rows

    def folds(self, frame):
        """Whether `frame` folds (fold(frame), asked once a frame)."""
        folds = self.folded.get(frame)
        if folds is None:
            if len(self.folded) >= FRAME_CACHE:
                self.folded.clear()
            folds = self.folded[frame] = self.fold_test(frame)
        return folds

    @staticmethod
    def _key(frame, lines):
        if lines or not frame.python:
            return frame
        # A function: its lines together, at its first line.
        return frame._replace(line=0)


class LiveRecorder(SampledRecorder):
    """The sampler's recorder, keeping samples in a Window, not a capture."""

    def __init__(self, sampler, window, clock=time.monotonic):
        super().__init__(None, sampler)
        self.window = window
        self.clock = clock

    def new_writer(self, pid):
        return Feed(self.window, self.clock)


class LiveSampling:
    """The BPF sampler sampling one process into a Window: drain() after
    the sampler's descriptor is readable (or at least every tenth of a
    second) keeps it current."""

    def __init__(self, rate, window):
        self.sampling = Sampling(rate)      # SampledError: cannot start
        self.sampling.record_with(LiveRecorder(self.sampling.sampler_module, window))

    def add(self, pid, child=None):
        """Samples process pid: at once, or (`child`, a Popen just started)
        once its interpreter is mapped; False if the child ended first."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sampling.add(pid)
                return True
            except RemoteError as ex:
                if child is None:
                    raise SampledError(str(ex)) from None
                if child.poll() is not None:
                    return False
                if time.monotonic() > deadline:
                    raise SampledError(f"cannot sample process {pid}: {ex}") from None
                time.sleep(0.005)

    def fileno(self):
        return self.sampling.fileno()

    def drain(self):
        self.sampling.drain()

    def lost(self):
        """Samples the ring buffer lost so far."""
        return self.sampling.sampler.dropped()

    def close(self):
        self.sampling.close()


