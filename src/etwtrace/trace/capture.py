"""A capture directory held by one capture: locked against a second one,
its earlier capture cleared, never anything else; and its manifest,
written into room kept for it.  The launcher, sessions and the sampler
all make their captures through it."""

import fcntl
import json
import os
import stat
import tempfile

from ..errors import Error
from . import manifest as _manifest, safefs as _safefs

# Every entry a capture directory may hold: all the launcher makes, and
# all it removes when it replaces a capture.
OWN_ENTRIES = frozenset({
    _manifest.MANIFEST, _manifest.MANIFEST + ".tmp", "ctf", "jit", "maps", "perf.data",
    "perf.data.old", "perf.jit.data", _manifest.PERF_SCRIPT, "README.txt", _manifest.BUILDID_DIR,
    ".session",     # a recording session's staging directory (capture/session.py)
    ".perf-tmp",    # /tmp of perf run as root (capture/confine.py's PrivateTmp)
})


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
            self._check_replaceable(names)
        return self

    def _check_replaceable(self, names):
        """Only an earlier capture is replaced: its manifest says etwtrace
        made it, and it holds only the entries etwtrace makes."""
        if not names:
            return
        strangers = sorted(n for n in names if n not in OWN_ENTRIES)
        if not _manifest.is_own_capture(self.path) or strangers:
            shown = ", ".join(strangers[:3]) + (" ..." if len(strangers) > 3 else "")
            why = f" (it holds {shown})" if strangers else ""
            raise CaptureError(f"{self.path} is not empty and is not an etwtrace capture{why}; "
                               "refusing to replace it")

    def _clear(self):
        """Removes an earlier capture (see _check_replaceable), never
        following a symlink in it."""
        names = os.listdir(self._fd)
        self._check_replaceable(names)
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

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ReplacedError(CaptureError):
    """A session's capture directory is no longer the one it began in."""


# The manifest is written into room reserved when the capture starts, so
# that a capture which filled the disk can still say how it ended.
MANIFEST_ROOM = 8192


def write_manifest(path, **info):
    """Updates the capture's manifest.  A failure (a full disk) is a
    one-line CaptureError; no partial or temporary file is left."""
    data = _manifest.read_manifest(path)
    data.update(info)
    data.setdefault("tool", "etwtrace")
    data.setdefault("format", 1)
    text = json.dumps(data, indent=2).encode() + b"\n"
    target = os.path.join(path, _manifest.MANIFEST)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o600)
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
        raise CaptureError(f"cannot write the capture's manifest in {path}: {ex.strerror}") from None
