"""Reading the `perf script` text a capture saved (perf.script): CPU
samples, context switches and the stack-sample probe, as events."""

import io
import os
import re
from collections import deque

from .files import TraceError, check_real_size, has_hole, open_file

# perf script's lines are short; a longer one is cut here (its stack frame
# or sample line no longer parses, and is left out).
LINE_LIMIT = 1 << 16

# etwtrace's own threads (copier.c, session.c): not part of the program's picture.
OWN_THREADS = ("etwtrace-copy", "etwtrace-watch")

# Lines start with the thread's comm, padded (captures from before it was
# saved have none): "COMM PID/TID SECONDS.NANOS: ...".
_HEAD = r"^\s*(?:(?P<comm>\S.*?)\s+)?"
_SAMPLE = re.compile(_HEAD + r"(\d+)/(\d+)\s+(\d+)\.(\d+):\s+(\S+):\s*(.*)$")
_MMAP = re.compile(
    _HEAD + r"(\d+)/(\d+)\s+(\d+)\.(\d+):\s+PERF_RECORD_MMAP2?\s+(-?\d+)/\d+:\s+"
    r"\[0x([0-9a-f]+)\(0x([0-9a-f]+)\) @ (?:0x)?([0-9a-f]+)[^\]]*\]:\s+\S+\s+(.*)$"
)
_FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")

# The recorder's USDT probe as perf names it (capture/perf.py adds it).
STACK_SAMPLE_PROBE = "sdt_etwtrace:stack_sample"

EVENT_NAMES = {
    "cpu-clock": "SampledProfile",
    "task-clock": "SampledProfile",
    "cycles": "SampledProfile",
    "context-switches": "CSwitch",
    "cs": "CSwitch",
    STACK_SAMPLE_PROBE: "PythonStackSample",
}


def _ns(sec, frac):
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


class _Maps:
    """Per-process executable mappings, to turn the DSO-relative addresses
    perf script prints back into the process's own addresses."""

    def __init__(self):
        self._by_pid = {}

    def add(self, pid, start, length, pgoff, path):
        self._by_pid.setdefault(pid, {}).setdefault(path, []).append((pgoff, length, start))

    def absolute(self, pid, rel, dso):
        maps = self._by_pid.get(pid, {}).get(dso)
        if not maps:
            return rel
        best = None
        for pgoff, length, start in maps:
            if pgoff <= rel < pgoff + length:
                best = start + rel - pgoff
        return rel if best is None else best


# The outermost frames of a whole user stack: the program's entry and
# libc's start-up (the main thread), or a new thread's start.  A perf stack
# whose outermost named frame is none of these stopped early: its DWARF
# stack copy ended, the kernel's frame-pointer walk hit
# kernel.perf_event_max_stack, or the unwind met code it could not walk.
# Beyond the root a frame-pointer walk may go on into whatever the start-up
# code left in its frame register (nameless frames): dropped.
_ENTRY_SYMBOL = "_start"
_LIBC_ROOT = re.compile(
    r"^(?:__GI_)?_*(?:libc_start_main(?:_impl|_alias_2)?|libc_start_call_main|clone3?"
    r"|start_thread)(?:@.*)?$")
_LIBC = re.compile(r"^(?:libc|libpthread)[.-]")
_KERNEL_DSO = "[kernel.kallsyms]"
_NAMELESS = "[unknown]"
# perf's address for an unwind that gave up.
_GAVE_UP = 0xFFFFFFFFFFFFFFFF


def _is_root(sym, dso):
    if sym == _ENTRY_SYMBOL:
        return dso != _KERNEL_DSO
    return bool(_LIBC_ROOT.match(sym)) and bool(_LIBC.match(os.path.basename(dso)))


def whole_stack(stack, frames):
    """(stack, frames, truncated) for a sample: up to its thread's root,
    and whether it fell short of it.  A stack without user frames (a
    sample in the kernel alone) is not judged."""
    if all(dso == _KERNEL_DSO for _sym, dso in frames):
        return stack, frames, False
    end = len(frames)
    while end and (frames[end - 1][0] == _NAMELESS or stack[end - 1] == _GAVE_UP):
        end -= 1
    if end and _is_root(*frames[end - 1]):
        return stack[:end], frames[:end], False
    return stack, frames, True


_SWITCH = re.compile(_HEAD + r"(\d+)/(\d+)\s+(\d+)\.(\d+):\s+PERF_RECORD_SWITCH(?:_CPU_WIDE)?\s+(IN|OUT)\s*(.*)$")


