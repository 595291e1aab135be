"""--capture: run a program under a recorder and leave a self-contained
capture directory (CTF trace, perf.data and its script text, perf maps,
jitdumps) that can be analysed on another machine."""

import configparser
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from . import _perf, _trace
from ._perf import PerfError

AUTOSTART_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_autostart")
MODE_ENV = "ETWTRACE_CAPTURE_MODE"


class CaptureError(Exception):
    """A capture cannot be made (bad path, bad preset, perf refused)."""


class Preset:
    def __init__(self, name, section):
        self.name = name
        try:
            self.cpu_samples = section.getboolean("cpu_samples", False)
            self.context_switches = section.getboolean("context_switches", False)
            self.stack_sample_probe = section.getboolean("stack_sample_probe", True)
            self.frequency = section.getint("frequency", 999)
            self.dwarf_stack_size = section.getint("dwarf_stack_size", 16384)
        except ValueError as ex:
            raise CaptureError(f"recording profile preset {name!r}: {ex}") from None
        if self.frequency <= 0 or not (512 <= self.dwarf_stack_size <= 65528):
            raise CaptureError(f"recording profile preset {name!r}: frequency must be positive "
                               "and dwarf_stack_size within 512..65528")

    @property
    def needs_perf(self):
        return self.cpu_samples or self.context_switches


def load_preset(name):
    from . import get_profile_path
    path = os.environ.get("ETWTRACE_PROFILE") or get_profile_path()
    parser = configparser.ConfigParser()
    try:
        with open(path, "r", encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as ex:
        raise CaptureError(f"cannot read recording profile {path}: {ex}") from None
    for section in parser.sections():
        if section.lower() == name.lower():
            return Preset(section, parser[section])
    raise CaptureError(f"recording profile {path} has no preset {name!r} "
                       f"(it has: {', '.join(parser.sections())})")


def prepare_directory(path):
    """Creates an empty capture directory, replacing an earlier capture.
    Refuses to replace anything that is not a capture."""
    path = os.path.abspath(path)
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            if os.listdir(path) and not _trace.is_capture(path):
                raise CaptureError(f"{path} exists and is not an etwtrace capture; "
                                   "refusing to replace it")
            shutil.rmtree(path, ignore_errors=True)
        else:
            raise CaptureError(f"{path} exists and is not a directory; refusing to replace it")
    try:
        os.makedirs(path)
        probe = os.path.join(path, ".writable")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as ex:
        raise CaptureError(f"cannot create capture directory {path}: {ex.strerror}") from None
    return path


def write_manifest(path, **info):
    data = _trace.read_manifest(path)
    data.update(info)
    data.setdefault("format", 1)
    tmp = os.path.join(path, _trace.MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, os.path.join(path, _trace.MANIFEST))


def child_environment(path, mode):
    """Environment that makes every Python process started from the traced
    program (spawned, not only forked) trace into the same capture."""
    env = dict(os.environ)
    env["ETWTRACE_CAPTURE"] = path
    env[MODE_ENV] = mode
    parts = [AUTOSTART_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def collect_perf_maps(path):
    """Copies the perf map of every process the capture holds."""
    pids = set()
    ctf_root = os.path.join(path, "ctf")
    if os.path.isdir(ctf_root):
        from ._ctf import trace_dirs
        pids.update(pid for pid, _ in trace_dirs(ctf_root))
    for dump in glob.glob(os.path.join(path, "jit", "jit-*.dump")):
        try:
            pids.add(int(os.path.basename(dump)[4:-5]))
        except ValueError:
            pass
    os.makedirs(os.path.join(path, "maps"), exist_ok=True)
    for pid in sorted(pids):
        src = f"/tmp/perf-{pid}.map"
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(path, "maps", f"perf-{pid}.map"))


def choose_recorder(requested, say):
    """'perf' or 'builtin' for --recorder auto|perf|builtin."""
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
        _perf.check_permitted(perf)
    except PerfError as ex:
        if requested == "perf":
            raise CaptureError(str(ex)) from None
        say(f"etwtrace: {ex}; recording with the built-in recorder")
        return "builtin", None
    if requested == "auto":
        say("etwtrace: recording with perf and the built-in recorder")
    return "perf", perf


class _ForwardSignals:
    """While the traced child runs, Ctrl-C reaches it through the terminal;
    the orchestrator must survive to finish the capture."""

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, lambda *a: None)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


def run_with_perf(path, perf, mode, preset, target, say):
    from . import _etwtrace
    callgraph = _perf.choose_callgraph(preset)
    probe = None
    if preset.stack_sample_probe:
        probe, reason = _perf.add_stack_sample_probe(perf, _etwtrace.__file__)
        if probe is None:
            say(f"etwtrace: not recording the stack-sample probe with perf ({reason})")
    if not preset.needs_perf and probe is None:
        return run_builtin_subprocess(path, mode, target)
    data = os.path.join(path, "perf.data")
    cmd = _perf.record_command(perf, data, preset, callgraph, probe)
    child = [sys.executable, "-m", "etwtrace", f"--{mode}", "--", *target]
    write_manifest(path, recorder="perf", callgraph=callgraph, perf_command=cmd)
    try:
        with _ForwardSignals():
            proc = subprocess.run(cmd + ["--"] + child, env=child_environment(path, mode),
                                  stderr=subprocess.PIPE)
    finally:
        if probe:
            _perf.remove_stack_sample_probe(perf)
    perf_errors = proc.stderr.decode(errors="replace")
    status = _child_status(path, proc.returncode)
    if not os.path.isfile(data) or os.path.getsize(data) == 0:
        sys.stderr.write(perf_errors)
        raise CaptureError("perf recorded nothing: " +
                           (perf_errors.strip().splitlines() or ["unknown error"])[-1])
    if perf_errors.strip():
        sys.stderr.write(perf_errors)
    script_input = data
    if callgraph == "dwarf" and glob.glob(os.path.join(path, "jit", "jit-*.dump")):
        injected = os.path.join(path, "perf.jit.data")
        _perf.inject_jit(perf, data, injected)
        script_input = injected
    _perf.save_script(perf, script_input, os.path.join(path, _trace.PERF_SCRIPT))
    return status


def _child_status(path, returncode):
    """The traced program's exit status (perf record reports its own)."""
    status_file = os.path.join(path, ".exit-status")
    try:
        with open(status_file, "r") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return returncode
    finally:
        try:
            os.unlink(status_file)
        except OSError:
            pass


def run_builtin_subprocess(path, mode, target):
    write_manifest(path, recorder="builtin")
    child = [sys.executable, "-m", "etwtrace", f"--{mode}", "--", *target]
    with _ForwardSignals():
        proc = subprocess.run(child, env=child_environment(path, mode))
    return _child_status(path, proc.returncode)


def capture(path, mode, requested_recorder, preset_name, target, say):
    """Runs `target` (script args or ['-m', module, ...]) under the chosen
    recorder into `path`; returns the program's exit status."""
    preset = load_preset(preset_name)
    path = prepare_directory(path)
    write_manifest(path, format=1, mode=mode, preset=preset.name, command=target,
                   python=sys.version.split()[0], started=time.time())
    recorder, perf = choose_recorder(requested_recorder, say)
    if recorder == "perf":
        status = run_with_perf(path, perf, mode, preset, target, say)
    else:
        status = run_builtin_subprocess(path, mode, target)
    collect_perf_maps(path)
    write_manifest(path, finished=time.time(), exit_status=status)
    say(f"etwtrace: capture saved to {path}")
    return status
