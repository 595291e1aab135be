"""Recording sessions, the equivalent of `wpr -start` / `wpr -stop`:

    python -m etwtrace record start PATH [--preset NAME] [--recorder auto|perf|builtin] [--ring SIZE] [--max-size SIZE]
    python -m etwtrace record start PATH --sampled [--rate HZ] [--max-size SIZE]
    python -m etwtrace record start PATH --sampled --every SECONDS [--keep SIZE] [--rate HZ]
    python -m etwtrace record status | snapshot [PATH] | stop

`start` runs a small background process (the session's daemon) that holds
the session: a lock, PATH, and perf when perf records.  It announces the
session in a file every traced process looks at (src/etwtrace/_native/
session.h): root's session in /run/etwtrace (ETWTRACE_SESSION_DIR), which
processes of every user join, or a user's own in /tmp/etwtrace-UID, which
only that user's processes join.  While the session runs the processes
record into PATH/.session/ctf/pid-PID (each its own directory, 0700: in
root's session the ctf directory is sticky and writable by all, readable
by none but root).  `stop` withdraws the announcement (the processes stop
recording within ETW_SESSION_POLL_MS and run on), stops the daemon and
perf, and turns what was recorded into a capture at PATH: the traces of
this user's processes that ended are finished in place, the others are
copied as they are (another user's only after checks, from hard links
root made: see _gather_from), and the staging directory goes, so a
process that writes late cannot change the capture.  `snapshot` makes the
same copy into another directory while the session goes on (in memory
mode, what the rings hold now).

A sampled session (--sampled) announces nothing: its daemon runs the BPF
sampler (_sampler.Sampling), finds the machine's CPython processes itself
(sampled/finder.py) and writes each one's samples into the same staging directory,
within the session's budget (_budget.WriterBudget), so status, snapshot and
stop treat its traces as any other.  With --every it writes no trace: it
counts the samples in memory and writes one pprof profile per interval
into PATH/profiles (profiles.py); snapshot (SIGUSR1 to the daemon) ends
the interval that runs at once, stop writes the last one."""

import errno
import fcntl
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time

from ..trace import (budget as _budget, children as _children, ctf as _ctf, manifest as _manifest,
                     safefs as _safefs)
from . import launcher as _launcher, perf as _perf, profiles as _profiles
from .. import env as _env, sizes as _sizes
from ..sampled import finder as _finder, sampler as _sampler
from ..trace import capture as _capdir
from ..trace.capture import CaptureError
from ..errors import Error, UsageError

ANNOUNCE = "session"      # the file the traced processes read (session.c)
STATE = "state.json"      # the session as its daemon describes it
LOCK = "lock"             # held by the daemon for the session's life
STAGING = ".session"      # inside PATH while the session runs
POLL_SECONDS = 0.2        # session.c's ETW_SESSION_POLL_MS
# Sampled processes whose native frames a manifest names one by one; past
# this they are counted by how they got them (a session left running among
# processes coming and going keeps a bounded record).
NATIVE_FRAMES_KEPT = 1000
PACKET_BYTES = 64 * 1024  # a ring holds whole packets (trace_format.h)
MIN_RING = 2 * PACKET_BYTES
MAX_RING = 4 << 30
DAEMON_TIMEOUT = 60       # seconds `start` waits for the daemon to be ready
PERF_STOP_TIMEOUT = 300   # seconds `stop` waits for perf to write out


class SessionError(Error):
    """A session command cannot do what was asked (one line)."""


# ---- where a session lives ----

