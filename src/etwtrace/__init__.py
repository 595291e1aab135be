"""etwtrace for Linux: makes Python code visible to native profilers.

Stack sampling (default) routes every Python function through its own
native trampoline, described to perf (perf map, jitdump) and to in-process
unwinders, so native stacks show Python frames.  Events (PythonFunction,
PythonThread, PythonMark, PythonStackSample, ...) go to USDT probes of
provider ``etwtrace`` and, while capturing, to a CTF trace.
"""

import atexit
import functools
import os
import sys

from .errors import Error

__version__ = "0.2.0"
__all__ = [
    "StackSamplingTracer",
    "InstrumentedTracer",
    "mark",
    "mark_range",
    "is_active",
    "enable_if",
    "get_profile_path",
    "get_stacktags_path",
    "open_trace",
    "TraceError",
    "Error",
]

PROVIDER_NAME = "Python"
PROVIDER_GUID = "99a10640-320d-4b37-9e26-c311d86da7ab"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_tracer = None
_atexit_registered = False


def _native():
    from . import _etwtrace
    return _etwtrace


@functools.lru_cache(maxsize=None)
def _own_files():
    """This package's own source files, which the tracer never traces
    (walked once: enable() after disable() took 1.5 ms on the walk)."""
    files = set()
    for folder, _, names in os.walk(_PACKAGE_DIR):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                files.add(path)
                files.add(os.path.realpath(path))
    return frozenset(files)


class _RangeMark:
    def __init__(self, text, native):
        self.mark = text
        self._native = native

    def __enter__(self):
        self._native.write_mark(self.mark, 1)
        return self

    def __exit__(self, *exc):
        self._native.write_mark(self.mark, 2)


def _disable_at_exit():
    tracer = _tracer
    if tracer is not None:
        tracer.disable()


def _after_fork_in_child():
    """A multiprocessing child started by fork (or a forkserver) ends with
    os._exit(), which skips atexit: stop tracing from multiprocessing's own
    exit hook instead, last of its finalizers, so the child's buffered
    events are written.  The child clears the finalizers it inherits, then
    runs its after-fork callbacks: register from one of those."""
    names = sys.modules.get(__name__ + ".threadnames")
    if names is not None:
        names.after_fork_in_child()
    if _tracer is not None:
        _tracer._native.session_after_fork()
    util = sys.modules.get("multiprocessing.util")
    if _tracer is not None and util is not None:
        util.register_after_fork(_tracer, lambda tracer: util.Finalize(
            None, _disable_at_exit, exitpriority=-(2 ** 30)))


class _TracingMixin:
    _mode = "stack"
    _c_calls = False
    _call_times = True
    _join_sessions = None    # None: as ETWTRACE_SESSION says (join by default)

    def __init__(self):
        self._native = _native()

    def __enter__(self):
        self.enable()
        return self

    def __exit__(self, *exc):
        self.disable()

    def enable(self):
        """Starts tracing this interpreter (all threads, including new ones)."""
        global _tracer, _atexit_registered
        import threading
        if _tracer is not None or self._native.is_active():
            raise RuntimeError("a tracer is already enabled in this process")
        self.ignore(*_own_files())
        self.ignore(threading.__file__, threading.Thread.run.__code__.co_filename)
        from .trace import children as _children
        from . import env as _env   # (imported before tracing starts)
        capture = _env.text(_env.CAPTURE)
        limit = _env.size(_env.MAX_SIZE) if capture else None
        if limit is not None:
            from .trace import budget as _budget
            _budget.ensure(capture, limit)
        sessions = self._join_sessions
        if sessions is None:
            sessions = _env.choice(_env.SESSION) != "ignore"
        _children.watch()
        from . import threadnames   # (imported before tracing starts)
        threadnames.watch()
        self._native.enable(self._mode, capture, self._c_calls, self._call_times, sessions)
        _tracer = self
        threadnames.start(self._native)
        if not _atexit_registered:
            atexit.register(_disable_at_exit)
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _atexit_registered = True

    def disable(self):
        """Stops tracing (this tracer's; another one enabled in this process
        is left running)."""
        global _tracer
        if _tracer is self:
            # Looked up, not imported: an import now would run (and trace)
            # importlib's Python code.
            sys.modules[__name__ + ".threadnames"].stop()
            _tracer = None
            self._native.disable()

    def ignore(self, *files):
        """Source files whose functions are not traced."""
        self._native.get_ignored_files().update(files)

    def include(self, *prefixes):
        """Path prefixes traced even when a file is ignored."""
        self._native.get_include_prefixes().extend(prefixes)

    def mark(self, text):
        self._native.write_mark(str(text), 0)

    def mark_range(self, text):
        return _RangeMark(str(text), self._native)

    def _mark_stack(self, text):
        self._native.mark_stack(str(text))

    def _get_technical_info(self):
        return self._native._get_technical_info()

    def _session_id(self):
        """The recording session this process records into now, or None."""
        return self._native.session_id()


class StackSamplingTracer(_TracingMixin):
    """Routes Python functions through native trampolines for stack samplers."""
    _mode = "stack"


