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
    out.write(_render.format_svg(view.stacks, view.title, view.unit,
                                  color_of=_compare.colors(view.stacks, view.baseline)))


# The formats --diff writes, by name.
WRITERS = {"text": write_text, "folded": write_folded, "svg": write_svg}
