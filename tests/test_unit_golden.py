"""Every report output, as before: four stored captures (instrumented
calls, stack marks, perf samples with calls, perf samples with off-CPU
waits; tests/data/report/*.tar.gz) reported in every format and option mix
give the same bytes, error lines and exit status as the report did before
its writers took a View (the digests in tests/data/report/expected.json
were made by that code).

Text tables are compared as sorted lines: their order among rows with
equal counts follows Python's string hashing, so it differs run to run.

    python tests/test_unit_golden.py regen    # rewrite expected.json
"""

import contextlib
import hashlib
import io
import json
import pathlib
import sys
import tarfile

import pytest

pytestmark = pytest.mark.unit

DATA = pathlib.Path(__file__).parent / "data" / "report"
EXPECTED = DATA / "expected.json"
CAPTURES = ("calls", "marks", "perfcalls", "perfoff")
FORMATS = ("text", "folded", "svg", "speedscope", "chrome", "pprof")


def cases():
    """{case name: report arguments}, CAP/NAME standing for a capture."""
    out = {}
    for cap in CAPTURES:
        for fmt in FORMATS:
            limit = ("--limit", "0") if fmt == "text" else ()
            out[f"{cap}.{fmt}"] = (f"CAP/{cap}", "--format", fmt, *limit)
            out[f"{cap}.{fmt}.off-cpu"] = (f"CAP/{cap}", "--format", fmt, "--off-cpu", *limit)
            out[f"{cap}.{fmt}.cut"] = (f"CAP/{cap}", "--format", fmt, "--from", "0.01",
                                       "--to", "5", "--no-stacktags", *limit)
        for fmt in ("text", "folded", "svg", "chrome"):
            out[f"{cap}.diff.{fmt}"] = ("CAP/perfcalls", "--format", fmt, "--diff", f"CAP/{cap}")
    out["calls.text.limit"] = ("CAP/calls", "--limit", "2")
    out["calls.text.tid"] = ("CAP/calls", "--tid", "1")
    for fmt in FORMATS:
        # The recorded thread numbers: the worker thread, the main thread.
        out[f"calls.{fmt}.worker"] = ("CAP/calls", "--format", fmt, "--tid", "13079",
                                      "--from", "0", "--to", "5")
        out[f"perfoff.{fmt}.main"] = ("CAP/perfoff", "--format", fmt, "--pid", "13152",
                                      "--tid", "13152", "--from", "0.05")
    for fmt in ("text", "folded", "svg"):
        # A cut against the whole (the baseline keeps the time window only).
        out[f"perfoff.diff-main.{fmt}"] = ("CAP/perfoff", "--format", fmt, "--tid", "13152",
                                           "--from", "0.05", "--diff", "CAP/perfoff")
        out[f"perfoff.diff-off-cpu.{fmt}"] = ("CAP/perfoff", "--format", fmt, "--off-cpu",
                                              "--from", "0.05", "--diff", "CAP/perfoff")
    out["perfoff.folded.diff-off-cpu"] = ("CAP/perfoff", "--format", "folded", "--off-cpu",
                                          "--diff", "CAP/perfcalls")
    return out


def unpack(into):
    for cap in CAPTURES:
        with tarfile.open(DATA / f"{cap}.tar.gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:
                tar.extractall(into)        # before 3.12's filters; our own file
    return into


def run_case(root, args, out_path):
    """(exit status, stderr, digest of the output) of one report."""
    from etwtrace.cli import main as _cli
    from etwtrace.report import command as _report
    getattr(_report, "_said", set()).clear()    # warnings are said once per process
    args = [a.replace("CAP", str(root)) for a in args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = _cli.main(["report", *args, "-o", str(out_path)])
    data = out_path.read_bytes() if out_path.exists() else b""
    if "--format" not in args or args[args.index("--format") + 1] == "text":
        data = b"\n".join(sorted(data.split(b"\n")))
    out_path.unlink(missing_ok=True)
    return [status, err.getvalue().replace(str(root), "CAP"), hashlib.sha256(data).hexdigest()]


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", sorted(cases()))
def test_report_output_is_unchanged(captures, tmp_path, name):
    expected = json.loads(EXPECTED.read_text())[name]
    assert run_case(captures, cases()[name], tmp_path / "out") == expected


def test_every_case_has_an_expected_output():
    assert sorted(json.loads(EXPECTED.read_text())) == sorted(cases())


if __name__ == "__main__" and sys.argv[1:] == ["regen"]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(pathlib.Path(tmp))
        results = {name: run_case(root, args, root / "out") for name, args in cases().items()}
    EXPECTED.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"{len(results)} cases, statuses {sorted({r[0] for r in results.values()})}")
