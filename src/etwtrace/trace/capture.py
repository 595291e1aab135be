"""A capture directory and its one owner on each side.

Capture reads one: opened once from its path, it gives its manifest, its
streams (one per thread of each process's built-in trace), perf's events,
its start time, its losses and its files; open_trace and the report read
a capture only through it.

CaptureDir holds one being made: locked against a second capture, its
earlier capture cleared (never anything else), and its manifest written
into room kept for it, through the held directory.  The launcher,
sessions and the sampler make their captures through it."""

import bisect
import fcntl
import json
import os
import stat
import tempfile

from ..errors import Error
from .. import _ctfdecode
from . import (children as _children, ctf as _ctf, files as _files, manifest as _manifest,
               perfscript as _perfscript, safefs as _safefs)
from .budget import loss_text
from .files import NoCapture, TraceError


class Stream:
    """One thread's stream of a per-process trace in a capture: what a
    reader does with it, it does through here."""

    __slots__ = ("pid", "image", "path", "version", "call_times")

    def __init__(self, pid, image, path, version, call_times=True):
        self.pid, self.image, self.path, self.version = pid, image, path, version
        self.call_times = call_times    # False: pushes and pops recorded untimed

    @property
    def process(self):
        """(pid, image): which process, and which of its programs."""
        return self.pid, self.image

    def start(self):
        """The timestamp its first packet begins at, or None (TraceError
        when it cannot be read)."""
        return _ctf.stream_start(self.path, self.version)

    def losses(self):
        """Events its writer could not record."""
        return _ctf.stream_losses(self.path, self.version)

    def fold(self, timeline=None, start=0, end=2**64 - 1):
        """(the C decoder's fold of its calls, its other events): see
        ctf.fold_stream."""
        return _ctf.fold_stream(self.path, self.pid, _ctfdecode.Event, self.version,
                                timeline=timeline, start=start, end=end, image=self.image)

    def stacks_at(self, times):
        """The FunctionIDs open on its thread at each of `times`."""
        return _ctf.stacks_at(self.path, self.version, times)

    def reader(self):
        """Its events, as the C decoder's Reader (for Merge); TraceError
        when it cannot be read."""
        parts = _ctf.StreamParts(self.path, self.version)
        fd = _ctf.open_stream(self.path)
        try:
            return _ctfdecode.Reader(self.path, self.pid, self.version, parts.length, parts.tail,
                                     fd=fd, image=self.image, partial=True)
        except (OSError, ValueError) as ex:
            raise TraceError(f"{self.path}: {ex}") from None
        finally:
            os.close(fd)