_SKIPPED = object()     # a sample of etwtrace's own thread, left out


def read_script(path, make_event, progress=None):
    """Yields events from a saved `perf script` text in order.  Each event
    also carries `.frames`: (symbol, dso) per stack address, and the field
    Truncated: whether its stack stopped short of its thread's root
    (whole_stack).

    A CSwitch (the thread leaving the CPU, with its stack) gets the fields
    OffCpuTime (ns until the thread ran again, None if it never did) and
    Preempted (it was still runnable).  It is held back until its
    switch-in is read, with every later event, so the order is kept."""
    maps = _Maps()
    current = None
    stack = []
    frames = []
    held = deque()      # events read, not yet given out
    switched_out = {}   # tid -> its CSwitch still waiting for a switch-in

    def finish():
        pid, tid, ts, name, raw = current
        whole, named, truncated = whole_stack(stack, frames)
        fields = {"Event": raw, "Truncated": truncated}
        if name == "CSwitch":
            fields["OffCpuTime"] = None
            fields["Preempted"] = False
        ev = make_event(name, None, pid, tid, ts, fields, tuple(whole))
        ev.frames = tuple(named)
        if name == "CSwitch":
            # A thread switched out again without a switch-in read between:
            # its earlier wait stays unknown (None).
            switched_out[tid] = ev
        held.append(ev)

    def release():
        """Gives out events up to the oldest CSwitch still waiting."""
        waiting = {id(ev) for ev in switched_out.values()}
        while held and id(held[0]) not in waiting:
            yield held.popleft()

    with _open_script(path) as f:
        for n, line in enumerate(_lines(f)):
            if progress is not None and not n & 0x3FFF:
                progress(f.buffer.tell())
            if current is _SKIPPED:
                if _FRAME.match(line):
                    continue
                current = None
            if current is not None:
                m = _FRAME.match(line)
                if m:
                    rel = int(m.group(1), 16)
                    dso = m.group(3)
                    stack.append(maps.absolute(current[0], rel, dso))
                    frames.append((m.group(2), dso))
                    continue
                finish()
                yield from release()
                current = None
                stack, frames = [], []
            if "PERF_RECORD_MMAP" in line:
                m = _MMAP.match(line)
                if m:
                    maps.add(int(m.group(6)), int(m.group(7), 16), int(m.group(8), 16),
                             int(m.group(9), 16), m.group(10).strip())
                continue
            if "PERF_RECORD_SWITCH" in line:
                m = _SWITCH.match(line)
                if m:
                    tid = int(m.group(3))
                    ev = switched_out.get(tid)
                    if ev is not None:
                        if m.group(6) == "OUT":
                            ev.fields["Preempted"] = "preempt" in m.group(7)
                        else:
                            del switched_out[tid]
                            ev.fields["OffCpuTime"] = max(_ns(m.group(4), m.group(5)) - ev.timestamp, 0)
                            yield from release()
                continue
            if "PERF_RECORD_" in line:
                continue
            m = _SAMPLE.match(line)
            if m:
                raw = m.group(6)
                name = EVENT_NAMES.get(raw.split("/")[0].split(":u")[0], raw)
                current = (int(m.group(2)), int(m.group(3)), _ns(m.group(4), m.group(5)), name, raw)
                if (m.group("comm") or "").strip() in OWN_THREADS:
                    current = _SKIPPED
    if current is not None and current is not _SKIPPED:
        finish()
    switched_out.clear()     # never switched in again: OffCpuTime stays None
    yield from release()


def _open_script(path):
    """The saved script as text, opened as every file of a capture is
    (files.py): perf script writes it front to back, so one with a hole
    is not its output."""
    fd = open_file(path)
    try:
        check_real_size(fd, path)
        if has_hole(fd):
            raise TraceError(f"{path}: a sparse file; not perf's script")
    except BaseException:
        os.close(fd)
        raise
    return io.TextIOWrapper(io.BufferedReader(io.FileIO(fd, "rb")), encoding="utf-8",
                            errors="replace")


def _lines(f):
    """The lines of `f`, each at most LINE_LIMIT characters (the rest of a
    longer one is skipped): memory stays bounded on any file."""
    while True:
        line = f.readline(LINE_LIMIT)
        if not line:
            return
        if len(line) == LINE_LIMIT and not line.endswith("\n"):
            while True:
                rest = f.readline(LINE_LIMIT)
                if not rest or rest.endswith("\n"):
                    break
            line += "\n"
        yield line
