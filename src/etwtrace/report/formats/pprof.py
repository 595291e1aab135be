"""report --format pprof: a gzipped profile.proto (go tool pprof, Pyroscope)."""

from . import profile_proto as _profile_proto
from ..view import Format


def write(out, view):
    if view.kind == "calls":
        types = [("calls", "count")] + ([("time", "nanoseconds")] if view.tree.has_times else [])
        samples = {key: values[:len(types)] for key, values in view.tree.paths().items()}
    else:
        kind, unit = {"samples": ("samples", "count"), "marks": ("marks", "count"),
                      "off-cpu": ("blocked", "nanoseconds")}[view.kind]
        types = [(kind, unit)]
        samples = {key: (value,) for key, value in view.thread_stacks().items()}
    span = (view.last - view.first) if view.first is not None else 0
    out.write(_profile_proto.encode(samples, types, duration_ns=span,
                            comments=[f"etwtrace: {view.name} ({view.what})"],
                            thread_names=view.threads))


FORMAT = Format(write, binary=True)
