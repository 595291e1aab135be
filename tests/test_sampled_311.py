"""--sampled on CPython 3.11, which has no _Py_DebugOffsets: the sampler
reads it with a table of offsets (_pyremote.FIXED_OFFSETS).  The table is
checked against 3.11's own headers (tools/remote_offsets.c), and Debian's
system Python 3.11 (a build of its own, libpython linked in, no frame
pointers) is sampled, its native frames unwound from stack copies.  The host run's 3.11 (shared libpython) runs all of
test_sampled.py as its target."""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT, script_block
from etwtrace.sampled import remote as _pyremote
from test_sampled import (REQUIRE, CpuWatch, Running, _folded, _name, _sample,
                          assert_sampled_as_it_ran, need_sampler, samples_due)

TOOL = ROOT.parent / "tools" / "remote_offsets.c"
DEBIAN_311 = "/usr/bin/python3.11"


def _includes_311():
    """Include directories of the 3.11s here that carry internal headers."""
    found = []
    if sys.version_info[:2] == (3, 11):
        found.append(sysconfig.get_paths()["include"])
    found.append("/usr/include/python3.11")
    return sorted({d for d in found if os.path.isfile(os.path.join(d, "internal",
                                                                   "pycore_frame.h"))})


def test_the_311_offsets_are_311s_own(tmp_path):
    includes = _includes_311()
    if not includes:
        if REQUIRE and sys.version_info[:2] == (3, 11):
            pytest.fail("this 3.11 has no internal headers to check the offsets with")
        pytest.skip("no CPython 3.11 headers here")
    for include in includes:
        exe = tmp_path / "remote_offsets"
        subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", f"-I{include}", str(TOOL), "-o",
                        str(exe)], check=True)
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
        table = {(section, field): int(value)
                 for section, field, value in (line.split() for line in out.splitlines())}
        assert table == _pyremote.FIXED_OFFSETS[(3, 11)], include


def test_debians_python_311_is_sampled_with_its_lines(tmp_path):
    need_sampler()
    if not os.path.isfile(DEBIAN_311):
        pytest.skip(f"no {DEBIAN_311} here")
    target = Running("sampled_target.py", 4, python=DEBIAN_311)
    watch = CpuWatch()
    cap, proc = _sample(tmp_path, target.proc.pid, 2, watch=watch)
    status, out = target.finish()
    assert status == 0 and out.strip() == "done"
    stacks = _folded(cap)
    python = {}
    for stack, n in stacks.items():
        names = tuple(_name(f) for f in stack if f.endswith(")"))
        python[names] = python.get(names, 0) + n
    inner = sum(n for s, n in python.items() if s and s[-1] == "inner")
    right = sum(n for s, n in python.items() if s[-3:] == ("<module>", "outer", "inner"))
    assert_sampled_as_it_ran(inner, samples_due(cap, watch, target.proc.pid, 999, 1.5), 0.8)
    assert right >= 0.99 * inner, sorted(python.items(), key=lambda kv: -kv[1])
    lines = {f.rsplit(":", 1)[1].rstrip(")") for s in stacks for f in s
             if _name(f) == "inner" and f.endswith(")")}
    assert lines and lines <= {str(n) for n in script_block("sampled_target.py", "inner")}, lines
    # Its interpreter keeps no frame pointers: the native frames are
    # unwound from stack copies, whole from _start to the evaluator under
    # <module>.
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    assert "no frame pointers" in manifest["native_frames"]
    ends = manifest["native_unwinding"]
    assert ends["complete"] >= 0.99 * sum(ends.values()), ends
    assert "cut short" not in proc.stderr
    whole = 0
    for stack, n in _folded(cap, "--no-stacktags").items():
        names = [_name(f).split(" [")[0] for f in stack]     # "name [file]" for C
        if names[0] == "_start" and "<module>" in names \
                and names[names.index("<module>") - 1] == "_PyEval_EvalFrameDefault":
            whole += n
    assert whole >= 0.99 * manifest["samples"], (whole, manifest["samples"])


def test_an_evaluator_call_inside_another_is_told_apart_on_311(tmp_path):
    """3.11 marks the first frame of each evaluator call (is_entry) instead
    of pushing an entry frame: key, called from C by sorted, must still
    sit right above callback."""
    need_sampler()
    python = sys.executable if sys.version_info[:2] == (3, 11) else DEBIAN_311
    if not os.path.isfile(python):
        pytest.skip("no CPython 3.11 here")
    target = Running("sampled_target.py", 4, "callback", python=python)
    watch = CpuWatch()
    cap, _ = _sample(tmp_path, target.proc.pid, 2, watch=watch)
    target.finish()
    total = right = 0
    for stack, n in _folded(cap).items():
        names = [_name(f) for f in stack if f.endswith(")")]
        if "key" in names:
            total += n
            right += n if names[:3] == ["<module>", "callback", "key"] else 0
    assert_sampled_as_it_ran(total, samples_due(cap, watch, target.proc.pid, 999, 1.5), 0.7)
    assert right >= 0.99 * total, (right, total)
