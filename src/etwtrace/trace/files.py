"""Opening the files of a capture as a reader must: a capture may come from
someone else (sent, or written by another user's process into a session),
and root reads it.

Below the capture directory nothing is followed: each directory is entered
with O_NOFOLLOW|O_DIRECTORY from its parent's descriptor, and each file is
opened O_NOFOLLOW|O_NONBLOCK (a FIFO would block a reader forever) only
after lstat says it is a regular file (opening a device can do things), and
fstat must say so again.  A failure is a TraceError naming the file.
"""

import errno
import os
import stat

from ..errors import Error


class TraceError(Error):
    """A capture is missing, not an etwtrace capture, or corrupt."""


class NoCapture(TraceError):
    """The path given is not a capture at all (a usage error)."""

    status = 2


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _refusal(path, mode):
    """Why `path`, of file mode `mode`, is not read."""
    if stat.S_ISLNK(mode):
        return TraceError(f"{path}: a symbolic link; not followed")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return TraceError(f"{path}: {kind}, not a regular file; not read")


def _why(ex):
    if ex.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a symbolic link or not a directory on its path; not followed"
    return ex.strerror or str(ex)


def _parent(path, depth):
    """(descriptor of the directory holding `path`'s last component, that
    component): the first components of `path` are taken as given, the
    last `depth` (the last included) are inside the capture, and each
    directory among them is entered without following a link."""
    head, names = os.fspath(path), []
    for _ in range(max(depth, 1)):
        head, name = os.path.split(head)
        if not name:
            break
        names.append(name)
        if not head:
            break
    names.reverse()
    if not names:
        raise TraceError(f"{path}: not a file")
    fd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names[:-1]:
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd, names[-1]


def open_file(path, depth=1):
    """A read-only descriptor of the regular file `path`, whose last
    `depth` components are inside a capture (see above)."""
    try:
        dir_fd, name = _parent(path, depth)
    except OSError as ex:
        raise TraceError(f"{path}: cannot read ({_why(ex)})") from None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise _refusal(path, st.st_mode)
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as ex:
        raise TraceError(f"{path}: cannot read ({_why(ex)})") from None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refusal(path, st.st_mode)
    return fd


def open_regular(path, flags, own=False):
    """A descriptor of the regular file `path` (of this user's, with
    `own`), opened without following a symlink or waiting on a FIFO."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (own and st.st_uid != os.geteuid()):
        os.close(fd)
        raise TraceError(f"{path}: not a regular file{' of this user' if own else ''}")
    return fd


def exists(path, depth=1):
    """Whether `path` names an entry (of any kind, a link included)."""
    try:
        dir_fd, name = _parent(path, depth)
    except OSError:
        return False
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def list_dir(path, depth=1):
    """The names in directory `path` (its last `depth` components inside a
    capture, none of them followed)."""
    try:
        dir_fd, name = _parent(path, depth)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)
    except OSError as ex:
        raise TraceError(f"{path}: cannot list ({_why(ex)})") from None


def has_hole(fd):
    """Whether a file has a hole (a sparse part) before its end: files
    written front to back (a manifest, perf's script) have none."""
    size = os.fstat(fd).st_size
    at = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except OSError:
        return False        # a file system that cannot say
    finally:
        os.lseek(fd, at, os.SEEK_SET)


def check_real_size(fd, path):
    """Refuses a file larger than its whole file system: it can only be a
    sparse file posing as a trace (reading it would take hours of zeros)."""
    size = os.fstat(fd).st_size
    try:
        fs = os.fstatvfs(fd)
    except OSError:
        return
    capacity = fs.f_blocks * fs.f_frsize
    if capacity and size > capacity:
        raise TraceError(f"{path}: {size:,} bytes on a file system of {capacity:,} "
                         "(a sparse file); not a trace")


def read_small(path, limit, depth=1):
    """The bytes of a small regular file, refused when larger than `limit`
    or sparse."""
    fd = open_file(path, depth)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise TraceError(f"{path}: {size:,} bytes, more than the {limit:,} this file "
                             "can be; not read")
        if has_hole(fd):
            raise TraceError(f"{path}: a sparse file; not read")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as ex:
        raise TraceError(f"{path}: cannot read ({_why(ex)})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise TraceError(f"{path}: more than the {limit:,} bytes this file can be; not read")
    return data
