"""--capture: run a program under a recorder and leave a self-contained
capture directory (CTF trace, perf.data and its script text, perf maps,
jitdumps) that can be analysed on another machine.

The launcher stays out of the program's way: Ctrl-C reaches the program
through the terminal, SIGTERM/SIGHUP/SIGINT sent to the launcher are
passed on to it, and the program dies with the launcher (PR_SET_PDEATHSIG)
rather than run on orphaned.  Whatever ends the program, the capture is
finished (perf inject and script run, streams are finalized, the manifest
is completed) and the launcher then exits as the program did: with its exit
code, or by the same signal."""

import configparser
import glob
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

from ..trace import (budget as _budget, children as _children, ctf as _ctf, manifest as _manifest,
                     safefs as _safefs)
from . import guide as _guide, perf as _perf, progress as _progress
from .. import env as _env, sizes as _sizes
from .perf import PerfError
from ..trace.capture import CaptureDir, CaptureError, recorded_losses

AUTOSTART_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "_autostart")
MODE_ENV = _env.CAPTURE_MODE

class Preset:
    def __init__(self, name, section):
        self.name = name
        try:
            self.cpu_samples = section.getboolean("cpu_samples", False)
            self.context_switches = section.getboolean("context_switches", False)
            self.stack_sample_probe = section.getboolean("stack_sample_probe", True)
            self.frequency = section.getint("frequency", 999)
            self.dwarf_stack_size = section.getint("dwarf_stack_size", 65528)
        except ValueError as ex:
            raise CaptureError(f"recording profile preset {name!r}: {ex}") from None
        if not (0 < self.frequency <= 100_000) or not (512 <= self.dwarf_stack_size <= 65528):
            raise CaptureError(f"recording profile preset {name!r}: frequency must be within "
                               "1..100000 and dwarf_stack_size within 512..65528")

    @property
    def needs_perf(self):
        return self.cpu_samples or self.context_switches


def load_preset(name):
    from ..profiles import profile_path
    path = _env.text(_env.PROFILE) or profile_path()
    parser = configparser.ConfigParser()
    try:
        parser.read_string(_env.read_profile_text(path), source=path)
    except _env.EnvError as ex:
        raise CaptureError(str(ex)) from None
    except configparser.Error as ex:
        first = str(ex).strip().splitlines()[0]
        raise CaptureError(f"cannot read recording profile {path}: {first}") from None
    for section in parser.sections():
        if section.lower() == name.lower():
            return Preset(section, parser[section])
    raise CaptureError(f"recording profile {path} has no preset {name!r} "
                       f"(it has: {', '.join(parser.sections())})")


