"""report --format svg: a self-contained flame graph, one group per thread."""

from . import render as _render
from ..view import Format


def write(out, view):
    total = sum(view.stacks.values())
    amount = f"{total / 1e6:.3f} ms" if view.unit == "ns" else f"{total}"
    grouped = _render.thread_groups(view.thread_stacks(), view.threads)
    out.write(_render.format_svg(grouped, f"etwtrace: {view.name} ({amount}, {view.what})",
                                  view.unit, groups=2))


FORMAT = Format(write)
