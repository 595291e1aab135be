"""report --format speedscope: speedscope's JSON file format, one profile
per thread (timeline.py writes it in chunks)."""

from . import timeline as _timeline
from ..view import Format


def write(out, view):
    _timeline.write_speedscope(out, view, view.kind, view.unit,
                              f"etwtrace: {view.name} ({view.what})")


def size(view):
    """Bytes the file will have, roughly."""
    records = sum(r.count for *_, r in view.tree.timelines or ()) if view.kind == "calls" else 0
    points = len(view.sample_points) + len(view.offcpu_slices)
    # {"type":"O","frame":N,"at":T}, or a stack of frame indices.
    return records * 45 + points * 60


FORMAT = Format(write, timeline=True, size=size)
