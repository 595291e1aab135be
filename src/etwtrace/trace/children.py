"""Child processes that go untraced, and saying so.

A traced process passes tracing on to the Python processes it starts
through its environment: ETWTRACE_CAPTURE (the capture to record into)
and PYTHONPATH holding the autostart directory (the launcher's), or the
variable that etwtrace.pth waits for.  A child started with an
environment of its own that drops one of those (subprocess with env=...,
os.execve, os.posix_spawn) is not traced, nor is a Python child started
with -E, -I or -S (they ignore PYTHONPATH, or site and its .pth files).

While it records, a traced process notes each such child as it starts it
(an audit hook), one JSON line in UNTRACED in its own trace directory: the
command line, and its pid once known (an exec's at once, a Popen's when
the Popen object is done with or at exit).  The launcher's end, `record
stop` and `report` each say in one line which children went untraced,
and the launcher and `record stop` keep the list in the manifest.
"""

import os
import stat
import sys
from _json import encode_basestring_ascii as _json_string
from _weakref import ref as _weak_ref

from .. import env as _env

UNTRACED = "untraced-children"     # (_ctf.NOTES: copied with the trace)
MANIFEST_KEY = "untraced_children"
MAX_FILE_BYTES = 1 << 20        # read from each process (a note is ~100 bytes)
MAX_SHOWN = 5                   # commands named in the one line
ENABLE_VAR = None               # set by enable_if: the .pth's variable, if any
AUTOSTART_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "_autostart")
_FS_ENCODING = sys.getfilesystemencoding()

_watching = None        # (carriers, flags) once watching
_noted = 0
_popens = {}            # weak reference -> (trace dir, note, Popen's attributes)


# ---- in the traced process ----
#
# The audit hook runs inside the traced program: past watch(), this part
# calls only functions written in C (and its own, in an ignored file), so
# that none of its work shows up in the trace.

def watch():
    """Notes this process's untraced children from now on, if its tracing
    came by its environment (the audit hook stays, and does nothing while
    the process does not record).  Called before tracing starts."""
    global _watching
    carriers, flags = _carriers()
    if carriers and _watching is None:
        _watching = (carriers, flags)
        from .. import _etwtrace
        _etwtrace.watch_children(_on_audit)     # (it filters the events, in C)
        import atexit
        atexit.register(_pids_at_exit)


def _carriers(environ=os.environ):
    """{name: value} of the variables this process's tracing came by, and
    the interpreter flags that would lose it."""
    carriers, flags = {}, set()
    capture = _env.text(_env.CAPTURE, environ)
    if capture:
        carriers[_env.CAPTURE] = capture
    if AUTOSTART_DIR in environ.get("PYTHONPATH", "").split(os.pathsep):
        carriers["PYTHONPATH"] = AUTOSTART_DIR
        flags |= {"E", "I", "S"}
    if ENABLE_VAR:
        carriers[ENABLE_VAR] = environ.get(ENABLE_VAR, "")
        flags.add("S")
    return carriers, flags


def why_untraced(args, env, carried=None):
    """Why a child run as `args` with environment `env` (None: this one's)
    is not traced, or None when it is (or would be, if it runs Python);
    `carried`: _carriers() (this process's, by default)."""
    carriers, flags = carried or _watching or _carriers()
    if env is not None:
        for name, value in carriers.items():
            given = env.get(name)
            if given is None:
                given = env.get(name.encode(), "")
            if name == "PYTHONPATH":
                dropped = value not in _str(given).split(":")
            else:
                dropped = _str(given) != value
            if dropped:
                return "environment without " + name
    found = _interpreter_flags(args) & flags
    if found:
        return "python -" + "".join(sorted(found))
    return None


def _str(value):
    if isinstance(value, bytes):
        return value.decode(_FS_ENCODING, "surrogateescape")
    return value if isinstance(value, str) else str(value)


# Options of the python command line that take a value.
_WITH_VALUE = "WX"


def _interpreter_flags(args):
    """The one-letter options of a Python command line `args` (empty when
    the program it runs is not named python*)."""
    args = [_str(a) for a in args] if isinstance(args, (list, tuple)) else []
    if not args or not args[0].rsplit("/", 1)[-1].startswith("python"):
        return set()
    flags = set()
    i = 1
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg in ("-", "--") or arg.startswith("--"):
            break
        for j, letter in enumerate(arg[1:]):
            if letter in "cm":
                return flags
            if letter in _WITH_VALUE:
                i += arg[j + 2:] == ""      # its value is the next argument
                break
            flags.add(letter)
        i += 1
    return flags


def _on_audit(event, args):
    if event != "subprocess.Popen" and event != "os.posix_spawn" and event != "os.exec":
        return
    try:
        _note(event, args)
    except Exception:   # never fail the program's own call
        pass


def _note(event, args):
    native = sys.modules.get("etwtrace._etwtrace")
    if native is None or not native.is_active():
        return
    if event == "subprocess.Popen":
        _executable, argv, _cwd, env = args
    else:
        _path, argv, env = args
        if event == "os.posix_spawn" and _called_by_subprocess():
            return      # (subprocess's own, noted as subprocess.Popen)
    why = why_untraced(argv, env)
    if why is None:
        return
    trace_dir = native.trace_dir()
    if trace_dir is None:
        return
    global _noted
    _noted += 1
    command = [_str(a) for a in argv] if isinstance(argv, (list, tuple)) else [_str(argv)]
    native_pid = None
    if event == "os.exec":
        native_pid = os.getpid()
    _append(trace_dir, '{"n": %d, "command": [%s], "why": %s, "pid": %s}' % (
        _noted, ", ".join([_json_string(a) for a in command]), _json_string(why),
        "null" if native_pid is None else native_pid))
    if event == "subprocess.Popen":
        _pid_when_known(trace_dir, _noted)


