"""Directories that other users may write into (a root session's staging
directory, where each user's processes make their own pid-PID), handled
through directory descriptors: no symlink is followed, no name is looked
up twice, and a user cannot change what root reads or removes while it
does.  Also the check that a path root records into cannot be replaced
by another user.  Runs on CPython 3.9 (no shutil.rmtree(dir_fd=))."""

import errno
import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_TAKEN = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def open_dir(name, dir_fd=None):
    """A descriptor of the directory `name` (relative to `dir_fd`), never
    through a symlink (OSError ELOOP or ENOTDIR)."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def kind(st):
    """What a file is, for a message."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file"


def replaceable_by_others(path):
    """(directory, why) of the first directory on the way to the absolute,
    symlink-free `path` through which a user other than this one and root
    could replace what `path` names; None when there is none.  A directory
    passes when root or this user owns it and no one else may write into
    it, or only into a sticky one (as /tmp), where others cannot rename
    or remove what they do not own.  Directories not made yet pass: this
    user makes them."""
    me = os.geteuid()
    directory = os.path.dirname(path)
    chain = []
    while True:
        chain.append(directory)
        if directory == "/":
            break
        directory = os.path.dirname(directory)
    for directory in reversed(chain):
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return None
        except OSError as ex:
            return directory, f"cannot be checked ({ex.strerror})"
        if not stat.S_ISDIR(st.st_mode):
            return directory, f"is {kind(st)}"
        if st.st_uid not in (0, me):
            return directory, f"belongs to uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return directory, "is writable by other users"
    return None


def seize(fd):
    """Makes the directory `fd` this user's and private, so that another
    user (its owner until now, even one holding a descriptor of it) can no
    longer add, rename or remove entries in it."""
    me = os.geteuid()
    if os.fstat(fd).st_uid != me:
        os.fchown(fd, me, os.getegid())
    os.fchmod(fd, 0o700)


def remove_tree(parent_fd, name):
    """Removes `name` in directory `parent_fd` and all under it, never
    following a symlink, however deep the tree (its directories are moved
    up into the top one as they are met, so neither the stack nor the
    descriptors grow with depth).  Directories of other users are seized
    first, so they cannot refill them while they go."""
    try:
        top = open_dir(name, parent_fd)
    except FileNotFoundError:
        return
    except OSError:
        os.unlink(name, dir_fd=parent_fd)       # not a directory
        return
    try:
        seize(top)
        moved = 0
        while True:
            entries = list(os.scandir(top))
            if not entries:
                break
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=top)
                    continue
                sub = open_dir(entry.name, top)
                try:
                    seize(sub)
                    for inner in list(os.scandir(sub)):
                        if not inner.is_dir(follow_symlinks=False):
                            os.unlink(inner.name, dir_fd=sub)
                            continue
                        while True:         # up into top, under a name not taken
                            moved += 1
                            try:
                                os.rename(inner.name, f".moved-{moved}", src_dir_fd=sub,
                                          dst_dir_fd=top)
                                break
                            except OSError as ex:
                                if ex.errno not in _NAME_TAKEN:
                                    raise
                finally:
                    os.close(sub)
                os.rmdir(entry.name, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=parent_fd)


def pin(src_fd, dst_fd, owner):
    """Hard-links every entry of the directory `src_fd` (another user's)
    into the empty directory `dst_fd` (ours, private), so that what is read
    afterwards through `dst_fd` is what was checked, whatever its owner
    renames or replaces meanwhile.  Returns None, or what is wrong: the
    first entry that is not a regular file of user `owner`."""
    for name in os.listdir(src_fd):
        try:
            os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue        # removed meanwhile (metadata.new renamed, a ring)
        except OSError as ex:
            try:
                return f"{name} is {kind(os.stat(name, dir_fd=src_fd, follow_symlinks=False))}"
            except OSError:
                return f"{name} cannot be read ({ex.strerror})"
        st = os.stat(name, dir_fd=dst_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return f"{name} is {kind(st)}"
        if st.st_uid != owner:
            return f"{name} belongs to uid {st.st_uid}, not to the directory's owner {owner}"
    return None


def copy_data(src, dst, length):
    """Copies the first `length` bytes of file `src` into the empty file
    `dst` (descriptors) with its holes left holes, so another user's
    sparse file (a stream that claims huge packets, a perf map) costs root
    no disk; returns how many bytes there were (fewer when `src` is
    shorter)."""
    offset = 0
    while offset < length:
        try:
            data = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as ex:
            if ex.errno != errno.ENXIO:     # (no data after offset)
                raise
            break
        if data >= length:
            break
        hole = min(os.lseek(src, data, os.SEEK_HOLE), length)
        while data < hole:
            chunk = os.pread(src, min(hole - data, 1 << 20), data)
            if not chunk:
                os.ftruncate(dst, data)
                return data
            os.pwrite(dst, chunk, data)
            data += len(chunk)
        offset = hole
    length = min(length, os.fstat(src).st_size)
    os.ftruncate(dst, length)
    return length
