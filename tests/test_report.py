"""python -m etwtrace report: formats parsed back, stack-tag folding."""
import xml.dom.minidom

import pytest

from conftest import need_perf, run_etwtrace


def test_folded_from_builtin_stack_marks(capture):
    cap = capture("by_arg.py", "a", "b", "c")
    proc = run_etwtrace("report", cap.path, "--format", "folded")
    assert proc.returncode == 0, proc.stderr
    stacks = {}
    for line in proc.stdout.splitlines():
        stack, count = line.rsplit(" ", 1)
        stacks[tuple(f.split(" (")[0] for f in stack.split(";"))] = int(count)
    assert stacks == {("<module>", "a"): 1, ("<module>", "a", "b"): 1, ("<module>", "a", "b", "c"): 1}
    assert all("by_arg.py:" in line for line in proc.stdout.splitlines())


def test_mixed_flame_graph_from_perf_samples(capture, tmp_path):
    need_perf()
    cap = capture("hot.py", "1", recorder="perf")
    folded = run_etwtrace("report", cap.path, "--format", "folded")
    assert folded.returncode == 0, folded.stderr
    counts = {}
    for line in folded.stdout.splitlines():
        stack, count = line.rsplit(" ", 1)
        counts[stack] = int(count)
    total = sum(counts.values())
    inner = sum(c for s, c in counts.items() if "inner (" in s and "outer (" in s.split("inner (")[0])
    assert inner / total > 0.5, (inner, total)
    # Stack tags fold the eval loop away; without them it shows.
    assert "_PyEval_EvalFrameDefault" not in folded.stdout
    raw = run_etwtrace("report", cap.path, "--format", "folded", "--no-stacktags")
    assert "_PyEval_EvalFrameDefault" in raw.stdout

    svg_path = tmp_path / "flame.svg"
    svg = run_etwtrace("report", cap.path, "--format", "svg", "-o", svg_path)
    assert svg.returncode == 0, svg.stderr
    doc = xml.dom.minidom.parse(str(svg_path))
    titles = [t.firstChild.data for t in doc.getElementsByTagName("title")]
    assert any(t.startswith("inner (") for t in titles)
    assert len(doc.getElementsByTagName("rect")) > 3

    text = run_etwtrace("report", cap.path)
    assert text.returncode == 0
    assert "CPU samples" in text.stdout.splitlines()[0]
    assert any("inner (" in l for l in text.stdout.splitlines()[3:8])


@pytest.mark.parametrize("args, message", [
    (["report", "/nonexistent/capture"], "no such capture"),
    (["report", "CAP", "--format", "chrome"], "not yet available"),
    (["report", "CAP", "-o", "/proc/forbidden/out.txt"], "cannot write"),
])
def test_report_bad_input(capture, args, message):
    cap = capture("basic.py")
    args = [str(cap.path) if a == "CAP" else a for a in args]
    proc = run_etwtrace(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
