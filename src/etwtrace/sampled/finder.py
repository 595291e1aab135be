"""Finds the CPython processes running on the machine, for a sampled
recording session (record start --sampled): the sampler is given each one
it can read, as it starts, and told when it ends."""

import os
import time

from . import unbuffered
from .remote import RemoteError

# A process whose files look like Python's but whose interpreter cannot be
# read yet (a shared libpython not mapped yet, right after exec) is tried
# again for this long.
SETTLE_SECONDS = 5.0
# Processes named one by one in what a session says it could not sample;
# past this they are counted (a session left running among processes
# coming and going keeps a bounded record).
SKIPPED_KEPT = 1000


class PythonFinder:
    """Keeps track of the machine's processes between scans."""

    def __init__(self, exclude=(), root=None):
        self.exclude = set(exclude)
        self.root = root        # only this process's descendants, when given
        self.examined = {}      # pid -> (its executable, until when it is tried again or None)
        self.sampled = set()    # pids given to the sampler
        self.skipped = {}       # pid -> why a Python process is not sampled (yet)
        self.skipped_more = 0   # ... past SKIPPED_KEPT of them

    def scan(self, add, remove):
        """Calls add(pid) for each process started (or exec'd) since the
        last scan that might be a CPython; add raises RemoteError when it
        is not one the sampler reads.  Calls remove(pid) for each sampled
        process that ended."""
        if self.root is None:
            pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        else:
            pids = descendants(self.root)
        for pid in list(self.examined):
            if pid not in pids:
                del self.examined[pid]
                if pid in self.sampled:
                    self.sampled.discard(pid)
                    remove(pid)
        now = time.monotonic()
        for pid in sorted(pids - self.exclude):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue        # a kernel thread, gone, or not ours to read
            seen = self.examined.get(pid)
            if seen is not None and seen[0] == exe:
                if seen[1] is None:
                    continue                    # decided already
                retry_until = seen[1]           # its interpreter was not readable yet
            else:
                retry_until = now + SETTLE_SECONDS
                if pid in self.sampled:
                    # It exec'd: its new image is another process to the sampler.
                    self.sampled.discard(pid)
                    remove(pid)
                self.skipped.pop(pid, None)
            looks = _looks_like_python(pid, exe)
            if looks is None and now < retry_until:
                # Caught inside exec: /proc/PID/exe names the new image
                # before its files are mapped.  Looked at again next scan.
                self.examined[pid] = (exe, retry_until)
                continue
            if not looks or _is_record_command(pid):
                self.examined[pid] = (exe, None)
                continue
            try:
                add(pid)
            except RemoteError as ex:
                # Said even while it is tried again: a session that ends
                # first did not sample it either.
                if pid in self.skipped or len(self.skipped) < SKIPPED_KEPT:
                    self.skipped[pid] = str(ex)
                elif seen is None or seen[0] != exe:
                    self.skipped_more += 1
                self.examined[pid] = (exe, retry_until if now < retry_until else None)
                continue
            self.examined[pid] = (exe, None)
            self.skipped.pop(pid, None)
            self.sampled.add(pid)


def _looks_like_python(pid, exe):
    """Whether one of the process's mapped files names Python (its
    executable, or a libpython it loaded); None while its executable is
    not mapped yet (the process is inside exec)."""
    try:
        maps = unbuffered.read(f"/proc/{pid}/maps")
    except OSError:
        return False
    if os.fsencode(exe.removesuffix(" (deleted)")) not in maps:
        return None
    return b"python" in maps.lower()


def _is_record_command(pid):
    """Whether the process is one of etwtrace's own session commands
    (record status, stop...): they are not what the session is about."""
    try:
        return b"\0-m\0etwtrace\0record\0" in unbuffered.read(f"/proc/{pid}/cmdline")
    except OSError:
        return False


def descendants(root):
    """The processes started by process `root` and by those it started,
    as /proc/PID/task/TID/children lists them (an orphan is lost to it)."""
    found = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = [int(c) for c in
                            unbuffered.read(f"/proc/{pid}/task/{tid}/children").split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found
