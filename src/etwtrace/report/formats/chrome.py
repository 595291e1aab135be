"""report --format chrome: Chrome's Trace Event JSON, which Perfetto UI
opens (timeline.py writes it in chunks)."""

from . import timeline as _timeline
from ..view import Format


def write(out, view):
    notes = [n for n in (view.cut_short["samples"], view.cut_short["off-cpu"]) if n]
    _timeline.write_chrome(out, view, f"etwtrace: {view.name}" + "".join(f"; {n}" for n in notes))


def size(view):
    """Bytes the file will have, roughly."""
    records = sum(r.count for *_, r in view.tree.timelines or ()) if view.kind == "calls" else 0
    # A CPU sample is a node id and a time delta in its thread's profile,
    # each node of the thread's call tree written once (its label and its
    # file, and about 60 bytes); a stack mark or a wait is an event.
    samples = [p for p in view.sample_points if p[4] == "SampledProfile"]
    nodes = {}
    for proc, tid, _ts, frames, _kind in samples:
        parent = (proc, tid)
        for frame in frames:
            parent = nodes.setdefault((parent, frame), len(nodes))
    node_bytes = sum(len(frame) * 2 + 60 for _parent, frame in nodes)
    points = len(view.sample_points) - len(samples) + len(view.offcpu_slices)
    # A begin event names its frame; an end does not.
    names = {k: len(view.tree.label(k)) for *_, keys, _r in view.tree.timelines or ()
             for k in keys}
    name = sum(names.values()) / len(names) if names else 0
    return int(records * (85 + name / 2)) + points * 110 + len(samples) * 8 + node_bytes


FORMAT = Format(write, timeline=True, needs_stacks=False, needs_timeline=True, size=size)
