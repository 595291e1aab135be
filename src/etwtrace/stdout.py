"""Standard output and error that a reader may close (`| head`, `| less`
quit early): what is written there after that is dropped, quietly, and
the command goes on to its end and its usual exit status, never a
BrokenPipeError traceback."""

import os
import sys


def drop_stdout():
    """Points stdout at /dev/null: what is still buffered, and the flush
    at exit, have nothing to fail."""
    _to_devnull(sys.stdout)


def _to_devnull(stream):
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def out(*parts):
    """print() to stdout, flushed; nothing more when no one reads it."""
    try:
        print(*parts, flush=True)
    except BrokenPipeError:
        drop_stdout()


def err(text):
    """One line on stderr, flushed; nothing when no one reads it (what
    etwtrace says there is also in the capture's manifest)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _to_devnull(sys.stderr)


def flush():
    """Flushes stdout and stderr before exit, quietly."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            _to_devnull(stream)
        except (OSError, ValueError):
            pass
