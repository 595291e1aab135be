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

import os
import sys
import time
import warnings

from . import _diff, _exports, _formats, _pprof
from ._scan import TRUNCATED_FRAME, Cut, ReportError, Scan, load_stacktags, process_name
from ._stdout import drop_stdout
from .errors import Error, UsageError

# Outputs expected to be larger than this are announced before writing.
WARN_BYTES = 100 * 2**20



class _Progress:
    """A progress bar on stderr, by bytes read of the capture's files, for
    reports that take more than a moment; only when stderr is a terminal."""

    def __init__(self, files, stream=sys.stderr):
        self.enabled = stream.isatty()
        self.stream = stream
        self.total = 0
        for path in files:
            try:
                self.total += os.path.getsize(path)
            except OSError:
                pass
        self.done = {}
        self.started = time.monotonic()
        self.shown = 0.0
        self.drawn = False

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


def _choose_view(scan, off_cpu, call_paths=True):
    """(view name, stacks, unit, description) for folded/svg/speedscope.
    Without `call_paths` (the text report's table of calls) the stacks of
    calls are not made: a recursion N deep has N paths of up to N frames."""
    if off_cpu:
        return "off-cpu", scan.offcpu, "ns", "blocked time (off-CPU)"
    if scan.tree.calls:
        paths = scan.tree.folded() if call_paths else None
        if not scan.tree.has_times:
            return "calls", paths, "calls", "instrumented calls, recorded without call times"
        return "calls", paths, "ns", "exclusive time of instrumented calls"
    if scan.samples:
        return "samples", scan.samples, "samples", "CPU samples"
    return "marks", scan.marks, "samples", "stack marks"


def _thread_stacks(scan, view):
    """The view's stacks per thread: {((pid, tid), frames): value}."""
    if view == "calls":
        return scan.tree.folded(by_thread=True)
    return scan.by_thread[{"off-cpu": "offcpu"}.get(view, view)]


def _losses_line(path):
    """One line naming the events the recorder could not keep (and why
    recording stopped early, if it did), or None."""
    from ._budget import loss_text
    from ._ctf import recorded_losses
    from ._manifest import read_manifest
    lost = loss_text(recorded_losses(path), read_manifest(path))
    if not lost:
        return None
    return f"WARNING: {lost}; what follows is what was kept"


def _problems_lines(scan):
    """One line for each trace (or part of one) the report had to leave
    out, or [] when there is none."""
    return [f"WARNING: {p}" for p in scan.problems]


def _say_untraced_children(path):
    """One line on stderr naming the child processes the capture says
    were started but not traced (_children.py); nothing when there are
    none."""
    from . import _children
    line = _children.describe(_children.untraced_children(path))
    if line:
        print(f"etwtrace: note: {line}", file=sys.stderr)


def _truncated_note(scan, view):
    """A line saying how much of a stack view perf's unwind cut short (those
    stacks have the root [truncated]), or None."""
    key = {"off-cpu": "offcpu"}.get(view, view)
    cut = getattr(scan, "truncated", {}).get(key)
    if not cut:
        return None
    total = sum({"samples": scan.samples, "marks": scan.marks, "offcpu": scan.offcpu}[key].values())
    share = f"{100 * cut / total:.1f}%" if total else "?"
    amount = (f"{cut / 1e9:.3f} s of {total / 1e9:.3f} s blocked" if key == "offcpu"
              else f"{cut:,} of {total:,} {'CPU samples' if key == 'samples' else 'stack marks'}")
    return (f"{amount} ({share}) have stacks cut short by perf (deeper than its frame "
            f"limit or stack copy): shown with the root {TRUNCATED_FRAME}")


