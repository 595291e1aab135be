"""A capture directory's manifest (etwtrace-capture.json) and the names of
the files a capture holds: shared by the launcher, which writes them, and
the readers."""

import json
import os

MANIFEST = "etwtrace-capture.json"
PERF_SCRIPT = "perf.script"


def read_manifest(path):
    try:
        with open(os.path.join(path, MANIFEST), "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_own_capture(path):
    """Whether etwtrace wrote this directory's manifest (its own, or one of
    an earlier etwtrace, which had no "tool" key)."""
    data = read_manifest(path)
    if data.get("tool") == "etwtrace":
        return True
    return "tool" not in data and {"format", "mode", "command", "started"} <= data.keys()
