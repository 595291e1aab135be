"""python -m etwtrace attach PID [--instrumented [--c-calls]] | detach PID:
start or stop tracing in a running CPython 3.14+ that was not launched
with etwtrace, through sys.remote_exec (PEP 768).  An attached process
joins the recording session that runs (session.h): attaching needs one.

sys.remote_exec runs a script file in the target's main thread at its next
chance, like a signal handler, and says nothing of the outcome: the script
here writes its outcome into a file this command waits for.  The target
must be the same major.minor CPython as the one running this command, and
attaching needs ptrace permission (root, or the same user where
/proc/sys/kernel/yama/ptrace_scope allows it)."""

import os
import re
import shutil
import sys
import tempfile
import time

from . import session as _session
from ..errors import Error

CONFIRM_SECONDS = 10


ALTERNATIVE = ("trace it from its start instead: run `python -m etwtrace --enable ETWTRACE_ON` "
               "once for that Python, then start the program with ETWTRACE_ON=1")


class AttachError(Error):
    pass


def _target_version(pid):
    """(major, minor) of the CPython process `pid`, from its executable or
    the libpython it maps; None when it does not look like Python."""
    names = []
    try:
        names.append(os.path.realpath(f"/proc/{pid}/exe"))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            names += [line.split()[-1] for line in f if "libpython" in line]
    except OSError:
        pass
    for name in names:
        m = re.search(r"(?:lib)?python(\d)\.(\d+)", os.path.basename(name))
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _check_target(pid):
    try:
        st = os.stat(f"/proc/{pid}")
    except FileNotFoundError:
        raise AttachError(f"no process {pid}") from None
    except OSError as ex:
        raise AttachError(f"cannot look at process {pid}: {ex.strerror}") from None
    if os.geteuid() != 0 and st.st_uid != os.geteuid():
        raise AttachError(f"process {pid} belongs to another user; attaching to it needs root")
    version = _target_version(pid)
    if version is None:
        raise AttachError(f"process {pid} is not a Python process (or one this user cannot "
                          "look into)")
    if version < (3, 14):
        raise AttachError(f"process {pid} runs Python {version[0]}.{version[1]}, which cannot "
                          f"be attached to (sys.remote_exec needs 3.14 or later); {ALTERNATIVE}")
    if version != sys.version_info[:2]:
        raise AttachError(f"process {pid} runs Python {version[0]}.{version[1]}; attach with "
                          f"the same version: python{version[0]}.{version[1]} -m etwtrace ...")
    if not hasattr(sys, "remote_exec"):
        raise AttachError(f"this Python {sys.version.split()[0]} has no sys.remote_exec; "
                          f"{ALTERNATIVE}")
    return st.st_uid


# The code run in the target: imports this etwtrace (its directory is
# added when the target's own path has none) and reports the outcome.
_SCRIPT = """\
import sys
def _etwtrace_remote(package_root, result_path, action, mode, c_calls):
    try:
        try:
            import etwtrace
        except ImportError:
            sys.path.append(package_root)
            import etwtrace
        outcome = etwtrace._remote(action, mode, c_calls)
    except BaseException as ex:
        outcome = "error: " + (str(ex) or type(ex).__name__)
    with open(result_path, "w") as f:
        f.write(outcome)
_etwtrace_remote({package_root!r}, {result!r}, {action!r}, {mode!r}, {c_calls!r})
del _etwtrace_remote
"""


def _run_remote(pid, action, mode="stack", c_calls=False):
    owner = _check_target(pid)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    work = tempfile.mkdtemp(prefix="etwtrace-attach-")
    try:
        result = os.path.join(work, "result")
        script = os.path.join(work, "attach.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(_SCRIPT.format(package_root=package_root, result=result, action=action,
                                   mode=mode, c_calls=c_calls))
        os.chmod(script, 0o644)
        if os.geteuid() == 0 and owner != 0:
            os.chown(work, owner, -1)   # the target writes its outcome here
        os.chmod(work, 0o755 if owner == os.geteuid() else 0o700)
        try:
            sys.remote_exec(pid, script)
        except PermissionError as ex:
            raise AttachError(f"not permitted to attach to process {pid} ({ex}); attaching "
                              "needs root, or the same user where "
                              "/proc/sys/kernel/yama/ptrace_scope allows it") from None
        except ProcessLookupError:
            raise AttachError(f"no process {pid}") from None
        except (RuntimeError, OSError) as ex:
            raise AttachError(f"cannot attach to process {pid}: {ex}") from None
        deadline = time.monotonic() + CONFIRM_SECONDS
        while not os.path.exists(result):
            if not os.path.exists(f"/proc/{pid}"):
                raise AttachError(f"process {pid} ended before it ran the {action} code")
            if time.monotonic() > deadline:
                raise AttachError(
                    f"process {pid} has not run the {action} code within {CONFIRM_SECONDS} s "
                    "(its main thread is not running Python now); it will when it next does")
            time.sleep(0.02)
        time.sleep(0.01)
        # Written by the target, whose user owns `work`: never followed
        # through a link, and only a line's worth is read.
        fd = os.open(result, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            outcome = f.read(1000).decode("utf-8", "replace").strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if outcome.startswith("error: "):
        raise AttachError(f"process {pid}: {outcome[len('error: '):]}")
    return outcome


def main(command, opts, say):
    """python -m etwtrace attach|detach PID, its options parsed (_args)."""
    pid = opts.pid
    _check_target(pid)
    if command == "attach":
        place = _session.Place()
        if not (place.daemon_alive() and place.state()):
            raise AttachError("no recording session is running for the process to join; "
                              "start one first: python -m etwtrace record start PATH")
        outcome = _run_remote(pid, "attach", opts.mode, opts.c_calls)
        say(f"etwtrace: process {pid} is traced ({opts.mode}) and {outcome}")
    else:
        _run_remote(pid, "detach")
        say(f"etwtrace: process {pid} is no longer traced")
    return 0