def _text(scan, off_cpu, limit, losses=None):
    head = ([losses] if losses else []) + _problems_lines(scan)
    sections = [head] if head else []
    notes = [f"note: {n}" for n in (_truncated_note(scan, "off-cpu" if off_cpu else "samples"),)
             if n]
    if notes:
        sections.append(notes)
    if off_cpu:
        sections.append(_formats.offcpu_tables(scan.offcpu, limit))
        return _formats.format_text(sections)
    if scan.samples:
        sections.append(_formats.stack_table(
            scan.samples, f"{sum(scan.samples.values())} CPU samples", limit=limit))
    if scan.tree.calls:
        sections.append(_formats.calls_table(scan.tree.functions(), limit=limit,
                                             times=scan.tree.has_times))
        if scan.tree.untimed_pids:
            pids = ", ".join(process_name(p) for p in sorted(scan.tree.untimed_pids))
            sections.append([f"note: process {pids} recorded calls without call times "
                             "(--no-call-times): counts and callers are exact, durations "
                             "were not measured"])
        pop_notes = []
        if scan.tree.unmatched_pops:
            pop_notes.append(f"{scan.tree.unmatched_pops} returns from calls entered before "
                             "tracing")
        if scan.tree.mismatched_pops:
            pop_notes.append(f"{scan.tree.mismatched_pops} returns that closed calls with lost "
                             "events")
        if scan.tree.unnested_pops:
            pop_notes.append(f"{scan.tree.unnested_pops} returns from calls that were not the "
                             "innermost open one (the program switched stacks, as greenlets do)")
        if pop_notes:
            sections.append(["note: " + ", ".join(pop_notes)])
    if scan.marks and not [s for s in sections if s is not head and s is not notes]:
        sections.append(_formats.stack_table(
            scan.marks, f"{sum(scan.marks.values())} stack marks", limit=limit))
    return _formats.format_text(sections)


class OutputError(Error):
    """The output could not be written (a full disk, a read-only
    directory): a failure of the report, not of its input."""


def _write(opts, produce, binary=False):
    """Runs produce(out) into -o or stdout; a closed pipe ends quietly."""
    if opts.output:
        try:
            out = (open(opts.output, "wb") if binary
                   else open(opts.output, "w", encoding="utf-8"))
        except OSError as ex:
            raise OutputError(f"cannot write {opts.output}: {ex.strerror}") from None
        try:
            produce(out)
            out.close()
        except OSError as ex:
            try:
                out.close()
            except OSError:
                pass        # what is still buffered fails the same way
            raise OutputError(f"cannot write {opts.output}: {ex.strerror}") from None
        return
    try:
        out = sys.stdout.buffer if binary else sys.stdout
        produce(out)
        out.flush()
    except BrokenPipeError:
        # The reader (| head) has what it wanted; silence the flush at exit.
        drop_stdout()
    except OSError as ex:
        drop_stdout()
        raise OutputError(f"cannot write the report to standard output: {ex.strerror}") from None


def _cut(opts, path, whole=False):
    """What of the capture at `path` to show: --pid/--tid (unless `whole`)
    and --from/--to, in seconds from its first event."""
    cut = Cut(pids=None if whole else opts.pid, tids=None if whole else opts.tid)
    if opts.start is not None or opts.end is not None:
        from ._trace import capture_start
        origin = capture_start(path)
        if origin is not None:
            if opts.start is not None:
                cut.start = origin + int(opts.start * 1e9)
            if opts.end is not None:
                cut.end = origin + int(opts.end * 1e9)
    return cut


def _scan(opts, path, tags, timeline, whole=False):
    from ._trace import open_trace
    progress = _Progress(open_trace(path).files())
    try:
        return Scan(path, tags, timeline=timeline, progress=progress,
                    cut=_cut(opts, path, whole))
    finally:
        progress.close()


def run(opts):
    from ._content import stacktags_path
    tags = None if opts.no_stacktags else load_stacktags(opts.stacktags or stacktags_path())
    timeline = FORMATS[opts.format].timeline
    with _scan(opts, opts.path, tags, timeline) as scan:
        if opts.diff:
            with _scan(opts, opts.diff, tags, False, whole=True) as base:
                _report_diff(opts, scan, base)
        else:
            _report(opts, scan, timeline)


