"""What a report shows, chosen once from its options: the View that every
output writer (_fmt_*.py) takes with its output, and the Format entry that
says what a writer needs from the scan.
"""

import os

from .scan import TRUNCATED_FRAME, ReportError


class Format:
    """One output format: its writer write(out, view), and what it needs."""

    def __init__(self, write, timeline=False, needs_stacks=True, needs_timeline=False,
                 binary=False, size=None):
        self.write = write
        self.timeline = timeline          # needs every call's open and close
        self.needs_stacks = needs_stacks
        self.needs_timeline = needs_timeline    # shows nothing without timed events
        self.binary = binary              # not written to a terminal
        self.size = size                  # size(view): bytes it will write, roughly


class View:
    """What a writer needs: the capture's name and the view chosen (`kind`:
    calls, samples, marks or off-cpu), its stacks, their unit and the words
    for them (`what`), the text report's row limit, the notes (lost events,
    problems, stacks cut short), and the scan's tree, threads and timeline.
    A --diff view also has `baseline` (the stacks compared against) and the
    `heading` and `title` of the comparison."""

    baseline = heading = title = None

    def __init__(self, scan, path, name, kind, stacks, unit, what, limit=None):
        self.path, self.name, self.kind = path, name, kind
        self.stacks, self.unit, self.what, self.limit = stacks, unit, what, limit
        self.losses = None
        self.problems = list(scan.problems)
        self.cut_short = {k: truncated_note(scan, k) for k in ("samples", "marks", "off-cpu")}
        # The scan's views and timeline, under the names the writers use.
        self.tree, self.threads = scan.tree, scan.threads
        self.samples, self.marks, self.offcpu = scan.samples, scan.marks, scan.offcpu
        self.ranges, self.instants = scan.ranges, scan.instants
        self.offcpu_slices, self.sample_points = scan.offcpu_slices, scan.sample_points
        self.first, self.last = scan.first, scan.last
        self.tasks = getattr(scan, "tasks", False)     # report --async: a track per task
        self._by_thread = scan.by_thread

    def thread_stacks(self):
        """The view's stacks per thread: {((process, tid), frames): value}."""
        if self.kind == "calls":
            return self.tree.folded(by_thread=True)
        return self._by_thread[{"off-cpu": "offcpu"}.get(self.kind, self.kind)]


def choose(scan, off_cpu, call_paths=True):
    """(kind, stacks, unit, description) of what a capture shows.  Without
    `call_paths` (the text report's table of calls) the stacks of calls are
    not made: a recursion N deep has N paths of up to N frames."""
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


def truncated_note(scan, kind):
    """A line saying how much of a stack view perf's unwind cut short (those
    stacks have the root [truncated]), or None."""
    key = {"off-cpu": "offcpu"}.get(kind, kind)
    cut = getattr(scan, "truncated", {}).get(key)
    if not cut:
        return None
    total = sum({"samples": scan.samples, "marks": scan.marks, "offcpu": scan.offcpu}[key].values())
    share = f"{100 * cut / total:.1f}%" if total else "?"
    amount = (f"{cut / 1e9:.3f} s of {total / 1e9:.3f} s blocked" if key == "offcpu"
              else f"{cut:,} of {total:,} {'CPU samples' if key == 'samples' else 'stack marks'}")
    return (f"{amount} ({share}) have stacks cut short by perf (deeper than its frame "
            f"limit or stack copy): shown with the root {TRUNCATED_FRAME}")


def shown_part(cut):
    """Words for what a cut report shows, or "" for the whole capture."""
    parts = []
    if cut.pids:
        parts.append("pid " + ",".join(map(str, sorted(cut.pids))))
    if cut.tids:
        parts.append("tid " + ",".join(map(str, sorted(cut.tids))))
    if cut.since is not None or cut.until is not None:
        start = f"{cut.since:g}" if cut.since is not None else "0"
        end = f"{cut.until:g}" if cut.until is not None else "end"
        parts.append(f"{start}-{end} s")
    return ", ".join(parts)


def _name(path, cut=None):
    """The capture's name in titles: its directory's, and the cut shown."""
    name = os.path.basename(os.path.abspath(path))
    part = shown_part(cut) if cut is not None else ""
    return f"{name} [{part}]" if part else name


def report_view(scan, fmt, text, path, cut, off_cpu, limit, losses):
    """The View of the capture at `path` (the part `cut` selects) for the
    format `fmt` (`text`: the text table, which shows every kind at once),
    `losses` the line naming lost events or None.  Raises ReportError when
    the capture has nothing the format can show."""
    kind, stacks, unit, what = choose(scan, off_cpu, not text)
    if fmt.timeline and scan.tree.untimed_pids and not off_cpu:
        raise ReportError(f"{path}: calls were recorded without call times "
                          f"(--no-call-times), so they have no timeline; use --format text, "
                          "folded or svg")
    if off_cpu and not stacks and getattr(scan, "tasks", False):
        raise ReportError(f"{path}: no asyncio task waited in this capture")
    if off_cpu and not stacks:
        raise ReportError(f"{path}: no off-CPU time recorded (capture with perf and the "
                          "Default preset, which records context switches)")
    if fmt.needs_stacks and not stacks and not (text and (scan.samples or scan.tree.calls)):
        raise ReportError(f"{path}: no stacks or calls recorded (record with perf, "
                          "--instrumented, or call _mark_stack)")
    if fmt.needs_timeline and not (scan.tree.timelines or scan.ranges or scan.instants
                                   or scan.offcpu_slices or scan.sample_points):
        raise ReportError(f"{path}: nothing to put on a timeline")
    short = truncated_note(scan, kind)
    if short and not text:
        what = f"{what}; {short}"     # in the title each format has
    view = View(scan, path, _name(path, cut), kind, stacks, unit, what, limit)
    view.losses = losses
    return view


def diff_view(scan, base, path, base_path, off_cpu, limit):
    """The View comparing the capture at `path` with the one at `base_path`."""
    kind, stacks, unit, what = choose(scan, off_cpu)
    base_kind, base_stacks, base_unit, base_what = choose(base, off_cpu)
    if not stacks or not base_stacks:
        empty = path if not stacks else base_path
        raise ReportError(f"{empty}: no stacks or calls recorded to compare")
    if (kind, unit) != (base_kind, base_unit):
        raise ReportError(f"cannot compare {what} ({path}) with {base_what} "
                          f"({base_path}): record both the same way")
    name, base_name = _name(path), _name(base_path)
    view = View(scan, path, name, kind, stacks, unit, what, limit)
    view.baseline = base_stacks
    view.heading = (f"{name} against {base_name}: {what}, as shares of each capture's total "
                    f"(change in percentage points)")
    view.title = f"etwtrace: {name} against {base_name} ({what}; red grew, blue shrank)"
    return view