class InstrumentedTracer(_TracingMixin):
    """Raises PythonFunctionPush/Pop events on entry and exit of functions.

    Python functions always; C callables (builtins, methods of C types) too
    when ``c_calls`` is true, which costs more (CPython's profile hook).  The
    default for ``c_calls`` comes from the environment variable
    ETWTRACE_C_CALLS (set by ``python -m etwtrace --c-calls``).

    With ``call_times`` false, the recorder does not read the clock for each
    push and pop: call counts, callers and order stay exact, at about the
    cost of the eval hook alone, but calls have no durations (their
    timestamps are the thread's last clock reading).  The default comes from
    ETWTRACE_CALL_TIMES (``0`` from ``python -m etwtrace --no-call-times``).
    """
    _mode = "instrumented"

    def __init__(self, c_calls=None, call_times=None):
        super().__init__()
        from . import env as _env
        if c_calls is None:
            c_calls = _env.flag(_env.C_CALLS, False)
        if call_times is None:
            call_times = _env.flag(_env.CALL_TIMES, True)
        self._c_calls = bool(c_calls)
        self._call_times = bool(call_times)


def is_active():
    """Whether a tracer is enabled in this process."""
    return _native().is_active()


def _warn_inactive(what):
    import warnings
    warnings.warn(f"etwtrace.{what}() called while no tracer is active; nothing recorded",
                  RuntimeWarning, stacklevel=3)


def mark(text):
    """Emits a PythonMark event."""
    if _tracer is None:
        _warn_inactive("mark")
        return
    _tracer.mark(text)


class _NullRange:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def mark_range(text):
    """A context manager emitting PythonMark start/stop around its body."""
    if _tracer is None:
        _warn_inactive("mark_range")
        return _NullRange()
    return _tracer.mark_range(text)


def _mark_stack(text):
    """Emits a PythonStackSample event carrying the native stack."""
    if _tracer is None:
        _warn_inactive("_mark_stack")
        return
    _tracer._mark_stack(text)


def _own_command_line():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(getattr(sys, "orig_argv", sys.argv))


def enable_if(enable_var, type_var):
    """Enables tracing when `enable_var` is set truthy (always when empty).

    Called from the etwtrace.pth written by ``python -m etwtrace --enable``.
    `type_var` names the variable choosing 'stack' (default) or
    'instrumented'.  ``python -m etwtrace`` itself is never traced this way.
    """
    global enable_if
    enable_if = lambda *a: None  # noqa: E731 - only the first call counts

    if enable_var and os.getenv(enable_var, "0").lower()[:1] in ("", "0", "n", "f"):
        return
    argv = _own_command_line()
    if argv[1:3] == ["-m", "etwtrace"]:
        return
    trace_type = os.getenv(type_var, "").lower() if type_var else ""
    try:
        from . import env as _env
        _env.check_all()
        if trace_type in ("", "stack"):
            tracer = StackSamplingTracer()
        elif trace_type in ("instrument", "instrumented"):
            tracer = InstrumentedTracer()
        else:
            print(f"etwtrace: {type_var}={trace_type!r} is not a trace type "
                  "(use 'stack' or 'instrumented'); not tracing", file=sys.stderr)
            return
        # Started by the .pth: its /tmp perf files go when it exits, unless
        # a recording asked to keep them (a capture collects them).
        keep = _env.choice(_env.PERF_FILES) == "keep" or bool(_env.text(_env.CAPTURE))
        tracer._native.remove_perf_files_at_exit(not keep)
        from .trace import children as _children
        _children.ENABLE_VAR = enable_var or None   # its children need it too
        tracer.enable()
    except Exception as ex:  # never break interpreter start-up
        print(f"etwtrace: tracing not enabled: {ex}", file=sys.stderr)


def _remote(action, mode, c_calls):
    """Run inside a process by ``python -m etwtrace attach/detach`` (through
    sys.remote_exec); returns what happened, raises what went wrong."""
    if action == "detach":
        if _tracer is None:
            raise RuntimeError("it is not traced by etwtrace")
        _tracer.disable()
        return "detached"
    if _tracer is not None or _native().is_active():
        raise RuntimeError("it is traced already (detach it first)")
    tracer = InstrumentedTracer(c_calls=c_calls) if mode == "instrumented" else StackSamplingTracer()
    tracer._join_sessions = True
    tracer.enable()
    session = tracer._session_id()
    if session is None:
        tracer.disable()
        raise RuntimeError("it could not join the recording session (the session's directory "
                           "is not reachable by its user); it is not traced")
    return f"records into session {session}"


def get_profile_path():
    """Path of the recording profile (presets Default, CPU and Minimal)."""
    from .profiles import profile_path
    return profile_path()


def get_stacktags_path():
    """Path of the stack-tags file used to fold interpreter frames."""
    from .profiles import stacktags_path
    return stacktags_path()


def __getattr__(name):
    # The readers load only when used: `import etwtrace` (and every
    # interpreter start through etwtrace.pth) stays cheap.
    if name in ("open_trace", "TraceError"):
        from .trace import reader as _trace
        return getattr(_trace, name)
    raise AttributeError(f"module 'etwtrace' has no attribute {name!r}")
