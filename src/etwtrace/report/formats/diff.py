"""report --diff BASELINE: the comparison of two captures in text, folded
(flamegraph.pl's difffolded form) or an SVG coloured by change (compare.py
computes the shares)."""

from .. import compare as _compare
from . import render as _render


def write_text(out, view):
    out.write(_compare.text(view.stacks, view.baseline, view.heading, view.limit))


def write_folded(out, view):
    out.write(_compare.folded(view.stacks, view.baseline))


def write_svg(out, view):
    """PATH's flame graph grouped by process and thread as the plain SVG
    is; each frame coloured by how its call path's share of the whole
    changed, over all threads (pids and tids differ between two runs, so
    threads are not matched)."""
    color = _compare.colors(view.stacks, view.baseline)

    def color_of(path):     # (process, thread, frames...): the groups are grey
        shade, note = color(path[2:])
        return shade, f"{note} (the call path, all threads)"
    grouped = _render.thread_groups(view.thread_stacks(), view.threads)
    out.write(_render.format_svg(grouped, view.title, view.unit, groups=2, color_of=color_of))


# The formats --diff writes, by name.
WRITERS = {"text": write_text, "folded": write_folded, "svg": write_svg}
