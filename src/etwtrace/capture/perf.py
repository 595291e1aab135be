"""Running perf for a capture (reading what it recorded: _perfscript.py).

perf records CPU samples (and context switches, and the USDT stack-sample
probe) with call graphs on CLOCK_MONOTONIC, the clock of the built-in
recorder, so both outputs merge on one time line.  Where libpython omits
frame pointers, call graphs are DWARF-unwound and `perf inject --jit` turns
the jitdump into ELF images with unwind info for the trampolines.  At the end
`perf script` text is saved in the capture, so reading a capture needs
neither perf nor the machine that recorded it.

Deep stacks: stack mode puts 3 or 4 native frames and 370 to 930 bytes of
C stack under every Python frame (docs/BENCHMARKS.md), so a stack 100
Python frames deep is about 400 frames or 37 to 93 KiB.  Frame-pointer
stacks are walked by the kernel up to kernel.perf_event_max_stack frames
(127 unless raised: raise_max_stack raises it while perf records); DWARF
stacks reach as deep as the stack copy (the preset's dwarf_stack_size);
and `perf script` prints at most its --max-stack frames of either.
"""

import contextlib
import errno
import fcntl
import os
import platform
import shutil
import struct
import subprocess
import sys
import sysconfig
import time

from .. import env as _env
from ..errors import Error
from ..trace.perfscript import STACK_SAMPLE_PROBE

SCRIPT_FIELDS = "comm,pid,tid,time,event,ip,sym,dso"
# perf record's side-band thread (BPF program loads) polls with a 1 s
# timeout, and perf waits for it when it stops: every recording would end
# up to a second late.  BPF programs' symbols are nothing a capture of a
# Python program needs.
NO_BPF_EVENTS = "--no-bpf-event"

# Frames the kernel walks in a frame-pointer stack while perf records: 100
# Python frames take ~400 on an interpreter with 4 native frames per
# Python frame (Debian's 3.15), so 1024 keeps ~250 (3.13: ~330).
FP_MAX_STACK = 1024
# Frames `perf script` prints of a stack (its default is the kernel's
# setting when it runs, 127 once a raised one is set back).  A 64 KiB
# DWARF stack copy holds at most a few thousand frames.
SCRIPT_MAX_STACK = 4096
MAX_STACK_SYSCTL = "/proc/sys/kernel/perf_event_max_stack"
# The value kernel.perf_event_max_stack had before an etwtrace recording
# raised it, kept until one sets it back (root's own directory: another
# user cannot plant or change it).
SAVED_MAX_STACK = "/run/etwtrace/perf_event_max_stack"


class PerfError(Error):
    """perf is missing, refused, or failed."""


class PerfSpaceError(PerfError):
    """A file made from perf.data was not made, or cut short, to keep the
    file system's reserve free (_budget.py)."""


def find_perf():
    perf = shutil.which("perf")
    return perf if perf and perf_version(perf) is not None else None


_versions = {}      # perf's path -> its `perf version` words, or None


