"""report --format chrome: Chrome's Trace Event JSON, which Perfetto UI
opens (_exports.py writes it in chunks)."""

from . import _exports
from ._scan import ReportError
from ._view import Format


def check(view, output):
    if not (view.tree.timelines or view.ranges or view.instants or view.offcpu_slices
            or view.sample_points):
        raise ReportError(f"{view.path}: nothing to put on a timeline")


def write(out, view):
    notes = [n for n in (view.cut_short["samples"], view.cut_short["off-cpu"]) if n]
    _exports.write_chrome(out, view, f"etwtrace: {view.name}" + "".join(f"; {n}" for n in notes))


def size(view):
    """Bytes the file will have, roughly."""
    records = sum(r.count for *_, r in view.tree.timelines or ()) if view.kind == "calls" else 0
    points = len(view.sample_points) + len(view.offcpu_slices)
    # A begin event names its frame; an end does not.
    names = {k: len(view.tree.label(k)) for *_, keys, _r in view.tree.timelines or ()
             for k in keys}
    name = sum(names.values()) / len(names) if names else 0
    return int(records * (85 + name / 2)) + points * 110


FORMAT = Format(write, timeline=True, needs_stacks=False, check=check, size=size)