class Capture:
    """A capture directory opened for reading, once: what it is made of
    is found here and nowhere else.

    path: as given; manifest: its manifest ({} when it has none);
    perf_script: the path of perf's saved script, or None when perf did
    not record; streams: the Streams of its built-in traces, found when
    it is opened; problems: one line for each process's trace left out
    of them (not a trace, a format this reader does not know).

    TraceError (NoCapture when `path` is no capture at all) for a path
    that is not a capture, a symlinked ctf/, or a manifest that is not
    one (see manifest.load_manifest)."""

    def __init__(self, path):
        self.path = path = os.fspath(path)
        if not os.path.exists(path):
            raise NoCapture(f"{path}: no such capture")
        if not os.path.isdir(path):
            raise NoCapture(f"{path}: not a capture directory")
        ctf_root = os.path.join(path, "ctf")
        if os.path.islink(ctf_root):
            raise TraceError(f"{ctf_root}: a symbolic link; not followed")
        has_ctf = os.path.isdir(ctf_root)
        script = os.path.join(path, _manifest.PERF_SCRIPT)
        self.perf_script = script if _files.exists(script) else None
        if not (has_ctf or self.perf_script):
            raise NoCapture(f"{path}: not an etwtrace capture (no ctf/ or "
                            f"{_manifest.PERF_SCRIPT})")
        self.manifest = _manifest.load_manifest(path)
        self.problems = []
        self.streams = self._find_streams(ctf_root) if has_ctf else []
        self._start = None
        self._start_known = False

    def _find_streams(self, ctf_root):
        streams = []
        for pid, trace_dir in _ctf.trace_dirs(ctf_root):
            try:
                version = _ctf.trace_version(trace_dir)
                timed = _ctf.has_call_times(trace_dir)
                files = _ctf.stream_files(trace_dir)
            except TraceError as ex:
                self.problems.append(f"process {pid} left out: {ex}")
                continue
            image = _ctf.trace_image(trace_dir)
            streams.extend(Stream(pid, image, f, version, timed) for f in files)
        return streams

    def files(self):
        """Every file the events are read from."""
        found = [s.path for s in self.streams]
        if self.perf_script:
            found.append(self.perf_script)
        return found

    @property
    def start(self):
        """The timestamp of its first event (of any recorder), or None
        when it has none: the origin of the report's --from/--to."""
        if not self._start_known:
            starts = []
            for s in self.streams:
                try:
                    starts.append(s.start())
                except TraceError:
                    pass        # left out of the report, which says why
            perf = self.perf_events()
            if perf is not None:
                starts.append(next((e.timestamp for e in perf), None))
            starts = [s for s in starts if s is not None]
            self._start = min(starts) if starts else None
            self._start_known = True
        return self._start

    def losses(self):
        """{pid: events lost} of its built-in traces (only pids that lost
        any), from the streams' packet headers."""
        losses = {}
        for s in self.streams:
            lost = s.losses()
            if lost:
                losses[s.pid] = losses.get(s.pid, 0) + lost
        return losses

    def lost_events(self):
        """Words for the events the recorders could not keep (and why
        recording stopped early, if it did), or None."""
        return loss_text(self.losses(), self.manifest) or None

    def untraced_children(self):
        """The children it says went untraced (children.untraced_children)."""
        return _children.untraced_children(self.path, self.manifest)

    def perf_events(self, progress=None):
        """The events of its perf.script (None when perf did not record),
        without the stack-sample probe's copies of the built-in recorder's
        events; each in the image of its process running then.
        progress(bytes read), if given, follows the reading."""
        if self.perf_script is None:
            return None
        events = _perfscript.read_script(self.perf_script, _ctfdecode.Event, progress)
        starts = _image_starts(self.streams)
        if starts:
            events = _in_images(events, starts)
        return _dedupe_stack_samples(events, {s.pid for s in self.streams})


def recorded_losses(path):
    """{pid: events lost} of the built-in traces of the capture being
    finished at `path` (only pids that lost any): Capture.losses().  A
    capture it cannot open has none to say (its reader says what is wrong)."""
    try:
        return Capture(path).losses()
    except TraceError:
        return {}


def _image_starts(streams):
    """{pid: sorted [(first timestamp, image)]} of the processes that
    exec'd (more than one image): perf's events, which name only the pid,
    belong to the image running at their time."""
    images = {}
    for s in streams:
        images.setdefault(s.pid, {}).setdefault(s.image, []).append(s)
    starts = {}
    for pid, by_image in images.items():
        if len(by_image) < 2:
            continue
        found = []
        for image, members in by_image.items():
            times = []
            for s in members:
                try:
                    times.append(s.start())
                except TraceError:
                    pass
            times = [t for t in times if t is not None]
            if times:
                found.append((min(times), image))
        starts[pid] = sorted(found)
    return starts


def _image_at(starts, pid, ts):
    """The image of process `pid` running at time `ts` (_image_starts)."""
    found = starts.get(pid)
    if not found:
        return 1
    i = bisect.bisect_right(found, (ts, float("inf"))) - 1
    return found[max(i, 0)][1]


def _in_images(events, starts):
    for e in events:
        e.image = _image_at(starts, e.pid, e.timestamp)
        yield e


def _dedupe_stack_samples(events, builtin_pids):
    """The USDT stack-sample probe that perf recorded duplicates the
    built-in recorder's PythonStackSample (which carries the Mark text):
    keep perf's copy only for processes the built-in recorder missed."""
    for e in events:
        if e.name == "PythonStackSample":
            if e.pid in builtin_pids:
                continue
            e.fields = {"Mark": "", "Truncated": e.fields.get("Truncated", False)}
        yield e


