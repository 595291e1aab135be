"""report --format folded: `root;...;leaf COUNT` lines (Brendan Gregg's form)."""

from . import render as _formats
from ..view import Format


def write(out, view):
    out.write(_formats.format_folded(view.stacks))


FORMAT = Format(write)
