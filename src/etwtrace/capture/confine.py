"""perf inject and perf script run by root (a session's stop, a --capture
of root's) where they cannot write through another user's files.

`perf inject --jit` reads every jitdump that perf.data shows mapped (in a
machine-wide session any process may map a file named jit-PID.dump, from
any directory) and writes each image next to it as jitted-PID-N.so (a
name known in advance), opening it with O_CREAT | O_TRUNC through
whatever is there: a symlink another user put in /tmp (or in its own
directory) would have root write an ELF image into any file.  So perf
runs in a mount namespace of its own where every file system is
read-only, and /tmp is a private directory of the capture's, the one
place it may write: it holds root's checked copies of the traced
processes' perf maps and jitdumps (launcher.copy_perf_files), and for
every other entry of the real /tmp (mounted read-only inside it) a
symlink, so perf still reads the other jitdumps and the libraries that
live there, but no jitted-* name of another user's.  Its output goes
there too and is moved into the capture after (none is left in the real
/tmp).  perf enters the mount
namespace of a process that still runs (setns) to read its jitdump and
write its images: it runs without CAP_SYS_ADMIN, so it can neither leave
its own nor undo it.  Root only (a mount namespace needs CAP_SYS_ADMIN)."""

import ctypes
import glob
import os
import re

from ..trace import safefs as _safefs

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
# Per-mount flags a read-only remount keeps (it sets them all at once).
_KEPT = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
         "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
FAILED = 126        # the exit status of a child that could not be confined
PR_CAPBSET_DROP = 24
CAP_SYS_ADMIN = 21
REAL_TMP = ".real"  # where the private /tmp shows the real one, read-only


class PrivateTmp:
    """The /tmp perf inject and perf script see as root: PATH/.perf-tmp
    (see the module's docstring).  Run them with preexec_fn=confine, with
    their output files at inside(NAME); keep(NAME) moves one into PATH;
    close() moves the images perf made of the processes `pids` into
    PATH/jit, and removes the rest.  No copy is left in the real /tmp:
    the capture's README says how to put them there for perf and hotspot."""

    NAME = ".perf-tmp"

    def __init__(self, path, pids):
        self.path = path
        self.pids = pids
        self.work = os.path.join(path, self.NAME)
        maps, jit = os.path.join(path, "maps"), os.path.join(path, "jit")
        copies = [os.path.join(maps, n) for n in os.listdir(maps)] + \
            [os.path.join(jit, n) for n in os.listdir(jit) if n.startswith("jit-")]
        os.mkdir(self.work, 0o700)
        for copy in copies:
            os.link(copy, os.path.join(self.work, os.path.basename(copy)))
        os.mkdir(os.path.join(self.work, REAL_TMP), 0o700)
        for name in os.listdir("/tmp"):
            if not name.startswith("jitted-") and not os.path.lexists(
                    os.path.join(self.work, name)):
                os.symlink(os.path.join(REAL_TMP, name), os.path.join(self.work, name))
        self.confine = private_tmp(self.work)

    @staticmethod
    def inside(name):
        return os.path.join("/tmp", name)

    def keep(self, name):
        os.rename(os.path.join(self.work, name), os.path.join(self.path, name))

    def close(self):
        jit = os.path.join(self.path, "jit")
        for pid in self.pids:
            for image in glob.glob(os.path.join(self.work, f"jitted-{pid}-*.so")):
                os.rename(image, os.path.join(jit, os.path.basename(image)))
        fd = _safefs.open_dir(self.path)
        try:
            _safefs.remove_tree(fd, self.NAME)
        finally:
            os.close(fd)


def _mounts():
    """(mount point, its per-mount options) of every mount this process
    sees, from /proc/self/mountinfo (octal escapes decoded)."""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            yield point, fields[5].decode().split(",")


def private_tmp(tmp):
    """A preexec_fn: the child gets its own mount namespace in which every
    mount is read-only and /tmp is `tmp` (a directory of ours), writable,
    with the real /tmp read-only at /tmp/REAL_TMP; and it runs without
    CAP_SYS_ADMIN.  On failure it says why on its stderr and exits with
    status FAILED instead of running the command."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    tmp = os.fsencode(tmp)
    real_target = tmp + b"/" + REAL_TMP.encode()

    def mount(source, target, flags, what):
        if libc.mount(source, target, None, flags, None) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what} {os.fsdecode(target)}: {os.strerror(error)}")

    def confine():
        try:
            if libc.unshare(CLONE_NEWNS) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"cannot make a mount namespace: {os.strerror(error)}")
            mounts = list(_mounts())
            # Private, so that nothing mounted here shows in other
            # namespaces.  (In a chroot, / is no mount: each mount there
            # is made private; the one holding the chroot is not seen.)
            if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                for point, _ in mounts:
                    mount(b"none", point, MS_REC | MS_PRIVATE, "cannot make private")
            for point, options in mounts:
                if "rw" in options:
                    kept = sum(flag for name, flag in _KEPT.items() if name in options)
                    mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | kept,
                          "cannot make read-only")
            # The real /tmp, with the file systems mounted below it (a
            # capture may be on one), read-only inside the private one,
            # before that covers it.  (Bound by its path before /tmp is
            # covered: a bind of it after would bring the cover along.)
            mount(b"/tmp", real_target, MS_BIND | MS_REC, "cannot bind")
            mount(None, real_target, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                  "cannot make read-only")
            # A bind mount of a read-only mount is read-only until remounted.
            mount(tmp, b"/tmp", MS_BIND | MS_REC, "cannot bind")
            mount(None, b"/tmp", MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV,
                  "cannot make writable")
            # Not in the command it runs: root's capabilities after exec
            # are its bounding set.
            if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"cannot drop CAP_SYS_ADMIN: {os.strerror(error)}")
        except OSError as ex:
            os.write(2, f"etwtrace: not run where it cannot write through other users' files: "
                        f"{ex.strerror}\n".encode())
            os._exit(FAILED)

    return confine