# Every entry a capture directory may hold: all the launcher makes, and
# all it removes when it replaces a capture.
OWN_ENTRIES = frozenset({
    _manifest.MANIFEST, _manifest.MANIFEST + ".tmp", "ctf", "jit", "maps", "perf.data",
    "perf.data.old", "perf.jit.data", _manifest.PERF_SCRIPT, "README.txt", _manifest.BUILDID_DIR,
    ".session",     # a recording session's staging directory (capture/session.py)
    ".perf-tmp",    # /tmp of perf run as root (capture/confine.py's PrivateTmp)
})


# The manifest is written into room reserved when the capture starts, so
# that a capture which filled the disk can still say how it ended.
MANIFEST_ROOM = 8192


class CaptureError(Error):
    """A capture cannot be made (bad path, bad preset, perf refused)."""


class CaptureDir:
    """A capture directory held for one capture: locked against a second
    capture into it (flock on the directory, released when the launcher
    exits), its earlier capture cleared, never anything else.

    It is this user's alone: an existing directory of another user is
    refused, and it is used through a descriptor opened without following
    a symlink.  As root, `path` is resolved once (symlinks and all) and
    refused when another user could replace it or a directory on its way
    (see safefs.replaceable_by_others), so that nothing root writes into
    it can be sent elsewhere."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        if os.geteuid() == 0:
            self.path = os.path.realpath(self.path)
        self._fd = None
        self.identity = None        # (st_dev, st_ino) once open

    @classmethod
    def unique(cls, prefix):
        """A new capture directory named `prefix` and a random suffix,
        made at once (as mkdtemp), so no one can have made it first."""
        named = cls(prefix)
        named._check_parents()
        parent, base = os.path.split(named.path)
        try:
            made = tempfile.mkdtemp(prefix=base, dir=parent)
        except OSError as ex:
            raise CaptureError(f"cannot create a capture directory in {parent}: "
                               f"{ex.strerror}") from None
        return cls(made).open()

    @property
    def fd(self):
        return self._fd

    def _check_place(self):
        """Refuses (CaptureError) a path root must not record into, and
        one that is there and is not this user's directory; returns its
        lstat (None when there is nothing)."""
        path = self.path
        self._check_parents()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as ex:
            raise CaptureError(f"cannot use {path}: {ex.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise CaptureError(f"{path} exists and is not a directory; refusing to replace it")
        self._check_owner(st)
        return st

    def _check_parents(self):
        if os.geteuid() == 0:
            replaceable = _safefs.replaceable_by_others(self.path)
            if replaceable is not None:
                where, why = replaceable
                raise CaptureError(f"{self.path}: another user could replace it ({where} {why}); "
                                   "refusing to record into it as root")

    def _check_owner(self, st):
        if st.st_uid != os.geteuid():
            raise CaptureError(f"{self.path} exists and belongs to another user (uid "
                               f"{st.st_uid}); refusing to use it")

    def open(self):
        path = self.path
        if self._check_place() is None:
            try:
                os.makedirs(path, mode=0o700)
            except OSError as ex:
                raise CaptureError(f"cannot create capture directory {path}: {ex.strerror}") from None
        try:
            self._fd = _safefs.open_dir(path)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise CaptureError(f"another capture is recording into {path}; "
                               "wait for it or choose another path") from None
        except OSError as ex:
            self.close()
            raise CaptureError(f"cannot use capture directory {path}: {ex.strerror}") from None
        try:
            st = os.fstat(self._fd)
            self._check_owner(st)
            self._check_place()     # (a directory on the way made meanwhile)
            self.identity = (st.st_dev, st.st_ino)
            self._clear()
            os.fchmod(self._fd, 0o700)
            probe = ".writable"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=self._fd))
            os.unlink(probe, dir_fd=self._fd)
        except CaptureError:
            self.close()
            raise
        except OSError as ex:
            self.close()
            raise CaptureError(f"cannot write into capture directory {path}: {ex.strerror}") from None
        return self

    def check(self):
        """Raises CaptureError now if open() would refuse the path (before
        anything is started), changing nothing."""
        if self._check_place() is not None:
            try:
                names = os.listdir(self.path)
            except OSError as ex:
                raise CaptureError(f"cannot use {self.path}: {ex.strerror}") from None
            self._check_replaceable(names, _manifest.read_manifest(self.path))
        return self

    def _check_replaceable(self, names, manifest):
        """Only an earlier capture is replaced: its `manifest` says etwtrace
        made it, and it holds only the entries etwtrace makes."""
        if not names:
            return
        strangers = sorted(n for n in names if n not in OWN_ENTRIES)
        if not _manifest.is_own_capture(manifest) or strangers:
            shown = ", ".join(strangers[:3]) + (" ..." if len(strangers) > 3 else "")
            why = f" (it holds {shown})" if strangers else ""
            raise CaptureError(f"{self.path} is not empty and is not an etwtrace capture{why}; "
                               "refusing to replace it")

    def _clear(self):
        """Removes an earlier capture (see _check_replaceable), never
        following a symlink in it."""
        names = os.listdir(self._fd)
        self._check_replaceable(names, self.read_manifest())
        for name in names:
            try:
                _safefs.remove_tree(self._fd, name)
            except OSError as ex:
                raise CaptureError(f"cannot remove the earlier capture's "
                                   f"{os.path.join(self.path, name)}: {ex.strerror}") from None

    def hold(self, identity=None):
        """Locks an existing capture directory, clearing nothing (a
        recording session finishing its capture); with `identity`, only
        the very directory the session began in."""
        try:
            self._fd = _safefs.open_dir(self.path)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(self._fd)
        except BlockingIOError:
            self.close()
            raise CaptureError(f"another capture is recording into {self.path}") from None
        except OSError as ex:
            self.close()
            raise CaptureError(f"cannot use capture directory {self.path}: {ex.strerror}") from None
        self.identity = (st.st_dev, st.st_ino)
        if st.st_uid != os.geteuid() or (identity and self.identity != tuple(identity)):
            self.close()
            raise ReplacedError(f"{self.path} is not the directory the session began in "
                                "(it was replaced); refusing to finish the capture there")
        return self

    def read_manifest(self):
        """The manifest, read through the held directory: {} when there is
        none or it is not one (not a regular file, too large, not JSON)."""
        self._check_held()
        try:
            st = os.stat(_manifest.MANIFEST, dir_fd=self._fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _manifest.MANIFEST_LIMIT:
                return {}
            fd = os.open(_manifest.MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError:
            return {}
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _manifest.MANIFEST_LIMIT:
                return {}
            data = os.pread(fd, st.st_size, 0)
        except OSError:
            return {}
        finally:
            os.close(fd)
        try:
            return _manifest.parse_manifest(data, os.path.join(self.path, _manifest.MANIFEST))
        except TraceError:
            return {}

    def write_manifest(self, **info):
        """Updates the manifest with `info`, through the held directory.
        A failure (a full disk) is a one-line CaptureError; no partial or
        temporary file is left."""
        self._check_held()
        data = self.read_manifest()
        data.update(info)
        data.setdefault("tool", "etwtrace")
        data.setdefault("format", 1)
        text = json.dumps(data, indent=2).encode() + b"\n"
        target = os.path.join(self.path, _manifest.MANIFEST)
        try:
            fd = os.open(_manifest.MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=self._fd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    raise CaptureError(f"{target} is not a file of this user; refusing to write it")
                if len(text) < MANIFEST_ROOM:
                    text = text.ljust(MANIFEST_ROOM - 1) + b"\n"    # JSON ends in blanks
                os.pwrite(fd, text, 0)
                os.ftruncate(fd, len(text))
            finally:
                os.close(fd)
        except OSError as ex:
            raise CaptureError(f"cannot write the capture's manifest in {self.path}: "
                               f"{ex.strerror}") from None

    def _check_held(self):
        # (dir_fd=None would be the working directory)
        if self._fd is None:
            raise ValueError(f"capture directory {self.path} is not held")

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ReplacedError(CaptureError):
    """A session's capture directory is no longer the one it began in."""
