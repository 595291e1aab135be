"""A capture's budget and its file system's reserve: recording stops, out
loud, before a capture grows past its --max-size or leaves its file
system less free space than the reserve (RESERVE_PERCENT of its size, at
most RESERVE_MAX).  The program runs on; what it does after is counted as
lost.

The budget is the file CTF_DIR/.budget (the layout of EtwBudget in
_native/trace_format.h), made here by the launcher or the session before
anything records, and mapped by every process of the capture
(_native/budget.h): each claims a packet (64 KiB) before it writes one,
and stops the whole capture when a claim does not fit.  The recorders
check the free space themselves before each packet they write.  What they
do not write is watched by a Guard: perf.data, whose perf it disables
(perf's control FIFO) when the capture stops, and in root's session the
traces of other users' processes, which may read the budget but not
write it."""

import mmap
import os
import stat
import struct
import threading
import time

from .. import sizes as _sizes
from ..errors import Error

NAME = ".budget"
MAGIC = b"ETWBUDG1"
BYTES = 4096
RESERVE_PERCENT = 5
RESERVE_MAX = 1 << 30
STOP_LIMIT = 1
STOP_RESERVE = 2
# magic, limit, claimed, counted, stopped, stopped_pid, free_at_stop,
# reserve_at_stop, threads_refused, processes_refused, events_unrecorded,
# summarized, threads_unwritable
_LAYOUT = struct.Struct("<8sQQQIIQQIIQII")
_COUNTED = struct.Struct("<Q")
_CLAIMED_AT = 16
_COUNTED_AT = 24
_STOP = struct.Struct("<IIQQ")
_STOP_AT = 32


class BudgetError(Error):
    """The budget file cannot be made (one line)."""