def _called_by_subprocess():
    subprocess = sys.modules.get("subprocess")
    frame = sys._getframe(3)    # _called_by_subprocess, _note, _on_audit, then the caller
    return subprocess is not None and frame is not None and \
        frame.f_code.co_filename == subprocess.__file__


def _pid_when_known(trace_dir, n):
    """The Popen starting the child is the `self` of the frame that
    audited it; its pid is set after the audit, so it is written when the
    Popen object is freed (or at exit), from its attributes."""
    frame = sys._getframe(3)    # _pid_when_known, _note, _on_audit, then _execute_child
    popen = frame.f_locals.get("self") if frame is not None else None
    attributes = getattr(popen, "__dict__", None)
    if attributes is not None:
        _popens[_weak_ref(popen, _popen_freed)] = (trace_dir, n, attributes)


def _popen_freed(ref):
    trace_dir, n, attributes = _popens.pop(ref, (None, 0, {}))
    _write_pid(trace_dir, n, attributes)


def _pids_at_exit():
    for trace_dir, n, attributes in list(_popens.values()):
        _write_pid(trace_dir, n, attributes)
    _popens.clear()


def _write_pid(trace_dir, n, attributes):
    pid = attributes.get("pid")
    if trace_dir is not None and isinstance(pid, int):
        _append(trace_dir, '{"n": %d, "pid": %d}' % (n, pid))


def _append(trace_dir, line):
    try:
        fd = os.open(trace_dir + "/" + UNTRACED,
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- reading a capture ----

def _read_notes(trace_dir):
    """The children one process noted, from its UNTRACED file (a regular
    file, not followed if a link, at most MAX_FILE_BYTES read)."""
    try:
        fd = os.open(os.path.join(trace_dir, UNTRACED),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, MAX_FILE_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    import json
    notes = {}
    for line in data.splitlines():
        try:
            record = json.loads(line)
            n = record["n"]
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
        if not isinstance(record, dict) or not isinstance(n, int):
            continue
        if "command" in record:
            notes[n] = record
        elif n in notes and isinstance(record.get("pid"), int):
            notes[n]["pid"] = record["pid"]
    return list(notes.values())


def untraced_children(path, manifest):
    """[{"pid", "parent", "command", "why"}] of the children the capture at
    `path` says went untraced: its `manifest`'s list (kept by the launcher
    and `record stop`), else its processes' notes."""
    kept = manifest.get(MANIFEST_KEY)
    if isinstance(kept, list):
        return [_entry(c.get("pid"), c.get("parent"), c.get("command"), c.get("why"))
                for c in kept if isinstance(c, dict)]
    return collect(path)


def _entry(pid, parent, command, why):
    """One untraced child, with fields of the types the line expects
    whatever a capture's files hold."""
    def number(value):
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else None
    return {"pid": number(pid), "parent": number(parent),
            "command": [str(a) for a in command] if isinstance(command, list) else [],
            "why": str(why) if why is not None else ""}


def collect(path):
    """The children noted by the processes of the capture at `path`, less
    any traced after all: a child with a trace of its own in it, an exec
    followed by a trace of the image it started."""
    from . import ctf as _ctf
    try:
        dirs = _ctf.trace_dirs(os.path.join(path, "ctf"))
    except OSError:
        return []
    images = {}
    for pid, _trace_dir in dirs:
        images[pid] = images.get(pid, 0) + 1
    found = []
    image = {}
    for parent, trace_dir in dirs:
        image[parent] = image.get(parent, 0) + 1
        for note in _read_notes(trace_dir):
            pid = note.get("pid")
            pid = pid if isinstance(pid, int) and pid > 0 else None
            if pid == parent and images[parent] > image[parent]:
                continue    # its exec: the image after it is traced
            if pid is not None and pid != parent and pid in images:
                continue    # a child traced after all
            found.append(_entry(pid, parent, note.get("command"), note.get("why")))
    return found


def _printable(text, width=60):
    """`text` with control characters escaped, cut at `width`."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= width else text[:width - 3] + "..."


def _shown(command):
    """A command line as the one line shows it: shell-quoted, its program
    by file name."""
    import shlex
    if not command:
        return "?"
    return _printable(shlex.join([os.path.basename(command[0])] + command[1:]))


def describe(children):
    """One line naming the untraced children, or None when there are none."""
    if not children:
        return None
    named = [f"pid {c['pid'] or '?'} ({_shown(c['command'])}; {_printable(c['why'])})"
             for c in children[:MAX_SHOWN]]
    if len(children) > MAX_SHOWN:
        named.append(f"{len(children) - MAX_SHOWN} more")
    n = len(children)
    return (f"{n} child process{'es were' if n != 1 else ' was'} started but not traced: "
            f"{', '.join(named)}; README, \"Children whose environment is cleared\", "
            "says how to follow them")
