"""report --format folded: `root;...;leaf COUNT` lines (Brendan Gregg's form)."""

from . import render as _render
from ..view import Format


def write(out, view):
    out.write(_render.format_folded(view.stacks))


FORMAT = Format(write)
