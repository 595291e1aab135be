"""A capture directory's manifest (etwtrace-capture.json) and the names of
the files a capture holds: shared by the launcher, which writes them, and
the readers."""

import json
import os

from .files import TraceError, read_small

MANIFEST = "etwtrace-capture.json"
PERF_SCRIPT = "perf.script"
BUILDID_DIR = "buildid"     # perf's build-id cache of the capture's files
PERF_DATA = "perf.data"     # perf's samples: the capture keeps one copy of them
# `perf inject --jit`'s output while it is made; it then replaces perf.data
# (the manifest's PERF_INJECTED says so).
PERF_JIT_DATA = "perf.jit.data"
PERF_INJECTED = "perf_jit_injected"

# What a manifest can be: written into 8 KiB (capture.MANIFEST_ROOM), longer
# only with very many processes' counts.
MANIFEST_LIMIT = 16 * 2**20


def load_manifest(path):
    """The manifest of the capture at `path` ({} when it has none);
    TraceError when it is not one (not a regular file, too large, sparse,
    not a JSON object, or nested too deep to read)."""
    target = os.path.join(path, MANIFEST)
    try:
        data = read_small(target, MANIFEST_LIMIT)
    except TraceError:
        if not os.path.lexists(target):
            return {}
        raise
    return parse_manifest(data, target)


def parse_manifest(data, target):
    """The manifest in `data` (bytes of the file `target`): TraceError
    when it is not one."""
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise TraceError(f"{target}: JSON nested too deep; not a manifest") from None
    except (UnicodeDecodeError, ValueError) as ex:
        raise TraceError(f"{target}: not JSON ({ex}); not a manifest") from None
    if not isinstance(value, dict):
        raise TraceError(f"{target}: not a JSON object; not a manifest")
    return value


def read_manifest(path):
    """The manifest, or {} when there is none or it cannot be read."""
    try:
        return load_manifest(path)
    except TraceError:
        return {}


def is_own_capture(data):
    """Whether etwtrace wrote this manifest (its own, or one of an earlier
    etwtrace, which had no "tool" key)."""
    if data.get("tool") == "etwtrace":
        return True
    return "tool" not in data and {"format", "mode", "command", "started"} <= data.keys()
