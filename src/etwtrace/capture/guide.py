"""A capture's README.txt: which of its files to open with which tool.

Written from what the capture holds, so each line names files that are
there.  perf and hotspot look for the perf maps and the `perf inject`
images in /tmp, where the capture leaves none; where a tool can be pointed
at the capture's own copies (perf's --buildid-dir and hotspot's
--extraLibPaths, for the images), the commands do so.
"""

import os
import shlex
import sys

from ..trace import manifest as _manifest
from ..trace.manifest import BUILDID_DIR, PERF_DATA

# The capture's build-id cache of the `perf inject --jit` images.


def text(path):
    q = shlex.quote(os.path.abspath(path))
    has = lambda name: os.path.exists(os.path.join(path, name))     # noqa: E731
    lines = [
        "This directory is an etwtrace capture. Open it with:",
        "",
        f"  python -m etwtrace report {q}                  functions, calls, samples (text)",
        f"  python -m etwtrace report {q} --format svg -o flame.svg",
        "      also: folded, speedscope, chrome (Perfetto), pprof; --off-cpu; --diff OTHER",
    ]
    if has("ctf"):
        lines += [
            "",
            "  babeltrace2 " + q + "/ctf/pid-PID          the built-in recorder's events (CTF 1.8)",
        ]
    if has(PERF_DATA):
        lines += [
            "",
            f"  perf report -i {q}/{PERF_DATA}",
            "      mixed Python/native stacks; perf names Python frames from the perf maps",
            "      and jitted images in /tmp, where the capture leaves none (see below)",
        ]
        if has(BUILDID_DIR):
            lines += [
                f"  perf --buildid-dir {q}/{BUILDID_DIR} report -i {q}/{PERF_DATA}",
                "      the same, the images of the Python trampolines taken from this",
                "      capture's build-id cache",
            ]
        if has("jit"):
            lines += [
                f"  hotspot --extraLibPaths {q}/jit {q}/{PERF_DATA}",
                "      the same in a GUI: the images from jit/, the Python names from",
                "      /tmp/perf-PID.map only (see below)",
            ]
        else:
            lines += [
                f"  hotspot {q}/{PERF_DATA}",
                "      the same in a GUI; it names Python frames from /tmp/perf-PID.map only",
            ]
    if has(PERF_DATA) and (has("maps") or has("jit")):
        lines += [
            "",
            "perf and hotspot read the perf maps and jitted images from /tmp. The",
            "capture keeps them in maps/ and jit/ and leaves no copy in /tmp: put them",
            "there first (on this machine or another), and remove them after:",
            f"  cp {q}/maps/* {q}/jit/* /tmp/",
        ]
    lines += ["", f"{_manifest.MANIFEST} says how the capture was made and how the program ended."]
    return "\n".join(lines) + "\n"


def write(path):
    """Writes README.txt; on failure (a full disk) says so in one line and
    goes on: the capture is complete without it."""
    target = os.path.join(path, "README.txt")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text(path))
    except OSError as ex:
        try:
            os.unlink(target)
        except OSError:
            pass
        print(f"etwtrace: warning: {target} not written: {ex.strerror}", file=sys.stderr)