def _shown_part(opts):
    """Words for what a cut report shows, or "" for the whole capture."""
    parts = []
    if opts.pid:
        parts.append("pid " + ",".join(map(str, sorted(opts.pid))))
    if opts.tid:
        parts.append("tid " + ",".join(map(str, sorted(opts.tid))))
    if opts.start is not None or opts.end is not None:
        start = f"{opts.start:g}" if opts.start is not None else "0"
        end = f"{opts.end:g}" if opts.end is not None else "end"
        parts.append(f"{start}-{end} s")
    return ", ".join(parts)


def _report_diff(opts, scan, base):
    if opts.format not in ("text", "folded", "svg"):
        raise UsageError("--diff writes text, folded or svg")
    view, stacks, unit, what = _choose_view(scan, opts.off_cpu)
    base_view, base_stacks, base_unit, base_what = _choose_view(base, opts.off_cpu)
    if not stacks or not base_stacks:
        empty = opts.path if not stacks else opts.diff
        raise ReportError(f"{empty}: no stacks or calls recorded to compare")
    if (view, unit) != (base_view, base_unit):
        raise ReportError(f"cannot compare {what} ({opts.path}) with {base_what} "
                          f"({opts.diff}): record both the same way")
    name = os.path.basename(os.path.abspath(opts.path))
    base_name = os.path.basename(os.path.abspath(opts.diff))
    heading = (f"{name} against {base_name}: {what}, as shares of each capture's total "
               f"(change in percentage points)")
    if opts.format == "text":
        _write(opts, lambda out: out.write(_diff.text(stacks, base_stacks, heading,
                                                      opts.limit or None)))
    elif opts.format == "folded":
        _write(opts, lambda out: out.write(_diff.folded(stacks, base_stacks)))
    else:
        title = f"etwtrace: {name} against {base_name} ({what}; red grew, blue shrank)"
        _write(opts, lambda out: out.write(_formats.format_svg(
            stacks, title, unit, color_of=_diff.colors(stacks, base_stacks))))


def _expected_size(opts, scan, v):
    """Bytes a timeline export will have, roughly (None for the others)."""
    if opts.format not in ("speedscope", "chrome"):
        return None
    records = sum(r.count for *_, r in scan.tree.timelines or ()) if v.view == "calls" else 0
    points = len(scan.sample_points) + len(scan.offcpu_slices)
    if opts.format == "speedscope":
        # {"type":"O","frame":N,"at":T}, or a stack of frame indices.
        return records * 45 + points * 60
    # A begin event names its frame; an end does not.
    names = {k: len(scan.tree.label(k)) for *_, keys, _r in scan.tree.timelines or ()
             for k in keys}
    name = sum(names.values()) / len(names) if names else 0
    return int(records * (85 + name / 2)) + points * 110


def _report(opts, scan, timeline):
    name = os.path.basename(os.path.abspath(opts.path))
    losses = _losses_line(opts.path)
    if losses and opts.format != "text":
        print(f"etwtrace: {losses}", file=sys.stderr)
    for problem in scan.problems:
        _say_warning(problem)
    _say_untraced_children(opts.path)
    view, stacks, unit, what = _choose_view(scan, opts.off_cpu, opts.format != "text")
    if timeline and scan.tree.untimed_pids and not opts.off_cpu:
        raise ReportError(f"{opts.path}: calls were recorded without call times "
                          f"(--no-call-times), so they have no timeline; use --format text, "
                          "folded or svg")
    if opts.off_cpu and not stacks:
        raise ReportError(f"{opts.path}: no off-CPU time recorded (capture with perf and the "
                          "Default preset, which records context switches)")
    fmt = FORMATS[opts.format]
    if fmt.needs_stacks and not stacks and not (
            opts.format == "text" and (scan.samples or scan.tree.calls)):
        raise ReportError(f"{opts.path}: no stacks or calls recorded (record with perf, "
                          "--instrumented, or call _mark_stack)")
    if fmt.check is not None:
        fmt.check(opts, scan)
    part = _shown_part(opts)
    if part:
        name = f"{name} [{part}]"
    cut = _truncated_note(scan, view)
    if cut and opts.format != "text":
        print(f"etwtrace: note: {cut}", file=sys.stderr)
        what = f"{what}; {cut}"     # in the title each format has
    view_info = _View(name, view, stacks, unit, what, losses)
    size = _expected_size(opts, scan, view_info)
    if size is not None and size > WARN_BYTES:
        print(f"etwtrace: report: this {opts.format} file will be about {size / 2**20:,.0f} MiB; "
              "--pid, --tid and --from/--to SECONDS cut a smaller view", file=sys.stderr)
    _write(opts, lambda out: fmt.write(out, opts, scan, view_info), binary=fmt.binary)


