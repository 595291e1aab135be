"""The ETWTRACE_* environment variables, read and checked in one place.

A value that is not one of a variable's accepted values is an error (a
one-line EnvError), never silently taken as "on"."""

import os

from .errors import Error

CAPTURE = "ETWTRACE_CAPTURE"
CAPTURE_MODE = "ETWTRACE_CAPTURE_MODE"
C_CALLS = "ETWTRACE_C_CALLS"
CALL_TIMES = "ETWTRACE_CALL_TIMES"
C_CALL_HOOK = "ETWTRACE_C_CALL_HOOK"
CALLGRAPH = "ETWTRACE_CALLGRAPH"
PERF_FILES = "ETWTRACE_PERF_FILES"
PROFILE = "ETWTRACE_PROFILE"
CLOCK = "ETWTRACE_CLOCK"
FRAME_WALK = "ETWTRACE_FRAME_WALK"
MAX_SIZE = "ETWTRACE_MAX_SIZE"
SESSION = "ETWTRACE_SESSION"
SESSION_DIR = "ETWTRACE_SESSION_DIR"

_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")

# Variables with a fixed set of values (empty means unset).
CHOICES = {
    CAPTURE_MODE: ("stack", "instrumented"),
    C_CALL_HOOK: ("monitoring", "profile"),
    CALLGRAPH: ("fp", "dwarf"),
    PERF_FILES: ("keep", "remove"),
    CLOCK: ("tsc", "monotonic"),
    FRAME_WALK: ("bpf_loop", "unrolled"),
    SESSION: ("join", "ignore"),
}
FLAGS = (C_CALLS, CALL_TIMES)

# The largest recording profile read (a profile is a few hundred bytes).
MAX_PROFILE_BYTES = 1 << 20


class EnvError(Error):
    """An ETWTRACE_* variable holds a value it does not accept: like a bad
    option, a usage error."""

    status = 2


def text(name, environ=os.environ):
    """A variable's value as set (a path, a directory); None when unset or
    empty."""
    return environ.get(name) or None


def flag(name, default, environ=os.environ):
    """A yes/no variable: `default` when unset or empty."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EnvError(f"{name}={environ[name]!r} is not a yes/no value "
                   "(use 1/0, yes/no, true/false or on/off)")


def choice(name, environ=os.environ):
    """A variable with a fixed set of values; None when unset or empty."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return None
    if value not in CHOICES[name]:
        raise EnvError(f"{name}={environ[name]!r} is not one of: {', '.join(CHOICES[name])}")
    return value


def size(name, environ=os.environ):
    """A size in bytes (64M, 1G: _sizes.parse_size); None when unset or
    empty."""
    from . import sizes as _sizes
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return _sizes.parse_size(value, name)
    except _sizes.SizeError:
        raise EnvError(f"{name}={environ[name]!r} is not a size such as 64M or 1G") from None


def check_all(environ=os.environ):
    """Raises EnvError for the first ETWTRACE_* variable with a bad value."""
    for name in FLAGS:
        flag(name, None, environ)
    for name in CHOICES:
        choice(name, environ)
    size(MAX_SIZE, environ)
    profile = environ.get(PROFILE)
    if profile:
        read_profile_text(profile)
    session_dir = environ.get(SESSION_DIR)
    if session_dir and not session_dir.startswith("/"):
        raise EnvError(f"{SESSION_DIR}={session_dir!r} is not an absolute path")


def read_profile_text(path):
    """The text of a recording profile: a regular file of at most
    MAX_PROFILE_BYTES (a FIFO or a huge file is refused, not read)."""
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as ex:
        raise EnvError(f"cannot read recording profile {path}: {ex.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EnvError(f"recording profile {path} is not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise EnvError(f"recording profile {path} is {st.st_size} bytes; profiles are "
                           f"at most {MAX_PROFILE_BYTES} bytes")
        data = f.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise EnvError(f"recording profile {path} is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvError(f"recording profile {path} is not UTF-8 text") from None
