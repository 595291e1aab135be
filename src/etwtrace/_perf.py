"""Running perf for a capture, and reading what it recorded.

perf records CPU samples (and context switches, and the USDT stack-sample
probe) with call graphs on CLOCK_MONOTONIC, the clock of the built-in
recorder, so both outputs merge on one time line.  Where libpython omits
frame pointers, call graphs are DWARF-unwound and `perf inject --jit` turns
the jitdump into ELF images with unwind info for the trampolines.  At the end
`perf script` text is saved in the capture, so reading a capture needs
neither perf nor the machine that recorded it.
"""

import os
import re
from collections import deque
import shutil
import subprocess
import sysconfig

STACK_SAMPLE_PROBE = "sdt_etwtrace:stack_sample"
SCRIPT_FIELDS = "comm,pid,tid,time,event,ip,sym,dso"
# etwtrace's own thread (copier.c): not part of the program's picture.
OWN_THREADS = ("etwtrace-copy",)


class PerfError(Exception):
    """perf is missing, refused, or failed."""


def find_perf():
    perf = shutil.which("perf")
    if not perf:
        return None
    try:
        r = subprocess.run([perf, "version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return perf if r.returncode == 0 else None


def check_permitted(perf):
    """Raises PerfError unless perf may sample here (tried for real)."""
    try:
        r = subprocess.run(
            [perf, "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock", "-o", "/dev/null",
             "--", "true"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise PerfError(f"perf could not run: {ex}") from None
    if r.returncode != 0:
        lines = [l for l in r.stderr.decode(errors="replace").splitlines() if l.strip()]
        reason = lines[0].strip() if lines else f"exit code {r.returncode}"
        raise PerfError(f"perf refused to record ({reason}); run as root or lower "
                        "/proc/sys/kernel/perf_event_paranoid, or use --recorder builtin")


def choose_callgraph(preset):
    """"fp" or "dwarf" for a capture.  Frame pointers where libpython keeps
    them, except with context switches: a blocked stack runs through libc's
    wait functions, which keep none, and perf cannot mix call-graph kinds
    (measured with perf 6.1: a per-event call-graph=dwarf beside a global
    fp gives stacks that stop at the first libc frame).
    ETWTRACE_CALLGRAPH=fp|dwarf overrides."""
    override = os.environ.get("ETWTRACE_CALLGRAPH", "").lower()
    if override in ("fp", "dwarf"):
        return override
    if python_keeps_frame_pointers() and not preset.context_switches:
        return "fp"
    return "dwarf"


def python_keeps_frame_pointers():
    """Whether this interpreter was built with frame pointers, so perf's
    cheap frame-pointer call graphs walk through libpython."""
    override = os.environ.get("ETWTRACE_CALLGRAPH", "").lower()
    if override in ("fp", "dwarf"):
        return override == "fp"
    flags = " ".join(
        str(sysconfig.get_config_var(v) or "") for v in ("CFLAGS", "PY_CFLAGS", "CONFIGURE_CFLAGS")
    )
    keep = flags.rfind("-fno-omit-frame-pointer")
    omit = flags.rfind("-fomit-frame-pointer")
    return keep >= 0 and keep > omit


def _ensure_tracefs():
    if os.path.isdir("/sys/kernel/tracing/events") or os.path.isdir("/sys/kernel/debug/tracing/events"):
        return True
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return os.path.isdir("/sys/kernel/tracing/events")


def add_stack_sample_probe(perf, native_library):
    """Attaches a uprobe to the USDT stack-sample probe; returns the event
    name, or None (with the reason) when that is not possible here."""
    if not _ensure_tracefs():
        return None, "tracefs is not mounted"
    run = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    try:
        # perf finds SDT notes through its build-id cache.  An identical
        # build installed elsewhere earlier (another venv, since deleted)
        # has the same build-id, and its stale cache entry would make
        # `perf probe` fail with ENOENT: drop it, then add this copy.
        subprocess.run([perf, "buildid-cache", "--remove", native_library], **run)
        subprocess.run([perf, "buildid-cache", "--add", native_library], **run)
        subprocess.run([perf, "probe", "-q", "-d", STACK_SAMPLE_PROBE], **run)
        r = subprocess.run([perf, "probe", "-q", "-x", native_library, "-a",
                            STACK_SAMPLE_PROBE.replace("sdt_", "%sdt_", 1)], **run)
        if r.returncode != 0:
            r = subprocess.run([perf, "probe", "-q", "-a", STACK_SAMPLE_PROBE], **run)
    except (OSError, subprocess.TimeoutExpired) as ex:
        return None, str(ex)
    if r.returncode != 0:
        lines = [l for l in r.stderr.decode(errors="replace").splitlines() if l.strip()]
        return None, lines[0] if lines else "perf probe failed"
    return STACK_SAMPLE_PROBE, None


def remove_stack_sample_probe(perf):
    subprocess.run([perf, "probe", "-q", "-d", STACK_SAMPLE_PROBE],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def record_command(perf, output, preset, callgraph, probe_event):
    """The perf record command line for a recording-profile preset."""
    cmd = [perf, "record", "-q", "-k", "CLOCK_MONOTONIC", "-o", output]
    events = []
    if preset.cpu_samples:
        events += ["-e", f"cpu-clock/freq={preset.frequency}/"]
    if preset.context_switches:
        # Every switch-out with its stack, plus perf's switch records, whose
        # switch-in ends each blocked time.
        events += ["-e", "context-switches/period=1/", "--switch-events"]
    if probe_event:
        events += ["-e", probe_event]
    cmd += events
    if callgraph == "fp":
        cmd += ["--call-graph", "fp"]
    else:
        cmd += ["--call-graph", f"dwarf,{preset.dwarf_stack_size}"]
    return cmd


def inject_jit(perf, data, output):
    r = subprocess.run([perf, "inject", "--jit", "-i", data, "-o", output],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise PerfError("perf inject --jit failed: " +
                        (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1])


def save_script(perf, data, output):
    with open(output, "wb") as out:
        r = subprocess.run(
            [perf, "script", "-i", data, "-F", SCRIPT_FIELDS, "--ns", "--no-inline",
             "--show-mmap-events", "--show-switch-events"],
            stdout=out, stderr=subprocess.PIPE,
        )
    if r.returncode != 0:
        raise PerfError("perf script failed: " +
                        (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1])


# ---- reading perf script text ----

# Lines start with the thread's comm, padded (captures from before it was
# saved have none): "COMM PID/TID SECONDS.NANOS: ...".
_HEAD = r"^\s*(?:(?P<comm>\S.*?)\s+)?"
_SAMPLE = re.compile(_HEAD + r"(\d+)/(\d+)\s+(\d+)\.(\d+):\s+(\S+):\s*(.*)$")
_MMAP = re.compile(
    _HEAD + r"(\d+)/(\d+)\s+(\d+)\.(\d+):\s+PERF_RECORD_MMAP2?\s+(-?\d+)/\d+:\s+"
    r"\[0x([0-9a-f]+)\(0x([0-9a-f]+)\) @ (?:0x)?([0-9a-f]+)[^\]]*\]:\s+\S+\s+(.*)$"
)
_FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")

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


_SWITCH = re.compile(_HEAD + r"(\d+)/(\d+)\s+(\d+)\.(\d+):\s+PERF_RECORD_SWITCH(?:_CPU_WIDE)?\s+(IN|OUT)\s*(.*)$")


_SKIPPED = object()     # a sample of etwtrace's own thread, left out


def read_script(path, make_event, progress=None):
    """Yields events from a saved `perf script` text in order.  Each event
    also carries `.frames`: (symbol, dso) per stack address.

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
        fields = {"Event": raw}
        if name == "CSwitch":
            fields["OffCpuTime"] = None
            fields["Preempted"] = False
        ev = make_event(name, None, pid, tid, ts, fields, tuple(stack))
        ev.frames = tuple(frames)
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

    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
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
