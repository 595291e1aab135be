"""python -m etwtrace report: views of a capture.

What is shown, by what the capture holds:
* instrumented calls (PythonFunctionPush/Pop): exact call counts and
  inclusive/exclusive time per function and per call path;
* perf CPU samples: mixed Python/native stacks, Python frames named from the
  PythonFunction address ranges (`qualname (file:line)`), native frames by
  perf's symbols, interpreter frames folded by the stack-tags file;
* `_mark_stack` stacks when there is nothing else;
* with --off-cpu, the time threads spent blocked, by stack.
"""

import contextlib
import os
import sys
import time
import warnings

from .formats import (chrome as _fmt_chrome, diff as _fmt_diff, folded as _fmt_folded,
                      pprof as _fmt_pprof, speedscope as _fmt_speedscope, svg as _fmt_svg,
                      text as _fmt_text)
from .scan import Cut, Scan, load_stacktags
from ..trace.capture import Capture
from ..stdout import drop_stdout
from ..errors import Error, UsageError
from .view import diff_view, report_view

# Outputs expected to be larger than this are announced before writing.
WARN_BYTES = 100 * 2**20



class _Progress:
    """A progress bar on stderr, by bytes read of the capture's files, for
    reports that take more than a moment; only when stderr is a terminal."""

    def __init__(self, files=(), stream=sys.stderr):
        self.enabled = stream.isatty()
        self.stream = stream
        self.total = 0
        self.expect(files)
        self.done = {}
        self.started = time.monotonic()
        self.shown = 0.0
        self.drawn = False

    def expect(self, files):
        """Counts these files in the whole to read."""
        for path in files:
            try:
                self.total += os.path.getsize(path)
            except OSError:
                pass

    def reader(self, path):
        if not self.enabled:
            return None

        def update(pos):
            self.done[path] = pos
            now = time.monotonic()
            if now - self.started > 1.0 and now - self.shown > 0.2:
                self.shown = now
                self._draw()
        return update

    def _draw(self):
        share = min(sum(self.done.values()) / max(self.total, 1), 1.0)
        bar = "#" * int(share * 30)
        self.stream.write(f"\r[{bar:<30}] {share * 100:5.1f}% of {self.total / 2**20:.1f} MiB")
        self.stream.flush()
        self.drawn = True

    def close(self):
        if self.drawn:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


class OutputError(Error):
    """The output could not be written (a full disk, a read-only
    directory): a failure of the report, not of its input."""


@contextlib.contextmanager
def _output(path, binary=False):
    """The report's output: the file `path`, else stdout; a closed pipe
    ends quietly."""
    if path:
        try:
            out = open(path, "wb") if binary else open(path, "w", encoding="utf-8")
        except OSError as ex:
            raise OutputError(f"cannot write {path}: {ex.strerror}") from None
        try:
            yield out
            out.close()
        except OSError as ex:
            try:
                out.close()
            except OSError:
                pass        # what is still buffered fails the same way
            raise OutputError(f"cannot write {path}: {ex.strerror}") from None
        return
    try:
        out = sys.stdout.buffer if binary else sys.stdout
        yield out
        out.flush()
    except BrokenPipeError:
        # The reader (| head) has what it wanted; silence the flush at exit.
        drop_stdout()
    except OSError as ex:
        drop_stdout()
        raise OutputError(f"cannot write the report to standard output: {ex.strerror}") from None


def run(opts):
    """The report: its options become a cut and a view here, once; the
    format's writer takes the view."""
    from ..profiles import stacktags_path
    fmt = FORMATS[opts.format]
    text = opts.format == "text"
    tags = None if opts.no_stacktags else load_stacktags(opts.stacktags or stacktags_path())
    cut = Cut(pids=opts.pid, tids=opts.tid, since=opts.start, until=opts.end)
    capture = Capture(opts.path)
    with Scan(capture, tags, timeline=fmt.timeline, progress=_Progress(), cut=cut,
              tasks=opts.tasks) as scan:
        if opts.tasks and not scan.tree.task_keys:
            print(f"etwtrace: note: {opts.path} holds no asyncio task (recorded on "
                  "CPython 3.11+ in stack or instrumented mode): --async shows it "
                  "as it is", file=sys.stderr)
        if opts.diff:
            with Scan(Capture(opts.diff), tags, progress=_Progress(),
                      cut=cut.every_thread(), tasks=opts.tasks) as base:
                write = _fmt_diff.WRITERS.get(opts.format)
                if write is None:
                    raise UsageError("--diff writes text, folded or svg")
                view = diff_view(scan, base, opts.path, opts.diff, opts.off_cpu,
                                 opts.limit or None)
                with _output(opts.output, fmt.binary) as out:
                    write(out, view)
            return
        lost = scan.lost_events()
        losses = f"WARNING: {lost}; what follows is what was kept" if lost else None
        if losses and not text:
            print(f"etwtrace: {losses}", file=sys.stderr)
        for problem in scan.problems:
            _say_warning(problem)
        children = scan.untraced_children()
        if children:
            print(f"etwtrace: note: {children}", file=sys.stderr)
        view = report_view(scan, fmt, text, opts.path, cut, opts.off_cpu,
                           opts.limit or None, losses)
        if fmt.binary and not opts.output and sys.stdout.isatty():
            raise UsageError(f"{opts.format} output is binary: write it with -o FILE")
        if view.cut_short.get(view.kind) and not text:
            print(f"etwtrace: note: {view.cut_short[view.kind]}", file=sys.stderr)
        size = fmt.size(view) if fmt.size is not None else None
        if size is not None and size > WARN_BYTES:
            print(f"etwtrace: report: this {opts.format} file will be about "
                  f"{size / 2**20:,.0f} MiB; --pid, --tid and --from/--to SECONDS cut a "
                  "smaller view", file=sys.stderr)
        with _output(opts.output, fmt.binary) as out:
            fmt.write(out, view)


# Every output format: one module each, its writer and what it needs.
FORMATS = {
    "text": _fmt_text.FORMAT,
    "folded": _fmt_folded.FORMAT,
    "speedscope": _fmt_speedscope.FORMAT,
    "chrome": _fmt_chrome.FORMAT,
    "svg": _fmt_svg.FORMAT,
    "pprof": _fmt_pprof.FORMAT,
}


def main(opts):
    """python -m etwtrace report, its options parsed (cli/args.py); errors
    are raised for the command line's top level to say."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            run(opts)
    except KeyboardInterrupt:
        print("etwtrace: report interrupted", file=sys.stderr)
        return 130
    return 0


_said = set()


def _say_warning(text):
    """One line on stderr, once."""
    if text not in _said:
        _said.add(text)
        print(f"etwtrace: warning: {text}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A reader's warning (a truncated trace, a ring left out) as one line."""
    _say_warning(str(message))