def perf_version(perf):
    """The words `perf version` prints (b"perf", b"version", b"6.1.x"),
    asked once per process; None when it does not run."""
    if perf not in _versions:
        try:
            r = subprocess.run([perf, "version"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, timeout=30)
            _versions[perf] = r.stdout.split() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            _versions[perf] = None
    return _versions[perf]


# perf_event_open(2)'s number, per machine (asm/unistd.h).
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def _may_open_cpu_clock(system_wide):
    """Whether the kernel lets this process open the event perf records
    (a user-space cpu-clock sampler on itself, or on CPU 0 for -a): True,
    False, or None when it cannot be asked from here (another machine)."""
    number = PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        return None
    import ctypes       # (only here: no other part of a capture needs it)
    # struct perf_event_attr as its first version (64 bytes), which every
    # kernel takes: PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, 1000 Hz,
    # PERF_SAMPLE_IP; disabled, exclude_kernel, exclude_hv, freq.
    flags = 1 << 0 | 1 << 5 | 1 << 6 | 1 << 10
    attr = struct.pack("<IIQQQQQ16x", 1, 64, 0, 1000, 1, 0, flags)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid, cpu = (-1, 0) if system_wide else (0, -1)
    fd = libc.syscall(ctypes.c_long(number), ctypes.c_char_p(attr), ctypes.c_int(pid),
                      ctypes.c_int(cpu), ctypes.c_int(-1), ctypes.c_ulong(0))
    if fd < 0:
        return False
    os.close(fd)
    return True


def check_permitted(perf, system_wide=False):
    """Raises PerfError unless perf may sample here: a program it runs, or
    with `system_wide` every CPU (a session's -a).  Asked of the kernel
    directly where it can be (1 ms), else tried for real (`perf record --
    true`, 0.14 s); a refusal is tried for real too, for perf's reason."""
    if _may_open_cpu_clock(system_wide):
        return
    scope = ["-a"] if system_wide else []
    try:
        r = subprocess.run(
            [perf, "record", "-q", NO_BPF_EVENTS, *scope, "-k", "CLOCK_MONOTONIC",
             "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
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
    """"fp", "dwarf" or "mixed" for a capture.  Frame pointers where
    libpython keeps them: the kernel walks them as deep as
    raise_max_stack allows, at 8 bytes a frame, where a DWARF stack copy
    costs its whole size in every sample.  With context switches, "mixed":
    CPU samples by frame pointers and context switches by DWARF, since a
    blocked stack runs through libc's wait functions, which keep no frame
    pointers (perf 6.1 unwinds a mix only when the DWARF event comes first
    on its command line: record_command).  With CPython's JIT on, frame
    pointers for all: the JIT's machine code has no unwind tables perf can
    read, so a DWARF unwind stops in it, while it keeps frame pointers
    (3.15.2, hot.py: 2 of 1044 samples named inner() with dwarf, 998 of
    1040 with fp).  ETWTRACE_CALLGRAPH=fp|dwarf overrides."""
    override = _env.choice(_env.CALLGRAPH)
    if override:
        return override
    if not python_keeps_frame_pointers():
        return "dwarf"
    if preset.context_switches and not jit_enabled():
        return "mixed"
    return "fp"


def needs_jit_inject(callgraph):
    """Whether perf's DWARF unwinding of this capture needs the
    trampolines' images (`perf inject --jit`)."""
    return callgraph in ("dwarf", "mixed")


def uses_frame_pointers(callgraph):
    return callgraph in ("fp", "mixed")


def jit_enabled():
    """Whether CPython's JIT (3.14+, PYTHON_JIT=1) is on in this interpreter,
    and so in the children it starts with the same environment."""
    jit = getattr(sys, "_jit", None)
    try:
        return bool(jit is not None and jit.is_enabled())
    except Exception:
        return False


def callgraph_note(preset, callgraph):
    """What a user should know of the call graphs chosen, or None."""
    if not jit_enabled():
        return None
    if callgraph == "dwarf":
        return ("CPython's JIT is on and this Python keeps no frame pointers: samples in "
                "JIT-compiled code lose their callers (PYTHON_JIT=0 keeps them)")
    if preset.context_switches:
        return ("CPython's JIT is on: call graphs by frame pointers, so off-CPU stacks stop "
                "at the first libc frame")
    return None


def python_keeps_frame_pointers():
    """Whether this interpreter was built with frame pointers, so perf's
    cheap frame-pointer call graphs walk through libpython."""
    override = _env.choice(_env.CALLGRAPH)
    if override:
        return override == "fp"
    flags = " ".join(
        str(sysconfig.get_config_var(v) or "") for v in ("CFLAGS", "PY_CFLAGS", "CONFIGURE_CFLAGS")
    )
    keep = flags.rfind("-fno-omit-frame-pointer")
    omit = flags.rfind("-fomit-frame-pointer")
    if keep >= 0 and keep > omit:
        return True
    if platform.machine() == "aarch64":
        # gcc keeps frame records on aarch64 without being asked (Debian's
        # flags do not say so): look at a function's prologue instead.
        import ctypes
        from ..sampled.remote import sets_up_frame_pointer
        address = ctypes.cast(ctypes.pythonapi.PyObject_Vectorcall, ctypes.c_void_p).value
        return sets_up_frame_pointer(ctypes.string_at(address, 24), "aarch64")
    return False


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


# Each CPU's ring buffer when perf is not given -m (as root; less without).
DEFAULT_RING = 512 << 10
PAGE = 4096


def ring_pages(preset, callgraph, limit=0):
    """The pages of each CPU's ring buffer (perf record -m), or None for
    perf's default.  What the rings hold when perf is told to stop still
    lands in perf.data, so a capture of at most `limit` bytes gives all
    CPUs' rings together an eighth of it (with room for two stack copies
    at the least)."""
    pages = None
    if callgraph != "fp" and os.geteuid() == 0:
        # Room in each CPU's ring for 64 stack copies: with the default
        # (516 KiB) 64 KiB copies at 999 Hz lose samples ("lost chunks").
        # Only root may lock more than the default.
        pages = 128
        while pages * PAGE < 64 * preset.dwarf_stack_size:
            pages *= 2      # perf takes a power of two
    if limit:
        least = 8
        if callgraph != "fp":
            while least * PAGE < 2 * preset.dwarf_stack_size:
                least *= 2
        most = least
        while most * 2 * PAGE * (os.cpu_count() or 1) <= limit // 8:
            most *= 2
        if (pages or DEFAULT_RING // PAGE) > most:
            pages = most
    return pages


def ring_bytes(pages):
    """The most all CPUs' rings of that many pages (None: perf's default)
    hold: what perf may still write after it is told to stop."""
    return (os.cpu_count() or 1) * (pages * PAGE if pages else DEFAULT_RING)


def record_command(perf, output, preset, callgraph, probe_event, control=None, limit=0):
    """The perf record command line for a recording-profile preset; with
    `control`, a FIFO through which perf is told to stop sampling when the
    capture stops (_budget.Guard); `limit`, the capture's size limit
    (ring_pages)."""
    cmd = [perf, "record", "-q", NO_BPF_EVENTS, "-k", "CLOCK_MONOTONIC", "-o", output]
    if control:
        cmd += ["--control", f"fifo:{control}"]
    pages = ring_pages(preset, callgraph, limit)
    if pages:
        cmd += ["-m", str(pages)]
    dwarf = f"dwarf,{preset.dwarf_stack_size}"
    if callgraph == "mixed":
        # Each event its own call graph; the DWARF one first, or perf 6.1
        # leaves its stack copies unwound (the stacks end in libc).
        terms = f"call-graph=dwarf,stack-size={preset.dwarf_stack_size}"
        cmd += ["-e", f"context-switches/period=1,{terms}/", "--switch-events"]
        if preset.cpu_samples:
            cmd += ["-e", f"cpu-clock/freq={preset.frequency},call-graph=fp/"]
        if probe_event:
            cmd += ["-e", f"{probe_event}/call-graph=fp/"]
        return cmd
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
    cmd += ["--call-graph", "fp" if callgraph == "fp" else dwarf]
    return cmd


# ---- kernel.perf_event_max_stack ----

def read_max_stack():
    try:
        with open(MAX_STACK_SYSCTL) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _write_max_stack(frames):
    with open(MAX_STACK_SYSCTL, "w") as f:
        f.write(f"{frames}\n")


def _write_max_stack_when_free(frames):
    """perf's events are freed a moment after it exits: until then the
    kernel still refuses a change (EBUSY)."""
    for delay in (0.05, 0.1, 0.2, 0.4, 0.8):
        try:
            _write_max_stack(frames)
            return
        except OSError as ex:
            if ex.errno != errno.EBUSY:
                raise
        time.sleep(delay)
    _write_max_stack(frames)


@contextlib.contextmanager
def _saved_max_stack():
    """Holds the lock of the saved value; yields (read, write) for it."""
    folder = os.path.dirname(SAVED_MAX_STACK)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(folder)
    if not os.path.isdir(folder) or os.path.islink(folder) or st.st_uid != 0 or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{folder} is not root's own directory")
    fd = os.open(SAVED_MAX_STACK + ".lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)

        def read():
            try:
                with open(SAVED_MAX_STACK, "rb") as f:
                    return int(f.read(32).strip())
            except (OSError, ValueError):
                return None

        def write(value):
            if value is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(SAVED_MAX_STACK)
                return
            out = os.open(SAVED_MAX_STACK, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            with os.fdopen(out, "w") as f:
                f.write(f"{value}\n")
        yield read, write
    finally:
        os.close(fd)


def raise_max_stack(callgraph, say, frames=FP_MAX_STACK):
    """Raises kernel.perf_event_max_stack to `frames` for a recording with
    frame-pointer call graphs, saying so; returns whether the recording
    must call restore_max_stack when its perf has stopped.  The kernel
    refuses a change while anything records call graphs (EBUSY): then
    the limit stays and deeper stacks are cut (and marked so by report).
    The value before is kept in SAVED_MAX_STACK until set back, so that
    recordings side by side, or one that died, still leave it restored."""
    if not uses_frame_pointers(callgraph):
        return False
    current = read_max_stack()
    if current is None:
        return False
    cut = f"stacks deeper than {current} frames are cut (report marks them [truncated])"
    if os.geteuid() != 0:
        if current < frames:
            say(f"etwtrace: kernel.perf_event_max_stack is {current} and only root can "
                f"raise it: {cut}")
        return False
    try:
        with _saved_max_stack() as (read_saved, write_saved):
            saved = read_saved()
            if current >= frames:
                # Raised by another etwtrace recording (or left so by one
                # that could not set it back): this one sets it back too.
                return saved is not None
            if saved is None:
                write_saved(current)
            try:
                _write_max_stack(frames)
            except OSError:
                if saved is None:
                    write_saved(None)
                raise
    except OSError as ex:
        why = ("another profiler is recording call graphs now" if ex.errno == errno.EBUSY
               else ex.strerror or str(ex))
        say(f"etwtrace: cannot raise kernel.perf_event_max_stack from {current} ({why}): {cut}")
        return False
    say(f"etwtrace: kernel.perf_event_max_stack raised from {saved or current} to {frames} "
        "while perf records (deep Python stacks need more frames); it is set back after")
    return True


def restore_max_stack(say):
    """Sets kernel.perf_event_max_stack back to its value before the
    etwtrace recordings that raised it, once nothing records call graphs
    (else a later recording's end does it)."""
    try:
        with _saved_max_stack() as (read_saved, write_saved):
            saved = read_saved()
            if saved is None:
                return
            try:
                _write_max_stack_when_free(saved)
            except OSError as ex:
                if ex.errno != errno.EBUSY:
                    raise
                say(f"etwtrace: kernel.perf_event_max_stack stays at {read_max_stack()} for "
                    f"now (was {saved}): a profiler is still recording call graphs; the next "
                    "etwtrace recording to end sets it back")
                return
            write_saved(None)
    except OSError as ex:
        say(f"etwtrace: cannot set kernel.perf_event_max_stack back: "
            f"{ex.strerror or ex}")


def inject_jit(perf, data, output, preexec_fn=None, lands_in=None):
    """perf inject --jit of `data` into `output`.  `lands_in`: the
    directory where, confined (_confine), its output and its images
    really go (they see it as /tmp)."""
    from ..trace import budget as _budget
    # perf.jit.data is about perf.data's size, and the jitted images come
    # on top (in /tmp, where perf inject writes them).
    need = 2 * os.path.getsize(data)
    if lands_in is not None:
        fits = _budget.fits(lands_in, need + need // 2)
    else:
        fits = _budget.fits(os.path.dirname(output), need) and _budget.fits("/tmp", need // 2)
    if not fits:
        raise PerfSpaceError("not running perf inject --jit: its output would leave the file "
                             "system less free space than its reserve; perf.data is complete")
    r = subprocess.run([perf, "inject", "--jit", "-i", data, "-o", output],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)
    if r.returncode != 0:
        raise PerfError("perf inject --jit failed: " +
                        (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1])


def add_to_buildid_cache(perf, cache, images, data):
    """Files `images` (ELF) in the build-id cache `cache`, which
    `perf --buildid-dir CACHE report` reads before the paths `data` names,
    when `data` records the images' build-ids and perf reads them.  Best
    effort: without it the images in /tmp (or copied back there) are used.
    perf 7.2 (Debian sid) lists the images' build-ids but still names them
    from their paths alone (seen here), so the cache is made for perf 6 only."""
    try:
        version = perf_version(perf) or []
        major = int(version[2].split(b".")[0]) if len(version) > 2 else 0
        listed = subprocess.run([perf, "buildid-list", "-i", data], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, timeout=120).stdout
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return
    if major != 6 or b"jitted-" not in listed:
        return
    os.makedirs(cache, mode=0o700, exist_ok=True)
    for i in range(0, len(images), 200):
        subprocess.run([perf, "--buildid-dir", cache, "buildid-cache", "-a",
                        ",".join(images[i:i + 200])],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def save_script(perf, data, output, preexec_fn=None):
    """perf script's text of `data` into `output`, as long as the file
    system keeps its reserve free: else cut after its last whole record
    (PerfSpaceError says so)."""
    import tempfile
    from ..trace import budget as _budget
    directory = os.path.dirname(os.path.abspath(output))
    # Private, as the rest of the capture.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    cut = False
    with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [perf, "script", "-i", data, "-F", SCRIPT_FIELDS, "--ns", "--no-inline",
             "--max-stack", str(SCRIPT_MAX_STACK), "--show-mmap-events", "--show-switch-events"],
            stdout=subprocess.PIPE, stderr=errors, preexec_fn=preexec_fn)
        whole = 0       # where the last whole record ends
        try:
            while True:
                chunk = proc.stdout.read(1 << 20)
                if not chunk:
                    break
                if not _budget.fits(directory, len(chunk)):
                    cut = True
                    proc.kill()
                    break
                end = chunk.rfind(b"\n\n")
                if end >= 0:
                    whole = out.tell() + end + 2
                out.write(chunk)
        finally:
            proc.stdout.close()
            returncode = proc.wait()
        if cut:
            out.truncate(whole)
        errors.seek(0)
        message = errors.read(1 << 16).decode(errors="replace").strip().splitlines()
    if cut:
        raise PerfSpaceError("perf.script was cut short to leave the file system its reserve "
                             "of free space: the report shows the samples before the cut; "
                             "perf.data is complete")
    if returncode != 0:
        raise PerfError("perf script failed: " + (message or ["?"])[-1])


def finish_data(directory, perf, callgraph, pids, say, progress=None):
    """Makes a finished capture's perf.data readable, after its processes
    ended: perf inject --jit (where DWARF unwinding needs the Python
    trampolines' images; their jitdumps are in the capture's jit/, see
    launcher.copy_perf_files), whose output then replaces perf.data (it
    holds all perf.data held: the capture keeps one copy), and perf script.
    `directory`: the capture's CaptureDir.  As root both run confined
    (confine.py).  A failed inject is said and the samples are unwound
    without the images; running out of room is said; perf script's other
    failures raise PerfError.  `progress`: a progress.Progress shown while
    it runs."""
    from . import confine as _confine
    from . import perfdata as _perfdata
    from ..trace import manifest as _manifest
    from ..trace.capture import CaptureError
    from .. import sizes as _sizes
    path = directory.path
    data = os.path.join(path, _manifest.PERF_DATA)
    step = progress.step if progress is not None else (lambda text: None)
    # As root, perf inject must not write through another user's link in
    # /tmp (the names of its images are known in advance).
    tmp = _confine.PrivateTmp(path, pids) if os.geteuid() == 0 else None
    confine = tmp.confine if tmp is not None else None
    try:
        jit = os.path.join(path, "jit")
        if needs_jit_inject(callgraph) and any(
                os.path.isfile(os.path.join(jit, f"jit-{pid}.dump")) for pid in pids):
            step(f"perf inject --jit of {_sizes.size_text(os.path.getsize(data))}")
            injected = os.path.join(path, _manifest.PERF_JIT_DATA)
            try:
                # perf's unwinder finds the images inject writes only as
                # /tmp/jitted-*.so, next to the jitdump; the capture gets copies.
                if tmp is None:
                    inject_jit(perf, data, injected)
                else:
                    inject_jit(perf, data, tmp.inside(_manifest.PERF_JIT_DATA),
                               preexec_fn=confine, lands_in=path)
                    tmp.keep(_manifest.PERF_JIT_DATA)
                os.replace(injected, data)
                try:
                    directory.write_manifest(**{_manifest.PERF_INJECTED: True})
                except CaptureError as ex:
                    say(f"etwtrace: {ex}")
            except PerfSpaceError as ex:
                say(f"etwtrace: {ex}")
            except PerfError as ex:
                say(f"etwtrace: {ex}; perf's samples are unwound without the Python "
                    "trampolines' images")
            finally:
                if os.path.lexists(injected):
                    os.unlink(injected)
        # hotspot would list the ring files, the budget page and perf's
        # buffer, gone by now, as parser errors (perfdata.py).
        _perfdata.anonymize_capture_mappings(_manifest.PERF_DATA, dir_fd=directory.fd)
        step(f"perf script of {_sizes.size_text(os.path.getsize(data))}")
        try:
            save_script(perf, data, os.path.join(path, _manifest.PERF_SCRIPT),
                        preexec_fn=confine)
        except PerfSpaceError as ex:
            say(f"etwtrace: {ex}")
    finally:
        if tmp is not None:
            tmp.close()