def child_environment(path, mode):
    """Environment that makes every Python process started from the traced
    program (spawned, not only forked) trace into the same capture, and
    keep its perf files for the launcher to collect."""
    env = dict(os.environ)
    env[_env.CAPTURE] = path
    env[MODE_ENV] = mode
    env[_env.PERF_FILES] = "keep"
    parts = [AUTOSTART_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


# ---- the traced processes' /tmp files ----

def _own_tmp_file(path, owner):
    """An open descriptor of `path` if it is a plain file of user `owner`
    or of ours (`perf inject` made it), never through a symlink; else
    None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (owner, os.geteuid()):
        os.close(fd)
        return None
    return fd


def _copy_own_file(src, dst, owner):
    """Copies a /tmp file of the traced process's user into the capture
    (mode 0600), never through a symlink; other files are left alone."""
    fd = _own_tmp_file(src, owner)
    if fd is None:
        return False
    if not _budget.fits(os.path.dirname(dst), os.fstat(fd).st_size):
        os.close(fd)
        print(f"etwtrace: warning: {src} not copied into the capture: it would leave the "
              "file system less free space than its reserve", file=sys.stderr)
        return False
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            _safefs.copy_data(fd, out, os.fstat(fd).st_size)
        finally:
            os.close(out)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def own_directory(path):
    """Makes `path` (in a capture directory of ours), or checks that the
    one there is a directory of this user and no symlink."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as ex:
        raise CaptureError(f"cannot create {path}: {ex.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise CaptureError(f"{path} is not a directory of this user; refusing to write into it")


def capture_pids(path):
    ctf_root = os.path.join(path, "ctf")
    if not os.path.isdir(ctf_root):
        return set()
    return {pid for pid, _ in _ctf.trace_dirs(ctf_root)}


def collect_perf_files(path, pids, owners=None):
    """Copies the perf map, jitdump and `perf inject` images of every
    traced process into the capture (maps/, jit/): files of the process's
    user (`owners`: {pid: uid}; default this user).  A --capture then
    removes the originals of its ended processes (remove_tmp_copies); a
    session's stop leaves its processes' maps and jitdumps to them.  perf
    and hotspot look for these files in /tmp only: the capture's README
    says how to put the copies back."""
    copy_perf_files(path, pids, owners)
    index_perf_files(path)


def copy_perf_files(path, pids, owners=None):
    """The copying half of collect_perf_files."""
    maps = os.path.join(path, "maps")
    jit = os.path.join(path, "jit")
    for directory in (maps, jit):
        own_directory(directory)
    for pid in sorted(pids):
        owner = (owners or {}).get(pid, os.geteuid())
        _copy_own_file(f"/tmp/perf-{pid}.map", os.path.join(maps, f"perf-{pid}.map"), owner)
        _copy_own_file(f"/tmp/jit-{pid}.dump", os.path.join(jit, f"jit-{pid}.dump"), owner)
        for image in glob.glob(f"/tmp/jitted-{pid}-*.so"):
            _copy_own_file(image, os.path.join(jit, os.path.basename(image)), owner)


def index_perf_files(path):
    """The build-id cache of the capture's images, and its README."""
    jit = os.path.join(path, "jit")
    images = sorted(glob.glob(os.path.join(jit, "jitted-*.so")))
    data = os.path.join(path, _manifest.PERF_DATA)
    if images and os.path.isfile(data):
        perf = _perf.find_perf()
        if perf is not None:
            _perf.add_to_buildid_cache(perf, os.path.join(path, _guide.BUILDID_DIR), images, data)
    _guide.write(path)


def remove_tmp_copies(path, pids, owner=None):
    """Removes the perf maps, jitdumps and `perf inject` images of the
    capture's ended processes from /tmp once the capture holds copies of
    them: else every capture would leave them there for good (README.txt
    says how to put them back for perf report and hotspot).  Only plain
    files of the traced user (`owner`, default this one) or ours go; the
    files of a process still running are its own."""
    owner = os.geteuid() if owner is None else owner
    for pid in sorted(pids):
        if os.path.exists(f"/proc/{pid}"):
            continue
        names = [(f"/tmp/perf-{pid}.map", "maps"), (f"/tmp/jit-{pid}.dump", "jit")]
        names += [(image, "jit") for image in glob.glob(f"/tmp/jitted-{pid}-*.so")]
        for name, kept_in in names:
            if not os.path.isfile(os.path.join(path, kept_in, os.path.basename(name))):
                continue
            fd = _own_tmp_file(name, owner)
            if fd is None:
                continue
            os.close(fd)
            try:
                os.unlink(name)
            except OSError:
                pass


def capture_size_text(path):
    """The capture's size, and its largest files, for its last line."""
    sizes = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            top = os.path.relpath(os.path.join(root, name), path).split(os.sep)[0]
            sizes[top] = sizes.get(top, 0) + st.st_blocks * 512
    total = sum(sizes.values())
    parts = [f"{name} {_sizes.size_text(size)}"
             for name, size in sorted(sizes.items(), key=lambda item: -item[1])
             if size >= max(total // 20, 1)][:3]
    return _sizes.size_text(total) + (": " + ", ".join(parts) if parts else "")


# ---- recorders ----

def choose_recorder(requested, say, system_wide=False):
    """'perf' or 'builtin' for --recorder auto|perf|builtin (perf sampling
    every CPU with `system_wide`)."""
    if requested == "builtin":
        return "builtin", None
    perf = _perf.find_perf()
    if perf is None:
        if requested == "perf":
            raise CaptureError("perf is not installed (Debian: apt-get install linux-perf); "
                               "use --recorder builtin")
        say("etwtrace: perf not found; recording with the built-in recorder")
        return "builtin", None
    try:
        _perf.check_permitted(perf, system_wide)
    except PerfError as ex:
        if requested == "perf":
            raise CaptureError(str(ex)) from None
        say(f"etwtrace: {ex}; recording with the built-in recorder")
        return "builtin", None
    if requested == "auto":
        say("etwtrace: recording with perf and the built-in recorder")
    return "perf", perf


def _die_with_parent():
    """In the child, before exec: SIGTERM when the launcher dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class _Child:
    """The process the launcher runs (perf, or the traced program): signals
    the launcher gets are passed on to it while it runs."""

    FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, cmd, env, stderr=None):
        self.received = None
        self._old = {}
        for sig in self.FORWARDED + (signal.SIGINT,):
            self._old[sig] = signal.signal(sig, self._on_signal)
        try:
            self.proc = subprocess.Popen(cmd, env=env, stderr=stderr, preexec_fn=_die_with_parent)
        except OSError as ex:
            self.restore()
            raise CaptureError(f"cannot run {cmd[0]}: {ex.strerror}") from None

    def _on_signal(self, sig, _frame):
        # Ctrl-C reaches the child through the terminal by itself; other
        # signals are passed on.  Either way the launcher carries on to
        # finish the capture.
        self.received = sig
        if sig != signal.SIGINT:
            try:
                self.proc.send_signal(sig)
            except (OSError, AttributeError):
                pass

    def wait(self):
        try:
            while True:
                try:
                    return self.proc.wait()
                except InterruptedError:
                    continue
        finally:
            self.ended = time.monotonic()
            self.restore()

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class _Tee(threading.Thread):
    """Copies a child's stderr to ours as it comes (so the program's own
    messages are live), keeping the last lines for error reports."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.tail = []

    def run(self):
        out = sys.stderr.buffer
        for line in iter(self.pipe.readline, b""):
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):
                pass
            self.tail = (self.tail + [line.decode(errors="replace").rstrip()])[-20:]


def run_with_perf(directory, perf, mode, preset, target, say, budget=None):
    from .. import _etwtrace
    path = directory.path
    callgraph = _perf.choose_callgraph(preset)
    note = _perf.callgraph_note(preset, callgraph)
    if note:
        say(f"etwtrace: {note}")
    probe = None
    if preset.stack_sample_probe:
        probe, reason = _perf.add_stack_sample_probe(perf, _etwtrace.__file__)
        if probe is None:
            say(f"etwtrace: not recording the stack-sample probe with perf ({reason})")
    if not preset.needs_perf and probe is None:
        return run_builtin_subprocess(directory, mode, target)
    data = os.path.join(path, "perf.data")
    control_dir = tempfile.mkdtemp(prefix="etwtrace-perf-")   # private (0700)
    control = _budget.perf_control(control_dir)
    limit = budget.limit if budget is not None else 0
    cmd = _perf.record_command(perf, data, preset, callgraph, probe, control, limit)
    child = [sys.executable, "-m", "etwtrace", f"--{mode}", "--", *target]
    directory.write_manifest(recorder="perf", callgraph=callgraph, perf_command=cmd)
    guard = None
    restore_max_stack = False
    try:
        restore_max_stack = _perf.raise_max_stack(callgraph, say)
        proc = _Child(cmd + ["--"] + child, child_environment(path, mode), stderr=subprocess.PIPE)
        tee = _Tee(proc.proc.stderr)
        tee.start()
        if budget is not None:
            guard = _budget.Guard(budget, path, say, perf_data=data, control=control,
                                  perf_flush=_perf.ring_bytes(
                                      _perf.ring_pages(preset, callgraph, limit)))
            guard.start()
        returncode = proc.wait()
        tee.join(timeout=10)
    finally:
        if guard is not None:
            guard.finish()
        shutil.rmtree(control_dir, ignore_errors=True)
        if restore_max_stack:
            _perf.restore_max_stack(say)
        if probe:
            _perf.remove_stack_sample_probe(perf)
    # perf exits as its workload did (by the same signal, too).
    status = returncode
    if not os.path.isfile(data) or os.path.getsize(data) == 0:
        raise CaptureError("perf recorded nothing: " + (tee.tail or ["unknown error"])[-1])
    pids = capture_pids(path)
    copy_perf_files(path, pids)     # (the jitdumps perf inject reads)
    progress = _progress.Progress()
    try:
        _perf.finish_data(directory, perf, callgraph, pids, say, progress)
    finally:
        progress.clear()
    return status, proc.received, proc.ended


def run_builtin_subprocess(directory, mode, target):
    directory.write_manifest(recorder="builtin")
    child = [sys.executable, "-m", "etwtrace", f"--{mode}", "--", *target]
    proc = _Child(child, child_environment(directory.path, mode))
    return proc.wait(), proc.received, proc.ended


def capture(path, mode, requested_recorder, preset_name, target, say, max_size=0):
    """Runs `target` (script args or ['-m', module, ...]) under the chosen
    recorder into `path`, which may hold `max_size` bytes (0: no limit);
    returns the program's exit status (negative when a signal ended it)."""
    preset = load_preset(preset_name)
    directory = CaptureDir(path).open()
    path = directory.path
    budget = None
    try:
        directory.write_manifest(format=1, mode=mode, preset=preset.name, command=target,
                                 python=sys.version.split()[0], started=time.time(),
                                 **({"max_size": max_size} if max_size else {}))
        try:
            budget = _budget.create(os.path.join(path, "ctf"), max_size)
        except _budget.BudgetError as ex:
            raise CaptureError(str(ex)) from None
        # What the capture's end writes beside the trace takes its room
        # now, as the manifest's does: a full disk then takes nothing more.
        for name in ("maps", "jit"):
            os.makedirs(os.path.join(path, name), mode=0o700, exist_ok=True)
        _guide.write(path)
        recorder, perf = choose_recorder(requested_recorder, say)
        if recorder == "perf":
            status, received, ended = run_with_perf(directory, perf, mode, preset, target,
                                                    say, budget)
        else:
            status, received, ended = run_builtin_subprocess(directory, mode, target)
        pids = capture_pids(path)
        collect_perf_files(path, pids)
        remove_tmp_copies(path, pids)
        ctf_root = os.path.join(path, "ctf")
        if os.path.isdir(ctf_root):
            _ctf.finalize(ctf_root, room=lambda size: _budget.fits(ctf_root, size))
        losses = recorded_losses(path)
        info = {"finished": time.time(), "exit_status": status}
        if received is not None:
            info["stopped_by_signal"] = signal.Signals(received).name
        if losses:
            info["events_lost"] = {str(pid): n for pid, n in losses.items()}
        info.update(budget.info())
        untraced = _children.collect(path)
        info[_children.MANIFEST_KEY] = untraced
        try:
            directory.write_manifest(**info)
        except CaptureError as ex:
            say(f"etwtrace: {ex}")      # the trace is there: say so, go on
    finally:
        if budget is not None:
            budget.remove()     # what it says is in the manifest now
        directory.close()
    lost = _budget.loss_text(losses, info)
    if lost:
        say(f"etwtrace: {lost}; the trace holds every event recorded before")
    if untraced:
        say(f"etwtrace: {_children.describe(untraced)}")
    say(f"etwtrace: capture saved to {path} ({capture_size_text(path)}; finished "
        f"{time.monotonic() - ended:.1f} s after the program)")
    return status