class Place:
    """The session directory of whoever runs the command: root's (the
    machine's session) or the user's own."""

    def __init__(self):
        self.system = os.geteuid() == 0
        if self.system:
            self.dir = _env.text(_env.SESSION_DIR) or "/run/etwtrace"
        else:
            self.dir = f"/tmp/etwtrace-{os.geteuid()}"

    def path(self, name):
        return os.path.join(self.dir, name)

    def prepare(self):
        """Creates the directory, or checks the one there is ours and
        writable by no one else."""
        mode = 0o755 if self.system else 0o700
        try:
            os.makedirs(self.dir, mode=mode, exist_ok=True)
            st = os.lstat(self.dir)
        except OSError as ex:
            raise SessionError(f"cannot create {self.dir}: {ex.strerror}") from None
        forbidden = 0o022 if self.system else 0o077
        if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & forbidden):
            raise SessionError(f"{self.dir} is not a private directory of this user; "
                               "refusing to announce a session through it")

    def state(self):
        try:
            with open(self.path(STATE), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def daemon_alive(self):
        """Whether a session's daemon holds the lock."""
        try:
            fd = os.open(self.path(LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def remove(self, name):
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass


def parse_size(text):
    """Bytes of a --ring SIZE (per thread; _sizes.parse_size's forms)."""
    try:
        size = _sizes.parse_size(text, "--ring")
    except _sizes.SizeError as ex:
        raise UsageError(str(ex)) from None
    if not MIN_RING <= size <= MAX_RING:
        raise UsageError(f"--ring {text}: the size must be between 128K and 4G per thread")
    return size


def _when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds // 60 % 60} min"


def _describe(state):
    limit = state.get("max_size") or 0
    limit = f", at most {_sizes.size_text(limit)}" if limit else ""
    if state.get("sampled") and state.get("every"):
        return (f"hook-free sampling of every CPython 3.11 and 3.13+ process at "
                f"{state['sampled']} Hz (BPF), a profile every {state['every']:g} s into "
                f"{os.path.join(state.get('path', ''), _profiles.DIRECTORY)} (the oldest "
                f"removed past {_sizes.size_text(state.get('keep') or 0)})")
    if state.get("sampled"):
        return (f"hook-free sampling of every CPython 3.11 and 3.13+ process at "
                f"{state['sampled']} Hz (BPF){limit}, capture {state.get('path')}")
    ring = state.get("ring") or 0
    mode = f", memory mode ({_sizes.size_text(ring)} per thread)" if ring else ""
    return (f"recorder {state.get('recorder')}, preset {state.get('preset')}{mode}{limit}, "
            f"capture {state.get('path')}")


def _joined(state):
    """The processes that have recorded into the session so far (None when
    this user may not look)."""
    ctf_root = os.path.join(state.get("path", ""), STAGING, "ctf")
    try:
        return len(_ctf.trace_dirs(ctf_root))
    except OSError:
        return None


def _unreachable_by_others(path):
    """The first directory on the way to `path` that other users cannot
    pass (their processes could not join), or None."""
    parent = os.path.dirname(path)
    while True:
        try:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        except OSError:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


# ---- commands ----

def start(path, preset_name, requested_recorder, ring, say, sampled=0, max_size=0,
          every=0, keep=0):
    place = Place()
    place.prepare()
    if place.daemon_alive():
        state = place.state() or {}
        raise SessionError(f"a recording session is already running (since "
                           f"{_when(state.get('started', 0))}, into {state.get('path')}); "
                           "stop it first with: python -m etwtrace record stop")
    _recover_stale(place, say)
    if sampled:
        if ring or requested_recorder != "auto":
            left_out = "--ring" if ring else "--recorder"
            raise SessionError(f"--sampled records with its BPF program: leave out {left_out}")
        if not place.system:
            raise SessionError("--sampled samples every Python process on the machine, "
                               "which needs root")
        try:
            _sampler.load_sampler()
            _sampler.check_privileges()
        except _sampler.SampledError as ex:
            raise SessionError(str(ex)) from None
    path = _capdir.CaptureDir(path).check().path
    preset = _launcher.load_preset(preset_name)
    if ring and requested_recorder == "perf":
        raise SessionError("memory mode (--ring) records with the built-in recorder; "
                           "leave out --recorder perf")
    if sampled:
        recorder = "bpf"
    elif ring:
        recorder = "builtin"
    else:
        recorder, _ = _launcher.choose_recorder(requested_recorder, say, system_wide=True)
    if place.system and not sampled:     # (a sampled session's daemon writes alone)
        blocked = _unreachable_by_others(path)
        if blocked is not None:
            say(f"etwtrace: warning: other users cannot pass {blocked}, so only root's "
                "processes can record into this session")
    request = {"path": path, "preset": preset.name, "recorder": recorder, "ring": ring,
               "sampled": sampled, "dir": place.dir, "max_size": max_size,
               "every": every, "keep": keep}
    try:
        log = os.open(place.path("daemon.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            daemon, answers = _fork_daemon(json.dumps(request), log)
        finally:
            os.close(log)
    except OSError as ex:
        raise SessionError(f"cannot start the session's background process: {ex.strerror}") from None
    answer = _read_line(answers, DAEMON_TIMEOUT)
    answers.close()
    if answer != "ready":
        if not answer and os.waitpid(daemon, os.WNOHANG) == (0, 0):
            os.kill(daemon, signal.SIGKILL)
        raise SessionError(answer[len("error: "):] if answer.startswith("error: ")
                           else "the session's background process did not start")
    state = place.state() or {}
    for note in state.get("notes", ()):
        say(note)
    say(f"etwtrace: recording session started ({_describe(state)}); "
        "stop it with: python -m etwtrace record stop")
    return 0


def _fork_daemon(request_text, log):
    """Starts the session's background process (daemon_main) as a fork of
    this one, in a session of its own, with stdin /dev/null, stdout a
    pipe for its answer and stderr `log`, and no other descriptor of
    ours.  A fork, not a new interpreter: its modules are imported
    already, which is about a quarter of an --every session's own CPU
    over 21 s.  Returns (its pid, the pipe's reading end)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(write_end, 1)
            os.dup2(log, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            status = daemon_main(request_text)
        except BaseException as ex:     # said in daemon.log; never back into `start`
            try:
                os.write(2, f"etwtrace: the session's daemon failed: {ex!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, os.fdopen(read_end, "rb", buffering=0)


def _read_line(pipe, timeout):
    import select
    ready, _, _ = select.select([pipe], [], [], timeout)
    if not ready:
        return ""
    return pipe.readline().decode(errors="replace").strip()


def status(say):
    place = Place()
    state = place.state()
    if place.daemon_alive() and state:
        if state.get("every"):
            return _profiles_status(state, say)
        joined = _joined(state)
        count = "an unknown number of" if joined is None else f"{joined}"
        verb = "sampled" if state.get("sampled") else "joined"
        say(f"etwtrace: a recording session is running since {_when(state['started'])} "
            f"(for {_duration(time.time() - state['started'])}): {_describe(state)}; "
            f"{count} process{'es' if joined != 1 else ''} {verb}")
        size = _size_line(state)
        if size:
            say(f"etwtrace: {size}")
        if state.get("perf_failed"):
            say(f"etwtrace: warning: perf stopped early: {state['perf_failed']}")
        return 0
    if _recover_stale(place, say):
        return 1
    say("etwtrace: no recording session is running")
    return 1


def _profiles_status(state, say):
    """status of a session that writes a profile per interval."""
    now = state.get("processes_now", 0)
    say(f"etwtrace: a recording session is running since {_when(state['started'])} "
        f"(for {_duration(time.time() - state['started'])}): {_describe(state)}; "
        f"{now} process{'es' if now != 1 else ''} sampled now")
    written, kept = state.get("profiles_written", 0), state.get("profiles_kept", 0)
    removed = f", {kept} kept (the oldest removed past --keep)" if kept < written else ""
    lost = state.get("samples_lost", 0)
    say(f"etwtrace: interval {state['every']:g} s; {written} profile{'s' if written != 1 else ''}"
        f" written{removed}, {_sizes.size_text(state.get('profiles_bytes', 0))} on disk; "
        f"{state.get('samples_per_second', 0):,.0f} samples a second; "
        + (f"{lost:,} samples lost (the sampler's ring buffer was full)" if lost
           else "no sample lost"))
    if state.get("profiles_not_written"):
        say(f"etwtrace: warning: {state['profiles_not_written']} profiles were not written "
            "(the file system's free space was down to etwtrace's reserve)")
    return 0


def _size_line(state):
    """How big the session's capture is so far (the bytes its budget
    counts: its traces' packets, perf.data), its limit, and why it stopped
    recording if it did; None when this user cannot see it."""
    staging = os.path.join(state.get("path", ""), STAGING, "ctf")
    budget = _budget.open_budget(staging)
    if budget is None:
        return None
    try:
        used, limit, info = budget.used, budget.limit, budget.info()
    finally:
        budget.close()
    limit = f" of its {_sizes.size_text(limit)} limit (--max-size)" if limit else ""
    line = f"the capture holds {_sizes.size_text(used)} so far{limit}"
    lost = _budget.loss_text({}, info)
    return f"{line}; {lost}" if lost else line


def stop(say):
    place = Place()
    state = place.state()
    alive = place.daemon_alive()
    if not alive:
        if _recover_stale(place, say):
            return 0
        raise SessionError("no recording session is running")
    # Processes stop recording at their next look (ETW_SESSION_POLL_MS).
    place.remove(ANNOUNCE)
    pid = state.get("daemon") if state else None
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    began = time.monotonic()
    told = False
    while place.daemon_alive():
        waited = time.monotonic() - began
        if waited > PERF_STOP_TIMEOUT:
            raise SessionError(f"the session's background process (pid {pid}) did not stop "
                               f"within {PERF_STOP_TIMEOUT} s; its recording is left in "
                               f"{state.get('path')}")
        if not told and waited > 2:
            say("etwtrace: waiting for perf to write out its recording ...")
            told = True
        time.sleep(0.05)
    state = place.state() or state
    _finish(place, state, say)
    return 0


def snapshot(target, say):
    place = Place()
    state = place.state()
    if not (place.daemon_alive() and state):
        if _recover_stale(place, say):
            return 1
        raise SessionError("no recording session is running")
    if state.get("every"):
        return _profile_now(place, state, target, say)
    session_path = state["path"]
    if target is None:
        where = os.path.dirname(session_path)
    else:
        where = os.path.dirname(os.path.abspath(target))
    staged = _budget.tree_size(os.path.join(session_path, STAGING, "ctf"))
    if not _budget.fits(where, staged):
        raise SessionError(f"a snapshot of about {_sizes.size_text(staged)} would leave the file "
                           f"system of {where} less free space than the reserve etwtrace "
                           "leaves free (5% of its size, at most 1 GiB)")
    if target is None:
        # A name no one can have made first (another user could, in /tmp,
        # for any name that can be told in advance).
        directory = _capdir.CaptureDir.unique(
            f"{session_path}-snapshot-{time.strftime('%Y%m%d-%H%M%S')}-")
    else:
        directory = _capdir.CaptureDir(target)
        if directory.path == session_path or directory.path.startswith(session_path + os.sep):
            raise SessionError(f"the snapshot cannot go into the session's capture {session_path}")
        directory.open()
    target = directory.path
    try:
        session_fd = _open_session_dir(state)
        try:
            final = os.path.join(target, "ctf")
            os.mkdir(final, 0o700)
            _, owners = _gather_from(session_fd, session_path, final, say, stopping=False)
        finally:
            os.close(session_fd)
        _launcher.collect_perf_files(target, set(owners), owners)
        losses = _capdir.recorded_losses(target)
        kind = (dict(mode="sampled", recorder="bpf", rate=state["sampled"])
                if state.get("sampled") else dict(recorder="builtin"))
        info = dict(tool="etwtrace", format=1, **kind, preset=state.get("preset"),
                    session=state.get("id"), snapshot=True, ring=state.get("ring", 0),
                    started=state.get("started"), finished=time.time(),
                    processes=len(owners), python=sys.version.split()[0])
        if losses:
            info["events_lost"] = {str(p): n for p, n in losses.items()}
        directory.write_manifest(**info)
    finally:
        directory.close()
    extra = ("; perf's samples go into the capture at record stop"
             if state.get("recorder") == "perf" else "")
    say(f"etwtrace: snapshot of {len(owners)} process{'es' if len(owners) != 1 else ''} "
        f"saved to {target}{extra}")
    return 0


def _profile_now(place, state, target, say):
    """snapshot of a session that writes a profile per interval: the
    daemon ends the interval that runs now and writes its profile."""
    if target is not None:
        raise SessionError("this session writes its profiles into "
                           f"{os.path.join(state['path'], _profiles.DIRECTORY)}: "
                           "leave out the snapshot's PATH")
    before = state.get("snapshots", 0)
    try:
        os.kill(state["daemon"], signal.SIGUSR1)
    except (ProcessLookupError, KeyError):
        raise SessionError("no recording session is running") from None
    deadline = time.monotonic() + DAEMON_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = place.state() or {}
        if now.get("snapshots", 0) > before:
            if now.get("last_profile"):
                say(f"etwtrace: profile of the interval so far written to {now['last_profile']}")
                return 0
            raise SessionError("the profile was not written (the file system's free space "
                               "is down to etwtrace's reserve)")
        if not place.daemon_alive():
            break
    raise SessionError("the session's background process did not write the profile")


def _open_session_dir(state):
    """A descriptor of the session's PATH: the very directory it began in
    (no symlink, this user's), or SessionError."""
    path = state["path"]
    try:
        fd = _safefs.open_dir(path)
    except OSError as ex:
        raise SessionError(f"cannot open the session's capture directory {path}: "
                           f"{ex.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or (state.get("path_id")
                                     and [st.st_dev, st.st_ino] != list(state["path_id"])):
        os.close(fd)
        raise SessionError(f"{path} is not the directory the session began in (it was "
                           "replaced); refusing to use it")
    return fd


def _recover_stale(place, say):
    """Finishes a session whose daemon died (killed, machine trouble):
    withdraws its announcement and turns its recording into a capture.
    Returns whether there was one."""
    state = place.state()
    if state is None or place.daemon_alive():
        return False
    place.remove(ANNOUNCE)
    if not state.get("path"):
        place.remove(STATE)
        return False
    say(f"etwtrace: the recording session's background process (pid {state.get('daemon')}) "
        f"had died; finishing what it recorded into {state['path']}")
    time.sleep(2 * POLL_SECONDS)
    _finish(place, state, say)
    return True


def _finish(place, state, say):
    """Turns the staging directory into the capture at the session's PATH
    (see the module's docstring) and ends the session."""
    path = state["path"]
    if state.get("every"):
        return _finish_profiles(place, state, say)
    time.sleep(2 * POLL_SECONDS)    # the processes' last look
    directory = _capdir.CaptureDir(path)
    try:
        directory.hold(state.get("path_id"))
    except _capdir.ReplacedError as ex:
        place.remove(STATE)     # (nothing of the session's is left to finish)
        raise SessionError(str(ex)) from None
    except CaptureError as ex:
        raise SessionError(str(ex)) from None
    try:
        budget_info = _budget_info(path)
        processes, owners = _collect_traces(directory, say)
        _launcher.copy_perf_files(path, set(owners), owners)
        perf = _perf.find_perf()
        if not os.path.isfile(os.path.join(path, "perf.data")):
            pass
        elif perf is None:
            say("etwtrace: perf is gone; perf.data is kept but not scripted")
        else:
            try:       # (makes the jitted images)
                _perf.finish_data(directory, perf, state.get("callgraph"), set(owners), say)
            except _perf.PerfError as ex:
                say(f"etwtrace: {ex}; the built-in trace is complete")
        _launcher.index_perf_files(path)
        losses = _capdir.recorded_losses(path)
        untraced = _children.collect(path)
        # (What the daemon wrote: a sampled session's counts.)
        manifest = directory.read_manifest()
        info = {"finished": time.time(), "processes": processes,
                "process_users": {str(p): u for p, u in sorted(owners.items())},
                _children.MANIFEST_KEY: untraced}
        if losses:
            info["events_lost"] = {str(p): n for p, n in losses.items()}
        info.update(budget_info)
        if state.get("perf_failed"):
            info["perf_failed"] = state["perf_failed"]
        try:
            directory.write_manifest(**info)
        except CaptureError as ex:
            say(f"etwtrace: {ex}")
        os.fchmod(directory.fd, 0o700)
    finally:
        directory.close()
        place.remove(STATE)
    lost = _budget.loss_text(losses, dict(manifest, **info))
    if lost:
        say(f"etwtrace: {lost}; the trace holds every event recorded before")
    if untraced:
        say(f"etwtrace: {_children.describe(untraced)}")
    say(f"etwtrace: session saved to {path} ({processes} process{'es' if processes != 1 else ''})")


def _finish_profiles(place, state, say):
    """Ends a session that wrote a profile per interval: its daemon wrote
    the last one and the manifest."""
    path = state["path"]
    place.remove(STATE)
    try:
        manifest = _manifest.load_manifest(path)
    except _manifest.TraceError:
        manifest = {}
    profiles = os.path.join(path, _profiles.DIRECTORY)
    try:
        kept = [n for n in os.listdir(profiles) if n.endswith(_profiles.SUFFIX)]
        size = sum(os.path.getsize(os.path.join(profiles, n)) for n in kept)
    except OSError:
        kept, size = [], 0
    if "finished" not in manifest:
        say("etwtrace: the samples of the interval that ran when the background process "
            "died were lost with it (the profiles written before are kept)")
    lost = manifest.get("samples_lost", 0)
    if lost:
        say(f"etwtrace: {lost:,} samples were lost (the sampler's ring buffer was full)")
    say(f"etwtrace: session ended: {len(kept)} profile{'s' if len(kept) != 1 else ''} "
        f"({_sizes.size_text(size)}) in {profiles}")


def _budget_info(path):
    """What the manifest says of the session's budget (its limit, why it
    stopped recording), read from the staging directory."""
    budget = _budget.open_budget(os.path.join(path, STAGING, "ctf"))
    if budget is None:
        return {}
    try:
        return budget.info()
    finally:
        budget.close()


def _collect_traces(directory, say):
    """Moves or copies each process's trace from the staging directory
    into PATH/ctf (see _gather_from), then removes the staging directory.
    Returns (how many, {pid: owner uid})."""
    path = directory.path
    final = os.path.join(path, "ctf")
    _launcher.own_directory(final)
    count, owners = _gather_from(directory.fd, path, final, say, stopping=True)
    try:
        _safefs.remove_tree(directory.fd, STAGING)
    except OSError as ex:
        say(f"etwtrace: warning: cannot remove {os.path.join(path, STAGING)}: {ex.strerror}")
    return count, owners


def _gather_from(session_fd, session_path, final, say, stopping):
    """Writes the trace of each process in the session's staging directory
    into the directory `final` (ours, new or empty): a copy, made complete
    with what its rings hold (see _ctf.copy_trace); at stop, the trace of
    an ended process of this user is moved instead (and made complete in
    place).  At stop, the staging directory is first closed to processes
    (0700): none adds a trace while it is read.

    In root's session any user may make a pid-PID there.  Another user's
    trace is read only from hard links made in a private directory of
    ours (_safefs.pin), after checking that pid-PID is a directory of that
    user holding only regular files of that user, and, while process PID
    runs, that it runs as that user; anything else is skipped with a
    one-line warning.  Root's copy is made of new files: no descriptor
    another user holds reaches it.  Returns (traces kept, {pid: the
    owner's uid})."""
    me = os.geteuid()
    staging_path = os.path.join(session_path, STAGING)
    ctf_path = os.path.join(staging_path, "ctf")
    owners = {}
    count = 0
    try:
        staging_fd = _safefs.open_dir(STAGING, session_fd)
    except FileNotFoundError:
        return count, owners
    try:
        try:
            ctf_fd = _safefs.open_dir("ctf", staging_fd)
        except FileNotFoundError:
            return count, owners
        pins = tempfile.mkdtemp(prefix=".pins-", dir=staging_path)
        try:
            if stopping:
                os.fchmod(ctf_fd, 0o700)
            for pid, name in _ctf.trace_names(os.listdir(ctf_fd)):
                where = os.path.join(ctf_path, name)
                try:
                    fd = _safefs.open_dir(name, ctf_fd)
                except OSError as ex:
                    why = ("it is not a directory" if ex.errno in (errno.ELOOP, errno.ENOTDIR)
                           else ex.strerror)
                    say(f"etwtrace: warning: skipped {where}: {why}")
                    continue
                try:
                    owner = os.fstat(fd).st_uid
                    source = where
                    if owner != me:
                        source = os.path.join(pins, name)
                        problem = _pin(fd, pid, owner, source)
                        if problem is not None:
                            say(f"etwtrace: warning: skipped {where}: {problem}")
                            continue
                    if not _ctf.began(source):
                        continue
                    target = os.path.join(final, name)
                    if stopping and owner == me and not _ctf.alive(pid):
                        _ctf.finalize_trace(source, lambda size: _budget.fits(session_path, size))
                        os.rename(name, target, src_dir_fd=ctf_fd)
                    else:
                        _ctf.copy_trace(source, target)
                    owners.setdefault(pid, owner)
                    count += 1
                except (OSError, _ctf.TraceError) as ex:
                    say(f"etwtrace: warning: process {pid}'s trace could not be kept: {ex}")
                finally:
                    os.close(fd)
        finally:
            os.close(ctf_fd)
            _safefs.remove_tree(staging_fd, os.path.basename(pins))
    finally:
        os.close(staging_fd)
    return count, owners


def _pin(fd, pid, owner, pinned):
    """Pins another user's trace directory `fd` into the new directory
    `pinned` (_safefs.pin); returns None, or why the trace is skipped."""
    problem = _not_of_process(pid, owner)
    if problem is not None:
        return problem
    os.mkdir(pinned, 0o700)
    pinned_fd = _safefs.open_dir(pinned)
    try:
        return _safefs.pin(fd, pinned_fd, owner)
    finally:
        os.close(pinned_fd)


def _not_of_process(pid, owner):
    """Why a trace directory of user `owner` cannot be process pid's: the
    process runs, as another user.  None when it may be (or has ended)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            line = next((l for l in f if l.startswith("Uid:")), "")
        uids = [int(u) for u in line.split()[1:]]
    except (OSError, ValueError):
        return None
    if not uids or owner in uids:
        return None
    return f"it belongs to uid {owner}, but process {pid} runs as uid {uids[0]}"


# ---- the daemon ----

def daemon_main(request_text):
    """The session's background process: prints "ready" or "error: ..."
    on stdout (read by `start`), then holds the session until SIGTERM."""
    try:
        request = json.loads(request_text)
        place = Place()
        if place.dir != request["dir"]:
            raise SessionError("the session directory changed under the daemon")
    except (ValueError, KeyError, TypeError, SessionError) as ex:
        print(f"error: bad daemon request: {ex}", flush=True)
        return 2
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    # SIGUSR1: snapshot of a session with --every (its profile now).
    signal.pthread_sigmask(signal.SIG_BLOCK, signals | {signal.SIGUSR1})
    try:
        lock_fd = _take_lock(place)
        session = _Session(place, request)
        session.begin()
    except (SessionError, CaptureError, _perf.PerfError) as ex:
        print(f"error: {ex}", flush=True)
        return 1
    except Exception as ex:     # the sampler's errors, among others: said, not lost
        print(f"error: {type(ex).__name__}: {ex}", flush=True)
        return 1
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)     # `start` has its answer (its stderr is daemon.log)
    try:
        while True:
            if session.sampling is not None:
                # The signals stay pending while it waits for samples
                # (at most WAIT_MS).
                session.wait_for_samples()
                received = signal.sigtimedwait(signals | {signal.SIGUSR1}, 0)
            else:
                received = signal.sigtimedwait(signals, 1.0)
            if received is not None and received.si_signo == signal.SIGUSR1:
                session.tick(profile_now=True)
                continue
            if received is not None:
                break
            session.tick()
    finally:
        session.end()
    os.close(lock_fd)
    return 0


def _take_lock(place):
    try:
        fd = os.open(place.path(LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SessionError("a recording session is already running") from None
    except OSError as ex:
        raise SessionError(f"cannot lock {place.path(LOCK)}: {ex.strerror}") from None
    return fd


class _Session:
    def __init__(self, place, request):
        self.place = place
        self.request = request
        self.path = request["path"]
        self.perf_proc = None
        self.restore_max_stack = False
        self.probe = None
        self.perf = None
        self.state = None
        self.sampling = None
        self.budget = None
        self.guard = None
        self.control = None
        self.profiles = None
        self.snapshots = 0
        self.next_state = 0.0
        self.perf_flush = _budget.PERF_FLUSH     # (perf started: _start_perf)

    def begin(self):
        place, request, path = self.place, self.request, self.path
        self.directory = _capdir.CaptureDir(path).open()
        if request.get("every"):
            self._begin_profiles()
            return
        staging = os.path.join(path, STAGING)
        max_size = request.get("max_size") or 0
        # Every user's processes pass through PATH and .session (not list
        # them) and each makes its own pid-PID in ctf; a sampled session's
        # daemon writes alone.
        shared = place.system and not request.get("sampled")
        try:
            fd = self.directory.fd
            os.mkdir(STAGING, 0o700, dir_fd=fd)
            staging_fd = _safefs.open_dir(STAGING, fd)
            try:
                os.mkdir("ctf", 0o700, dir_fd=staging_fd)
                # Before others may write in ctf: read by all, written by root.
                self.budget = _budget.create(os.path.join(staging, "ctf"), max_size,
                                             others_read=shared)
                if shared:
                    os.chmod("ctf", 0o1733, dir_fd=staging_fd)
                    os.fchmod(staging_fd, 0o711)
                    os.fchmod(fd, 0o711)
            finally:
                os.close(staging_fd)
        except OSError as ex:
            raise SessionError(f"cannot prepare {staging}: {ex.strerror}") from None
        except _budget.BudgetError as ex:
            raise SessionError(str(ex)) from None
        preset = _launcher.load_preset(request["preset"])
        session_id = os.urandom(8).hex()
        self.state = {
            "id": session_id, "path": path, "preset": preset.name,
            "recorder": request["recorder"], "ring": request["ring"], "started": time.time(),
            "daemon": os.getpid(), "system": place.system, "max_size": max_size,
            "path_id": list(self.directory.identity),
        }
        self.directory.write_manifest(format=1, tool="etwtrace", session=session_id,
                                      recorder=request["recorder"], preset=preset.name,
                                      ring=request["ring"], started=self.state["started"],
                                      python=sys.version.split()[0],
                                      **({"max_size": max_size} if max_size else {}))
        if request["recorder"] == "perf":
            self._start_perf(preset)
        self.guard = _budget.Guard(
            self.budget, path, lambda text: print(text, file=sys.stderr, flush=True),
            perf_data=os.path.join(path, "perf.data") if self.perf_proc else None,
            control=self.control, others=os.path.join(staging, "ctf") if shared else None,
            memory_mode=bool(request["ring"]), perf_flush=self.perf_flush)
        self.guard.start()
        if request.get("sampled"):
            # Sampled processes run without hooks: no announcement for
            # traced processes to join (their events would mix with the
            # samples); the daemon finds the Python processes itself.
            self._start_sampling(request["sampled"], staging)
            self._write(place.path(STATE), json.dumps(self.state, indent=2), 0o644)
            return
        self._write(place.path(STATE), json.dumps(self.state, indent=2), 0o644)
        announce = (f"etwtrace-session=1\nid={session_id}\ncapture={staging}\n"
                    f"ring={request['ring']}\n")
        self._write(place.path(ANNOUNCE), announce, 0o644)

    def _begin_profiles(self):
        """A session that writes a profile per interval (--every): no
        trace, so no staging directory, budget or guard; each profile is
        written whole within the file system's reserve (profiles.py)."""
        request = self.request
        session_id = os.urandom(8).hex()
        self.state = {
            "id": session_id, "path": self.path, "preset": request["preset"],
            "recorder": "bpf", "ring": 0, "started": time.time(), "daemon": os.getpid(),
            "system": self.place.system, "max_size": 0, "every": request["every"],
            "keep": request["keep"], "path_id": list(self.directory.identity)}
        self.directory.write_manifest(format=1, tool="etwtrace", session=session_id,
                                      started=self.state["started"],
                                      python=sys.version.split()[0],
                                      every=request["every"], keep=request["keep"])
        self._start_sampling(request["sampled"], None)
        self._write_state()

    def _write_state(self):
        if self.profiles is not None:
            self.state.update(self.profiles.status(), snapshots=self.snapshots)
        self._write(self.place.path(STATE), json.dumps(self.state), 0o644)
        self.next_state = time.monotonic() + _sampler.SCAN_SECONDS

    @staticmethod
    def _write(target, text, mode):
        """Replaces `target` at once (a reader sees the old or the new)."""
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, mode)
            os.rename(tmp, target)
        except OSError as ex:
            raise SessionError(f"cannot write {target}: {ex.strerror}") from None

    def _start_perf(self, preset):
        from .. import _etwtrace
        perf = _perf.find_perf()
        if perf is None:
            raise SessionError("perf is not installed (Debian: apt-get install linux-perf)")
        self.perf = perf
        callgraph = _perf.choose_callgraph(preset)
        if preset.stack_sample_probe:
            self.probe, _reason = _perf.add_stack_sample_probe(perf, _etwtrace.__file__)
        data = os.path.join(self.path, "perf.data")
        try:
            self.control = _budget.perf_control(self.place.dir)
        except OSError as ex:
            raise SessionError(f"cannot make perf's control FIFO in {self.place.dir}: "
                               f"{ex.strerror}") from None
        limit = self.budget.limit if self.budget is not None else 0
        cmd = _perf.record_command(perf, data, preset, callgraph, self.probe,
                                   self.control, limit) + ["-a"]
        self.perf_flush = _perf.ring_bytes(_perf.ring_pages(preset, callgraph, limit))
        notes = []      # said by `start` (from the state), and in daemon.log
        self.restore_max_stack = _perf.raise_max_stack(callgraph, notes.append)
        for note in notes:
            _say_in_log(note)
        try:
            self._run_perf(cmd, data)
        except BaseException:
            self._stop_perf()
            raise
        self.state.update(callgraph=callgraph, perf_command=cmd, notes=notes)
        self.directory.write_manifest(callgraph=callgraph, perf_command=cmd)

    def _run_perf(self, cmd, data):
        # perf's messages go to a file: a pipe nobody reads would stop it.
        log_path = os.path.join(self.place.dir, "perf.log")
        try:
            log = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            try:
                self.perf_proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    preexec_fn=_perf_dies_with_daemon)
            finally:
                os.close(log)
        except OSError as ex:
            raise SessionError(f"cannot run perf: {ex.strerror}") from None
        # perf writes its header once its events are set up.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.perf_proc.poll() is not None:
                with open(log_path, "rb") as f:
                    error = f.read(1 << 16).decode(errors="replace").strip()
                lines = [l.strip() for l in error.splitlines() if l.strip()]
                raise SessionError("perf could not record: " + (
                    lines[0] if lines else f"exit code {self.perf_proc.returncode}"))
            if os.path.isfile(data) and os.path.getsize(data) > 0:
                break
            time.sleep(0.05)

    def _start_sampling(self, rate, staging):
        try:
            self.sampling = _sampler.Sampling(rate)
        except _sampler.SampledError as ex:
            raise SessionError(str(ex)) from None
        if self.request.get("every"):
            self.profiles = _profiles.IntervalProfiles(
                self.sampling, self.path, self.request["every"], self.request["keep"], rate,
                _say_in_log, self.directory.fd)
        else:
            self.sampling.record_into(staging, self.budget, _say_in_log)
        self.finder = _finder.PythonFinder(exclude={os.getpid()})
        self.native_frames = {}         # pid -> how its native frames are had
        self.native_frames_more = {}    # past NATIVE_FRAMES_KEPT: how -> processes
        self.waiting = select.poll()
        self.waiting.register(self.sampling.fileno(), select.POLLIN)
        self.next_scan = 0.0
        self.state.update(sampled=rate, recorder="bpf")
        self.directory.write_manifest(mode="sampled", recorder="bpf", rate=rate)
        self._scan()

    def _scan(self):
        quiet = []

        def add(pid):
            target = self.sampling.add(pid)
            how = _sampler.describe_native_frames(target, quiet.append)
            if str(pid) in self.native_frames or len(self.native_frames) < NATIVE_FRAMES_KEPT:
                self.native_frames[str(pid)] = how
            else:
                self.native_frames_more[how] = self.native_frames_more.get(how, 0) + 1

        self.finder.scan(add, self.sampling.remove)
        self.next_scan = time.monotonic() + _sampler.SCAN_SECONDS

    def wait_for_samples(self):
        wait = min(_sampler.WAIT_MS if self.profiles is None else _profiles.WAIT_MS,
                   (self.next_scan - time.monotonic()) * 1000)
        if self.profiles is not None:
            wait = min(wait, self.profiles.due_in() * 1000)
        self.waiting.poll(max(wait, 0))

    def tick(self, profile_now=False):
        """After each wait: the sampler's samples into the trace (or the
        interval's counts), each second a look for new and ended Python
        processes, and with --every a profile at each interval's end
        (`profile_now`: a snapshot's, at once)."""
        self.check_perf()
        if self.sampling is None:
            return
        self.sampling.drain()
        if time.monotonic() >= self.next_scan:
            self.sampling.recorder.flush()      # what a snapshot copies
            self._scan()
        if self.profiles is not None:
            if profile_now or self.profiles.due_in() <= 0:
                self._write_profile()
                self.snapshots += profile_now
                self._write_state()
            elif time.monotonic() >= self.next_state:
                self._write_state()     # (what status shows)

    def _write_profile(self):
        try:
            self.profiles.write()
        except OSError as ex:
            _say_in_log(f"etwtrace: cannot write a profile: {ex.strerror}")

    def check_perf(self):
        if self.perf_proc is not None and self.perf_proc.poll() is not None \
                and not self.state.get("perf_failed"):
            self.state["perf_failed"] = f"perf exited with status {self.perf_proc.returncode}"
            try:
                self._write(self.place.path(STATE), json.dumps(self.state, indent=2), 0o644)
            except SessionError:
                pass

    def end(self):
        self.place.remove(ANNOUNCE)
        if self.guard is not None:
            self.guard.finish()
        if self.profiles is not None:
            self._end_profiles()
        elif self.sampling is not None:
            self._end_sampling()
        self._stop_perf()
        if self.control:
            self.place.remove(_budget.CONTROL)
        if self.budget is not None:
            self.budget.close()
        self.directory.close()

    def _end_profiles(self):
        """The last (partial) interval's profile, and the manifest."""
        lost = self.profiles.close()
        self._write_profile()
        status = self.profiles.status()
        info = {key: status[key] for key in ("profiles_written", "profiles_kept",
                                            "profiles_removed", "profiles_not_written",
                                            "samples")}
        info.update(finished=time.time(), native_frames=self.native_frames,
                    samples_lost=lost, processes=self.sampling.processes)
        self._write_sampling_manifest(info)

    def _stop_perf(self):
        if self.perf_proc is not None and self.perf_proc.poll() is None:
            self.perf_proc.send_signal(signal.SIGINT)
            try:
                self.perf_proc.wait(PERF_STOP_TIMEOUT - 10)
            except subprocess.TimeoutExpired:
                self.perf_proc.kill()
                self.perf_proc.wait()
        if self.restore_max_stack:
            _perf.restore_max_stack(_say_in_log)
            self.restore_max_stack = False
        if self.probe:
            _perf.remove_stack_sample_probe(self.perf)
            self.probe = None

    def _end_sampling(self):
        dropped = self.sampling.close()
        info = {"samples": self.sampling.samples, "native_frames": self.native_frames}
        if dropped:
            info["samples_lost"] = dropped
        info.update(self.sampling.recorder.budget.info())
        self._write_sampling_manifest(info)

    def _write_sampling_manifest(self, info):
        """The end of a sampled session's manifest: `info` and what the
        sampler saw of native stacks and of processes it could not read."""
        if self.native_frames_more:
            info["native_frames_more"] = self.native_frames_more
        if self.sampling.recorder.unwound:
            info["native_unwinding"] = self.sampling.recorder.unwound
        if self.finder.skipped:
            info["processes_not_sampled"] = {str(p): why for p, why
                                             in sorted(self.finder.skipped.items())}
        if self.finder.skipped_more:
            info["processes_not_sampled_more"] = self.finder.skipped_more
        try:
            self.directory.write_manifest(**info)
        except CaptureError as ex:
            _say_in_log(f"etwtrace: {ex}")


def _say_in_log(text):
    """The daemon's messages: its stderr is the session's daemon.log."""
    print(text, file=sys.stderr, flush=True)


def _perf_dies_with_daemon():
    """perf, in its child: SIGINT (it writes out and exits) if the daemon
    dies, so a killed session still leaves a readable perf.data; and the
    signals the daemon waits for unblocked again (a mask is inherited)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT, 0, 0, 0)
    except Exception:
        pass


# ---- the command line ----



def main(opts, say):
    """python -m etwtrace record COMMAND, its options parsed (_args)."""
    _env.check_all()
    command = opts.command
    if command == "start":
        sampled = (opts.rate or _sampler.DEFAULT_RATE) if opts.sampled else 0
        max_size = opts.max_size
        if max_size is None:
            max_size = _env.size(_env.MAX_SIZE) or 0
        every = opts.get("every") or 0
        if every and not opts.rate:
            sampled = _profiles.DEFAULT_RATE
        keep = (opts.get("keep") or _profiles.DEFAULT_KEEP) if every else 0
        return start(opts.path, opts.preset, opts.recorder, opts.ring, say, sampled, max_size,
                     every, keep)
    if command == "status":
        return status(say)
    if command == "stop":
        return stop(say)
    return snapshot(opts.path, say)
