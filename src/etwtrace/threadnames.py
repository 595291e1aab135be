"""Python thread names into the trace: PythonThreadName events.

threading names its threads (Thread.name) but tells no one when one
starts, and before 3.14 the name never reaches the OS thread.  So while
tracing, the function threading starts its threads with (_start_new_thread,
from 3.13 _start_joinable_thread) is wrapped to note each Thread it starts;
the wrapper runs in the starting thread, never on the new thread's stack.
A thread's native id is known only once it runs, so the names noted are
written at the next start, and every live thread's when tracing starts
and stops (a thread renamed since is written again).  Where no name was
written, a report calls the thread `thread TID`.
"""

import threading

_WRAPPED = ("_start_new_thread", "_start_joinable_thread")

_native = None
_written = {}       # native thread id -> the name written for it
_pending = []       # Threads started whose names are not written yet
_lock = threading.Lock()    # over both (threads start threads at once)


def watch():
    """Notes the threads threading starts from now on (called before
    tracing starts, so that this is not traced)."""
    for attr in _WRAPPED:
        original = getattr(threading, attr, None)
        if original is not None and not getattr(original, "_etwtrace_notes_names", False):
            setattr(threading, attr, _noting(original))


def start(native):
    """Tracing started (native: the extension that writes events): the
    live threads' names."""
    global _native
    _native = native
    _write_live()


def stop():
    """Tracing stops: the names not written yet (a later tracer, a new
    capture, writes them all again)."""
    global _native
    if _native is None:
        return
    _write_pending()
    _write_live()
    _native = None
    _written.clear()


def after_fork_in_child():
    """A forked child is a process of its own: its names are written anew
    (and the lock, which a thread that did not survive may have held, is
    made afresh)."""
    global _lock
    _lock = threading.Lock()
    _written.clear()
    _pending.clear()


def _noting(original):
    def start_thread(function, *args, **kwargs):
        thread = getattr(function, "__self__", None)    # Thread._bootstrap
        if _native is not None and isinstance(thread, threading.Thread):
            with _lock:
                _pending.append(thread)
            _write_pending()
        return original(function, *args, **kwargs)
    start_thread._etwtrace_notes_names = True
    start_thread.__wrapped__ = original
    return start_thread


def _write(thread):
    tid, name = thread.native_id, thread.name
    if _native is not None and _written.get(tid) != name:
        if _native.write_thread_name(tid, name):
            _written[tid] = name


def _write_pending():
    with _lock:
        running = [t for t in _pending if t.native_id is not None]
        _pending[:] = [t for t in _pending if t.native_id is None]    # not running yet
        for thread in running:
            _write(thread)


def _write_live():
    with _lock:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                _write(thread)
