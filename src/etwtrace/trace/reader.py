"""open_trace(): the events of a capture, from every recorder, in time order.

The built-in recorder's streams are decoded, made into Event objects and
merged in C (etwtrace._ctfdecode's Reader and Merge); perf's saved script
text is read in Python (perfscript.py) and merged with them.  What the
capture holds is found by its Capture (capture.py), opened once.

A process that exec'd another program left one trace per program
(pid-PID, pid-PID.2, ...): each is a process of its own, told apart by
Event.image (1, 2, ...), with its own FunctionIDs.  One process's trace
that cannot be read (damaged, or not a trace at all) is left out with a
RuntimeWarning naming it; the others are read."""

import warnings

from .capture import Capture
from .ctf import TraceError
from .._ctfdecode import Event, Merge


def _warn(message):
    warnings.warn(message, RuntimeWarning, stacklevel=3)


# Events the report reads that open_trace does not give: its events are
# the contract's (DESIGN.md section 3), and thread names and asyncio
# task steps (report --async) are not among them.
REPORT_ONLY = frozenset({"PythonThreadName", "PythonTask"})


class open_trace:
    """Iterates over the events of a capture directory in timestamp order.

    Usable as a context manager.  Raises TraceError for a missing capture,
    or one that is not a capture at all; a process whose trace cannot be
    read is left out with a RuntimeWarning.  A process that exec'd is one
    process per program: (event.pid, event.image)."""

    def __init__(self, path):
        self.capture = Capture(path)
        self.path = self.capture.path
        self.manifest = self.capture.manifest
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._closed = True

    def __iter__(self):
        return self.events()

    def files(self):
        """Every file the events are read from."""
        return self.capture.files()

    def events(self):
        """The events in timestamp order."""
        if self._closed:
            raise ValueError("trace is closed")
        for problem in self.capture.problems:
            _warn(problem)
        sources = []
        for s in self.capture.streams:
            try:
                sources.append(s.reader())
            except TraceError as ex:
                _warn(f"process {s.pid} thread left out: {ex}")
        perf = self.capture.perf_events()
        if perf is not None:
            sources.append(perf)
        return (e for e in Merge(sources) if e.name not in REPORT_ONLY)


__all__ = ["open_trace", "Event", "TraceError"]
