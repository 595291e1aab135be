"""report --format text: tables of functions with samples, calls and time."""

from . import render as _render
from ..scan import process_name
from ..view import Format


def write(out, view):
    out.write(text(view))


def text(view):
    head = ([view.losses] if view.losses else []) + [f"WARNING: {p}" for p in view.problems]
    sections = [head] if head else []
    off_cpu = view.kind == "off-cpu"
    notes = [f"note: {n}" for n in (view.cut_short["off-cpu" if off_cpu else "samples"],) if n]
    if notes:
        sections.append(notes)
    limit = view.limit
    if off_cpu:
        sections.append(_render.offcpu_tables(view.offcpu, limit))
        return _render.format_text(sections)
    tree = view.tree
    if view.samples:
        sections.append(_render.stack_table(
            view.samples, f"{sum(view.samples.values())} CPU samples", limit=limit))
    if tree.calls:
        sections.append(_render.calls_table(tree.functions(), limit=limit,
                                             times=tree.has_times))
        if tree.untimed_pids:
            pids = ", ".join(process_name(p) for p in sorted(tree.untimed_pids))
            sections.append([f"note: process {pids} recorded calls without call times "
                             "(--no-call-times): counts and callers are exact, durations "
                             "were not measured"])
        pop_notes = []
        if tree.unmatched_pops:
            pop_notes.append(f"{tree.unmatched_pops} returns from calls entered before "
                             "tracing")
        if tree.mismatched_pops:
            pop_notes.append(f"{tree.mismatched_pops} returns that closed calls with lost "
                             "events")
        if tree.unnested_pops:
            pop_notes.append(f"{tree.unnested_pops} returns from calls that were not the "
                             "innermost open one (the program switched stacks, as greenlets do)")
        if pop_notes:
            sections.append(["note: " + ", ".join(pop_notes)])
    if view.marks and not [s for s in sections if s is not head and s is not notes]:
        sections.append(_render.stack_table(
            view.marks, f"{sum(view.marks.values())} stack marks", limit=limit))
    return _render.format_text(sections)


FORMAT = Format(write)