class _View:
    """What a report shows: the capture's name, the view chosen, its stacks
    and their unit, and the line naming lost events (or None)."""

    def __init__(self, name, view, stacks, unit, what, losses):
        self.name, self.view, self.stacks = name, view, stacks
        self.unit, self.what, self.losses = unit, what, losses


def _write_text(out, opts, scan, v):
    out.write(_text(scan, opts.off_cpu, opts.limit or None, v.losses))


def _write_folded(out, opts, scan, v):
    out.write(_formats.format_folded(v.stacks))


def _write_svg(out, opts, scan, v):
    total = sum(v.stacks.values())
    amount = f"{total / 1e6:.3f} ms" if v.unit == "ns" else f"{total}"
    grouped = _formats.thread_groups(_thread_stacks(scan, v.view), scan.threads)
    out.write(_formats.format_svg(grouped, f"etwtrace: {v.name} ({amount}, {v.what})", v.unit,
                                  groups=2))


def _write_speedscope(out, opts, scan, v):
    _exports.write_speedscope(out, scan, v.view, v.unit, f"etwtrace: {v.name} ({v.what})")


def _check_pprof(opts, scan):
    if not opts.output and sys.stdout.isatty():
        raise UsageError("pprof output is binary: write it with -o FILE")


def _write_pprof(out, opts, scan, v):
    if v.view == "calls":
        types = [("calls", "count")] + ([("time", "nanoseconds")] if scan.tree.has_times else [])
        samples = {key: values[:len(types)] for key, values in scan.tree.paths().items()}
    else:
        kind, unit = {"samples": ("samples", "count"), "marks": ("marks", "count"),
                      "off-cpu": ("blocked", "nanoseconds")}[v.view]
        types = [(kind, unit)]
        samples = {key: (value,) for key, value in _thread_stacks(scan, v.view).items()}
    span = (scan.last - scan.first) if scan.first is not None else 0
    out.write(_pprof.encode(samples, types, duration_ns=span,
                            comments=[f"etwtrace: {v.name} ({v.what})"]))


def _check_chrome(opts, scan):
    if not (scan.tree.timelines or scan.ranges or scan.instants or scan.offcpu_slices
            or scan.sample_points):
        raise ReportError(f"{opts.path}: nothing to put on a timeline")


def _write_chrome(out, opts, scan, v):
    notes = [n for n in (_truncated_note(scan, "samples"), _truncated_note(scan, "off-cpu")) if n]
    _exports.write_chrome(out, scan, f"etwtrace: {v.name}" + "".join(f"; {n}" for n in notes))


class _Format:
    def __init__(self, write, timeline=False, needs_stacks=True, check=None, binary=False):
        self.write = write
        self.timeline = timeline          # needs every call's open and close
        self.needs_stacks = needs_stacks
        self.check = check                # raises ReportError before any output
        self.binary = binary


# Every output format: its writer, and what it needs from the scan.
FORMATS = {
    "text": _Format(_write_text),
    "folded": _Format(_write_folded),
    "speedscope": _Format(_write_speedscope, timeline=True),
    "chrome": _Format(_write_chrome, timeline=True, needs_stacks=False, check=_check_chrome),
    "svg": _Format(_write_svg),
    "pprof": _Format(_write_pprof, check=_check_pprof, binary=True),
}


def main(opts):
    """python -m etwtrace report, its options parsed (_args); errors are
    raised for the command line's top level to say."""
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