def reserve_of(st):
    """The free bytes a capture leaves on a file system (os.statvfs)."""
    return min(st.f_blocks * st.f_frsize * RESERVE_PERCENT // 100, RESERVE_MAX)


def room(path):
    """(free bytes, reserve) of the file system holding `path`; (None,
    None) when it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    if st.f_blocks == 0:
        return None, None
    return st.f_bavail * st.f_frsize, reserve_of(st)


def fits(path, size):
    """Whether `size` more bytes on the file system of `path` (or of the
    open descriptor `path`) leave its reserve free (space is taken in
    blocks: a write takes at most one more than its size rounds up to, as
    budget.c counts)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return True
    if st.f_blocks == 0:
        return True
    block = st.f_frsize or 4096
    need = -(-size // block) * block + block
    return st.f_bavail * st.f_frsize - need >= reserve_of(st)


def tree_size(path):
    """Bytes of the regular files under `path` (symlinks not followed): what
    a copy of it needs at most."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _write_new(path, limit, mode, summarized=1):
    """A new budget file at `path` (never an existing file, never through
    a symlink), mapped; `summarized`: its maker says at the end what the
    capture lost."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, _LAYOUT.pack(MAGIC, limit, 0, 0, 0, 0, 0, 0, 0, 0, 0, summarized, 0)
                  .ljust(BYTES, b"\0"), 0)
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    return Budget(fd, path)


def create(ctf_dir, limit, others_read=False):
    """Makes the budget of a capture, in its new (or own) ctf directory,
    with a limit of `limit` bytes (0: none); readable by every user with
    `others_read` (root's session, which other users' processes join)."""
    path = os.path.join(ctf_dir, NAME)
    try:
        os.makedirs(ctf_dir, mode=0o700, exist_ok=True)
        return _write_new(path, limit, 0o644 if others_read else 0o600)
    except OSError as ex:
        raise BudgetError(f"cannot create {path}: {ex.strerror}") from None


def ensure(capture_dir, limit):
    """The budget of a capture recorded without a launcher
    (ETWTRACE_CAPTURE with ETWTRACE_MAX_SIZE): made whole by the first
    process (written aside, then linked into place), used as it is by the
    others.  Best effort: without one, each process keeps the reserve."""
    ctf_dir = os.path.join(capture_dir, "ctf")
    target = os.path.join(ctf_dir, NAME)
    if os.path.lexists(target):
        return
    fresh = os.path.join(ctf_dir, f"{NAME}.{os.getpid()}")
    try:
        os.makedirs(ctf_dir, mode=0o700, exist_ok=True)
        if os.path.lexists(fresh):
            os.unlink(fresh)
        budget = _write_new(fresh, limit, 0o600, summarized=0)
        budget.close()
        try:
            os.link(fresh, target)
        except FileExistsError:
            pass
        finally:
            os.unlink(fresh)
    except OSError:
        pass


def open_budget(ctf_dir):
    """The budget of a capture as it is now, or None (none, or not ours)."""
    path = os.path.join(ctf_dir, NAME)
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except PermissionError:
            continue
        except OSError:
            return None
    else:
        return None
    st = os.fstat(fd)
    if (not stat.S_ISREG(st.st_mode) or st.st_size < BYTES
            or st.st_uid not in (0, os.geteuid())):
        os.close(fd)
        return None
    budget = Budget(fd, path)
    if budget.values()[0] != MAGIC:
        budget.close()
        return None
    return budget


class Budget:
    """A budget file, mapped: its values read as they are now."""

    def __init__(self, fd, path):
        import fcntl
        self.path = path
        try:
            self.writable = (os.fstat(fd).st_uid == os.geteuid()
                             and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR)
            self._map = mmap.mmap(fd, BYTES, mmap.MAP_SHARED,
                                  mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0))
        finally:
            os.close(fd)

    def close(self):
        if self._map is not None:
            self._map.close()
            self._map = None

    def remove(self):
        """Closes and deletes the file (processes still running keep their
        mapping of it, and record nothing more)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def values(self):
        return _LAYOUT.unpack_from(self._map, 0)

    @property
    def limit(self):
        return self.values()[1]

    @property
    def used(self):
        """Bytes claimed by the recorders and counted from outside."""
        values = self.values()
        return values[2] + values[3]

    @property
    def stopped(self):
        return self.values()[4]

    def count(self, size):
        """Sets the bytes counted from outside (perf.data, others' traces)."""
        if self.writable:
            _COUNTED.pack_into(self._map, _COUNTED_AT, size)

    def set_claimed(self, size):
        """Sets the bytes claimed, for a capture whose one writer is a
        WriterBudget (the sampler's: no recorder claims beside it)."""
        if self.writable:
            _COUNTED.pack_into(self._map, _CLAIMED_AT, size)

    def stop(self, why, free=0, reserve=0):
        """Stops the capture for `why` (STOP_*); whether this call did."""
        if self.stopped or not self.writable:
            return False
        _STOP.pack_into(self._map, _STOP_AT, why, os.getpid(), free, reserve)
        return True

    def info(self):
        """What the manifest says of the budget: its "max_size",
        "recording_stopped" (why, when it stopped early) and "not_recorded"
        (threads and processes that had no trace, and their events); {}
        when there was no limit and nothing of that."""
        (_magic, limit, _claimed, _counted, stopped, pid, free, reserve, threads,
         processes, unrecorded, _summarized, unwritable) = self.values()
        info = {}
        if limit:
            info["max_size"] = limit
        if stopped:
            info["recording_stopped"] = _stop_info(stopped, pid, limit, free, reserve)
        missed = {k: v for k, v in (("processes", processes), ("threads", threads),
                                    ("threads_unwritable", unwritable),
                                    ("events", unrecorded)) if v}
        if missed:
            info["not_recorded"] = missed
        return info


def _stop_info(why, pid, limit, free, reserve):
    """A manifest's "recording_stopped": why (STOP_*), by which process,
    and the limit or the free space and reserve then."""
    stop = {"reason": {STOP_LIMIT: "max-size", STOP_RESERVE: "reserve"}.get(why, "?"), "pid": pid}
    if why == STOP_LIMIT:
        stop["max_size"] = limit
    else:
        stop.update(free=free, reserve=reserve)
    return stop


def _count(value):
    """A count from a manifest, which may come from anywhere: 0 unless a
    number of 0 or more."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def stop_text(stop):
    """Why recording stopped, for people, from a manifest's
    "recording_stopped" (None when it did not)."""
    if not isinstance(stop, dict):
        return None
    def size(key):
        return _sizes.size_text(_count(stop.get(key)))

    if stop.get("reason") == "max-size":
        why = f"the capture reached its size limit (--max-size {size('max_size')})"
    else:
        why = (f"its file system had {size('free')} free, no more than the {size('reserve')} "
               f"etwtrace leaves free ({RESERVE_PERCENT}% of its size, at most "
               f"{_sizes.size_text(RESERVE_MAX)})")
    return f"recording stopped early: {why}"


def loss_text(losses, manifest):
    """What a capture lost, in one line (None when nothing): why recording
    stopped early, what was not recorded at all, and how many events were
    lost (`losses`: {pid: n} from the traces; `manifest`: the capture's
    manifest, or what Budget.info() says)."""
    from .ctf import describe_losses
    manifest = manifest if isinstance(manifest, dict) else {}
    stopped = stop_text(manifest.get("recording_stopped"))
    missed = manifest.get("not_recorded")
    missed = missed if isinstance(missed, dict) else {}
    lines = [stopped] if stopped else []
    names, count = [], 0
    for key, one in (("processes", "process"), ("threads", "thread")):
        n = _count(missed.get(key))
        if n:
            names.append(f"{n} {one if n == 1 else key}")
            count += n
    if names:
        why = ("that began after it" if stopped else
               "(no room left for their rings within --max-size)")
        lines.append(f"{' and '.join(names)} {why} {'was' if count == 1 else 'were'} "
                     "not recorded")
    unwritable = _count(missed.get("threads_unwritable"))
    if unwritable:
        lines.append(f"{unwritable} thread{'' if unwritable == 1 else 's'} whose trace files "
                     f"could not be made {'was' if unwritable == 1 else 'were'} not recorded")
    unrecorded = _count(missed.get("events"))
    total = sum(losses.values()) + unrecorded
    parts = [describe_losses(losses)] if losses else []
    if unrecorded:
        parts.append(f"threads not recorded: {unrecorded:,}")
    if total:
        lines.append(f"{total:,} events were lost ({'; '.join(parts)})")
    # The sampler's (--sampled): taken but not kept (after the stop), and
    # lost before they could be read.
    samples = _count(missed.get("samples"))
    if samples:
        lines.append(f"{samples:,} sample{'s were' if samples != 1 else ' was'} taken but "
                     "not kept")
    dropped = _count(manifest.get("samples_lost"))
    if dropped:
        lines.append(f"{dropped:,} sample{'s were' if dropped != 1 else ' was'} lost "
                     "(the ring buffer was full)")
    return "; ".join(lines) or None


class WriterBudget:
    """The budget as a writer in Python keeps it (the sampler's trace,
    _ctfwrite): each packet is claimed before it is filled (the limit), and
    the free space checked before it is written (the reserve), as the
    recorders do (budget.h): one check a packet, none a sample.  Samples
    taken after the stop, or in a packet the reserve refused, are counted,
    not kept; so are the processes whose trace could not begin.

    `budget`: the capture's Budget, when it has one: its limit, a stop
    its Guard made (a session's), and the claims counted into it (what
    `record status` shows).  Without one, no limit; the reserve is kept."""

    def __init__(self, path, budget=None, say=None):
        self.path = path            # (its file system's free space)
        self.budget = budget
        self.say = say
        self.limit = budget.limit if budget is not None else 0
        self.written = 0            # bytes written
        self.open = 0               # bytes claimed for packets being filled
        self.kept = 0               # samples written
        self.samples_not_kept = 0
        self.processes_not_recorded = 0
        self._stop = None           # _stop_info() once stopped here

    @property
    def stopped(self):
        """Whether the capture stopped (as this writer has seen: a stop its
        Guard made is seen at the next claim)."""
        return self._stop is not None

    def claim(self, size):
        """Whether `size` more bytes (a packet, a process's metadata) may be
        written; when not, the capture stops (said once)."""
        if self._stop is None and self.budget is not None and self.budget.stopped:
            self._stop = self.budget.info()["recording_stopped"]    # (its Guard said it)
        if self._stop is not None:
            return False
        if self.limit and self.written + self.open + size > self.limit:
            return self._stopping(STOP_LIMIT)
        if not fits(self.path, self.open + size):
            return self._stopping(STOP_RESERVE)
        self.open += size
        self._count()
        return True

    def may_write(self, size):
        """Whether a claimed packet of `size` bytes may be written now: the
        reserve, which others may have taken since the claim."""
        return fits(self.path, size) or self._stopping(STOP_RESERVE)

    def full(self):
        """The file system refused a write (full): the capture stops."""
        self._stopping(STOP_RESERVE)

    def wrote(self, claimed, size, samples):
        self.open -= claimed
        self.written += size
        self.kept += samples
        self._count()

    def dropped(self, claimed, samples):
        """A claim given back unwritten, with the samples it held."""
        self.open -= claimed
        self.samples_not_kept += samples
        self._count()

    def _count(self):
        if self.budget is not None:
            self.budget.set_claimed(self.written + self.open)

    def _stopping(self, why):
        if self._stop is not None:
            return False        # (the first reason stays)
        free = reserve = 0
        if why == STOP_RESERVE:
            free, reserve = room(self.path)
            free, reserve = free or 0, reserve or 0
        self._stop = _stop_info(why, os.getpid(), self.limit, free, reserve)
        said = self.budget.stop(why, free, reserve) if self.budget is not None else True
        if said and self.say is not None:
            self.say(f"etwtrace: {stop_text(self._stop)}; the program runs on, its later "
                     "samples are counted, not kept")
        return False

    def info(self):
        """What the manifest says: Budget.info()'s, and what the writer
        did not keep ("not_recorded": "samples", "processes")."""
        info = self.budget.info() if self.budget is not None else {}
        if self._stop is not None and "recording_stopped" not in info:
            info["recording_stopped"] = self._stop
        missed = {k: v for k, v in (("processes", self.processes_not_recorded),
                                    ("samples", self.samples_not_kept)) if v}
        if missed:
            info.setdefault("not_recorded", {}).update(missed)
        return info


# ---- what the recorders do not claim themselves ----

# What perf may still write after it is told to stop: its ring buffers
# (512 KiB per CPU by default, as root).
PERF_FLUSH = (os.cpu_count() or 1) * (512 << 10)
CONTROL = "perf.control"


def perf_control(directory):
    """A new FIFO in the private `directory` for `perf record --control`."""
    path = os.path.join(directory, CONTROL)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)
    return path


def disable_perf(control):
    """Tells perf to stop sampling (it runs on, as does its program: perf
    record's own --max-size would end the program with it)."""
    try:
        fd = os.open(control, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, b"disable\n")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


_RING_CONTROL = struct.Struct("<8sQI")   # magic, events_discarded, error (trace_format.h)
_RING_STOPS = {(-STOP_LIMIT) & 0xFFFFFFFF: STOP_LIMIT, (-STOP_RESERVE) & 0xFFFFFFFF: STOP_RESERVE}


def _ring_stop(path, size):
    """STOP_* when the ring file at `path` says the capture stopped its
    stream (its control page's error, recorder.c), else 0."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or size < BYTES:
            return 0
        control = os.pread(fd, _RING_CONTROL.size, size - BYTES)
    except OSError:
        return 0
    finally:
        os.close(fd)
    if len(control) < _RING_CONTROL.size:
        return 0
    magic, _lost, error = _RING_CONTROL.unpack(control)
    return _RING_STOPS.get(error, 0) if magic == b"ETWRING2" else 0


def others_size(ctf_dir, memory_mode=False):
    """(bytes, STOP_* or 0) of the traces in `ctf_dir` of processes of
    other users, which may read the budget but not claim from it: their
    streams and metadata, and in memory mode their rings, which are what
    they keep; and whether one of them stopped for the capture's limit
    or reserve, which only its rings can say."""
    total, stopped = 0, 0
    me = os.geteuid()
    try:
        entries = list(os.scandir(ctf_dir))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            if not entry.name.startswith("pid-") or entry.is_symlink() or not entry.is_dir() \
                    or entry.stat(follow_symlinks=False).st_uid == me:
                continue
            for item in os.scandir(entry.path):
                st = item.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if item.name.startswith(".ring-"):
                    stopped = stopped or _ring_stop(item.path, st.st_size)
                    if not memory_mode:
                        continue
                total += st.st_size
        except OSError:
            continue
    return total, stopped


class Guard(threading.Thread):
    """Watches a capture while it records: counts into its budget what
    the recorders do not claim (perf.data; with `others`, the traces of
    other users' processes in that ctf directory), stops the capture when
    that reaches the limit or the free space the reserve, and then
    disables perf.  perf writes between two looks, and after it is told
    to stop: while it records, the budget counts that too (twice the most
    it wrote in the last PEAK_LOOKS intervals, and PERF_FLUSH), so the
    recorders leave it room and the capture stops that much early."""

    PERF_INTERVAL = 0.02
    INTERVAL = 0.1
    SCAN_INTERVAL = 0.2
    PEAK_LOOKS = 50

    def __init__(self, budget, path, say, perf_data=None, control=None, others=None,
                 memory_mode=False, perf_flush=PERF_FLUSH):
        super().__init__(name="etwtrace-guard", daemon=True)
        self.budget, self.path, self.say = budget, path, say
        self.perf_data, self.control = perf_data, control
        self.perf_flush = perf_flush    # what perf's rings hold (capture/perf.ring_bytes)
        self.others, self.memory_mode = others, memory_mode
        self.interval = self.PERF_INTERVAL if perf_data else self.INTERVAL
        self.perf_disabled = False
        self._done = threading.Event()
        self._perf_size = self._others_size = 0
        self._growth = []
        self._next_scan = 0.0

    def run(self):
        while not self._done.wait(self.interval):
            self.check()

    def finish(self):
        """Stops watching, after a last look (which counts what perf wrote,
        nothing more)."""
        self._done.set()
        if self.is_alive():
            self.join()
        self.check()

    def _perf_margin(self):
        """What perf may still write before it stops writing."""
        if not self.perf_data or self.perf_disabled or self._done.is_set():
            return 0
        return 2 * max(self._growth, default=0) + self.perf_flush

    def check(self):
        if self.perf_data:
            size = _file_size(self.perf_data)
            self._growth = (self._growth + [max(0, size - self._perf_size)])[-self.PEAK_LOOKS:]
            self._perf_size = size
        others_stopped = 0
        if self.others and time.monotonic() >= self._next_scan:
            self._others_size, others_stopped = others_size(self.others, self.memory_mode)
            self._next_scan = time.monotonic() + self.SCAN_INTERVAL
        budget = self.budget
        margin = self._perf_margin()
        budget.count(self._perf_size + margin + self._others_size)
        if not budget.stopped and not self._done.is_set():
            free, reserve = room(self.path)
            limit = budget.limit
            if free is not None and (free - margin < reserve or others_stopped == STOP_RESERVE):
                self._stop_capture(STOP_RESERVE, free, reserve)
            elif limit and (budget.used >= limit or others_stopped == STOP_LIMIT):
                self._stop_capture(STOP_LIMIT)
        if budget.stopped and self.control and not self.perf_disabled:
            self.perf_disabled = disable_perf(self.control)

    def _stop_capture(self, why, free=0, reserve=0):
        if self.budget.stop(why, free, reserve):
            self.say(f"etwtrace: {stop_text(self.budget.info()['recording_stopped'])}; the "
                     "program runs on, its later events are counted as lost")
