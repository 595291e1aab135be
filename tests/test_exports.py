"""What each client is given (#10): per-thread sampled timelines in
speedscope and the Trace Event Format, mark labels in every format, the
SVG grouped by process and thread and as wide as the window, pprof read by
`go tool pprof`, report --diff, and cutting a view (--pid/--tid/--from/--to)
with a size warning."""

import contextlib
import glob
import io
import json
import os
import re
import subprocess
import xml.dom.minidom
from collections import Counter

import pytest

import etwtrace
from conftest import SCRIPTS, client_env, need_client, report_output, run_etwtrace
from etwtrace.cli import main as _cli
from etwtrace.report import command as _report


_report_out = report_output


def _name(label):
    return label.split(" (")[0]


def _fails(*args, status=2):
    """A report that must fail: one line on stderr, status 2 (usage) or
    1 (a failure)."""
    proc = run_etwtrace("report", *args)
    assert proc.returncode == status, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def _capture(tmp_path, name, script, *args, options=("--instrumented",), recorder="builtin"):
    path = tmp_path / name
    proc = run_etwtrace(*options, "--capture", path, "--recorder", recorder, "--",
                        SCRIPTS / script, *args)
    assert proc.returncode == 0, proc.stderr
    return path


def _text_calls(text, script):
    """{function: calls} of the text report's table rows of `script`."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)(?:\s+[\d.]+){0,3}\s+(\S.* \(.*%s:\d+\))$" % re.escape(script),
                     line)
        if m and " <- " not in line and " -> " not in line:
            rows.setdefault(_name(m.group(2)), int(m.group(1)))
    return rows


@pytest.fixture(scope="module")
def spinners(tmp_path_factory):
    """A perf capture of two threads spinning in functions of their own."""
    from conftest import need_perf
    need_perf()
    return _capture(tmp_path_factory.mktemp("spin"), "cap", "spinners.py",
                    options=("--stack",), recorder="perf")


# ---- timelines of sampled captures ----

def test_speedscope_gives_each_thread_its_own_samples_in_time_order(spinners):
    doc = json.loads(_report_out(spinners, "--format", "speedscope"))
    frames = doc["shared"]["frames"]
    chrome = json.loads(_report_out(spinners, "--format", "chrome"))
    nodes = chrome["stackFrames"]
    by_thread = {}
    for s in chrome["samples"]:
        by_thread.setdefault((s["pid"], s["tid"]), []).append(s)
    spinning = {}
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled"
        m = re.fullmatch(r"pid (\d+) (MainThread|thread (\d+))", profile["name"])
        assert m, profile["name"]
        pid = int(m.group(1))
        tid = pid if m.group(2) == "MainThread" else int(m.group(3))
        names = [[_name(frames[i]["name"]) for i in s] for s in profile["samples"]]
        own = {n for stack in names for n in stack} & {"spin_one", "spin_two"}
        assert len(own) <= 1, f"{profile['name']} holds both threads' functions"
        if own:
            spinning[own.pop()] = profile["name"]
        # The same samples as the Trace Event Format's, in the order of
        # their timestamps.
        samples = by_thread[(pid, tid)]
        assert [s["ts"] for s in samples] == sorted(s["ts"] for s in samples)
        leaves = [_name(nodes[s["sf"]]["name"]) for s in samples]
        assert leaves == [stack[-1] for stack in names]
    assert set(spinning) == {"spin_one", "spin_two"}
    assert spinning["spin_one"] != spinning["spin_two"]


def test_chrome_samples_follow_the_trace_event_format(spinners):
    doc = json.loads(_report_out(spinners, "--format", "chrome"))
    nodes = doc["stackFrames"]
    assert nodes and all(isinstance(k, str) for k in nodes)
    for node in nodes.values():
        assert isinstance(node["name"], str) and node["category"] in ("python", "native")
        assert node.get("parent") is None or node["parent"] in nodes
    threads = {(e["pid"], e["tid"]) for e in doc["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    per_thread = Counter()
    for s in doc["samples"]:
        assert s["sf"] in nodes and s["name"] == "cpu-clock" and s["weight"] == 1
        assert (s["pid"], s["tid"]) in threads
        stack = []
        node = s["sf"]
        while node is not None:
            stack.append(nodes[node]["name"])
            node = nodes[node].get("parent")
        for spin in ("spin_one", "spin_two"):
            if any(_name(f) == spin for f in stack):
                per_thread[(spin, s["tid"])] += 1
    # Each spinner's samples are on one thread; no instant events for them.
    assert len({t for _, t in per_thread}) == 2 and len(per_thread) == 2
    assert all(n >= 100 for n in per_thread.values()), per_thread
    assert not [e for e in doc["traceEvents"] if e.get("cat") == "cpu-sample"]


# ---- mark labels ----

def test_stack_mark_labels_in_text_svg_and_pprof(capture, tmp_path):
    cap = capture("by_arg.py", "a", "c")
    text = _report_out(cap.path)
    assert re.search(r"^\s+1\s.*\smark: a$", text, re.M), text
    assert re.search(r"^\s+1\s.*\smark: c$", text, re.M), text
    _report_out(cap.path, "--format", "svg", "-o", tmp_path / "m.svg")
    doc = xml.dom.minidom.parse(str(tmp_path / "m.svg"))
    titles = [t.firstChild.data for t in doc.getElementsByTagName("title")]
    assert any(t.startswith("mark: a (1 samples") for t in titles), titles
    assert any(t.startswith("mark: c (1 samples") for t in titles), titles
    need_client("go")
    _report_out(cap.path, "--format", "pprof", "-o", tmp_path / "m.pb.gz")
    top = _pprof_top(tmp_path / "m.pb.gz", tmp_path)
    assert top.get("mark: a") == 1 and top.get("mark: c") == 1, top


# ---- SVG ----

def _svg_frames(path):
    """[(name, y, width)] of an SVG flame graph's frames."""
    doc = xml.dom.minidom.parse(str(path))
    out = []
    for g in doc.getElementsByTagName("g"):
        if g.getAttribute("class") == "f":
            rect = g.getElementsByTagName("rect")[0]
            out.append((g.getAttribute("data-n"), float(rect.getAttribute("y")),
                        float(rect.getAttribute("width"))))
    return out


def test_svg_groups_frames_under_process_and_thread(capture, tmp_path):
    cap = capture("report_calls.py", mode="instrumented")
    out = tmp_path / "calls.svg"
    _report_out(cap.path, "--format", "svg", "-o", out)
    root = xml.dom.minidom.parse(str(out)).documentElement
    assert root.getAttribute("width") == "100%"
    frames = _svg_frames(out)
    rows = sorted({y for _, y, _ in frames}, reverse=True)     # root row first
    level = [(n, rows.index(y)) for n, y, _ in frames]
    processes = [n for n, lv in level if lv == 0]
    threads = [n for n, lv in level if lv == 1]
    assert len(processes) == 1 and re.fullmatch(r"process \d+", processes[0])
    assert sorted(re.sub(r"\d+", "N", t) for t in threads) == ["MainThread (tid N)", "thread N"]
    # leaf is drawn in both threads, above each thread's frame.
    leaves = [lv for n, lv in level if _name(n) == "leaf"]
    assert len(leaves) == 2 and all(lv >= 5 for lv in leaves)


def _chromium_dom(url, width):
    """The document after its scripts ran, in headless chromium."""
    for name in ("chromium", "chromium-browser"):
        exe = subprocess.run(["which", name], stdout=subprocess.PIPE, encoding="utf-8").stdout
        if exe.strip():
            break
    proc = subprocess.run([exe.strip(), "--headless", "--no-sandbox", "--disable-gpu",
                           f"--window-size={width},800", "--virtual-time-budget=2000",
                           "--dump-dom", url], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", timeout=120,
                          env=client_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_svg_takes_the_window_width_in_chromium(capture, tmp_path):
    need_client("chromium")
    cap = capture("report_calls.py", mode="instrumented")
    out = tmp_path / "calls.svg"
    _report_out(cap.path, "--format", "svg", "-o", out)
    widths = {}
    for window in (700, 1800):
        dom = _chromium_dom(out.as_uri(), window)
        # The root frame (process) spans the width less the margins.
        m = re.search(r'data-n="process \d+".*?<rect x="([\d.]+)" y="\d+" width="([\d.]+)"',
                      dom, re.S)
        assert m, dom[:2000]
        widths[window] = float(m.group(2))
    assert abs(widths[700] - (700 - 20)) < 30, widths
    assert abs(widths[1800] - (1800 - 20)) < 30, widths


def test_svg_opens_on_its_root_and_searches_in_chromium(tmp_path):
    """A graph taller than the window is turned over in the browser (the
    root under the title, on the first screen); #search=RE marks the
    frames whose full name matches and says their share of the whole."""
    need_client("chromium")
    from etwtrace.report.formats.render import format_svg
    deep = ("process 1",) + tuple(f"f{i} (deep.py:{i})" for i in range(120))
    out = tmp_path / "deep.svg"
    out.write_text(format_svg(Counter({deep: 10, ("process 1", "main (x.py:1)"): 5}), "deep",
                              groups=1))
    dom = _chromium_dom(out.as_uri() + "#search=%5Ef1%5B0-9%5D%20", 1200)   # ^f1[0-9] ; 800 px
    assert 'data-turned="root at the top"' in dom
    m = re.search(r'data-n="process 1".*?<rect x="[\d.]+" y="([\d.]+)"', dom, re.S)
    assert m and float(m.group(1)) < 100, dom[:2000]
    marked = re.findall(r'data-n="([^"]+)"[^>]*class="f match"|class="f match"[^>]*data-n="([^"]+)"',
                        dom)
    names = sorted(a or b for a, b in marked)
    assert names == sorted(f"f{i} (deep.py:{i})" for i in range(10, 20)), names
    # f10 to f19 lie on one tower, 10 of the 15 samples: counted once.
    assert re.search(r'id="matched"[^>]*>matched 66\.7% \(\^f1\[0-9\] \)<', dom), dom[:3000]
    # A graph that fits the window stays as drawn (root at the bottom).
    small = tmp_path / "small.svg"
    small.write_text(format_svg(Counter({("process 1", "main (x.py:1)"): 5}), "small"))
    assert "data-turned=" not in _chromium_dom(small.as_uri(), 1200)


# ---- pprof ----

def _pprof_top(path, tmp_path, *options):
    """{function: flat value} from `go tool pprof -top`."""
    env = client_env(PPROF_TMPDIR=str(tmp_path), HOME=str(tmp_path),
                     GOCACHE=str(tmp_path / "gocache"))
    proc = subprocess.run(["go", "tool", "pprof", "-top", "-nodecount=1000", *options,
                           str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          encoding="utf-8", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    flat = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(\d+)(\S*)\s+[\d.]+%\s+[\d.]+%\s+(\d+)\S*\s+[\d.]+%\s+(.*)$", line)
        if m:
            flat[m.group(4).strip()] = int(m.group(1))
    return flat


def test_pprof_of_instrumented_calls_has_exact_counts(tmp_path):
    need_client("go")
    cap = _capture(tmp_path, "cap", "ratio.py", "300", "100")
    _report_out(cap, "--format", "pprof", "-o", tmp_path / "calls.pb.gz")
    top = _pprof_top(tmp_path / "calls.pb.gz", tmp_path, "-sample_index=calls")
    assert top["a"] == 300 and top["b"] == 100 and top["main"] == 1, top
    # Python's <module> keeps its name (pprof cut <...> out as C++
    # template arguments and showed "<unknown>").
    assert top["<module>"] == 1 and "<unknown>" not in top, top
    # And the time of the calls, in nanoseconds.
    proc = subprocess.run(["go", "tool", "pprof", "-raw", str(tmp_path / "calls.pb.gz")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                          env=client_env(HOME=str(tmp_path)), timeout=300)
    assert "calls/count time/nanoseconds" in proc.stdout, proc.stdout[:500]


def test_pprof_of_cpu_samples_matches_the_report(spinners, tmp_path):
    need_client("go")
    _report_out(spinners, "--format", "pprof", "-o", tmp_path / "cpu.pb.gz")
    top = _pprof_top(tmp_path / "cpu.pb.gz", tmp_path)
    folded = Counter()
    for line in _report_out(spinners, "--format", "folded").splitlines():
        stack, value = line.rsplit(" ", 1)
        folded[_name(stack.split(";")[-1])] += int(value)
    for spin in ("spin_one", "spin_two"):
        assert top[spin] == folded[spin] > 0, (spin, top.get(spin), folded[spin])


def test_pprof_refuses_a_terminal(capture):
    cap = capture("by_arg.py", "a")
    # Not a terminal here: the bytes go to stdout.
    proc = subprocess.run([os.sys.executable, "-m", "etwtrace", "report", cap.path,
                           "--format", "pprof"], stdout=subprocess.PIPE)
    assert proc.returncode == 0 and proc.stdout[:2] == b"\x1f\x8b"


# ---- --diff ----

def test_diff_shows_which_paths_took_a_larger_share(tmp_path):
    base = _capture(tmp_path, "base", "ratio.py", "100", "100",
                    options=("--instrumented", "--no-call-times"))
    new = _capture(tmp_path, "new", "ratio.py", "300", "100",
                   options=("--instrumented", "--no-call-times"))
    text = _report_out(new, "--diff", base)
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+([+-][\d.]+)\s+(\S+) \(.*ratio\.py:\d+\)$", line)
        if m:
            rows[m.group(4)] = tuple(float(g) for g in m.groups()[:3])
    # By calls: a was 100 of 201+1 calls, now 300 of 401+1.
    assert rows["a"][2] == pytest.approx(100 * (300 / 402 - 100 / 202), abs=0.1)
    assert rows["b"][2] == pytest.approx(100 * (100 / 402 - 100 / 202), abs=0.1)
    folded = {}
    for line in _report_out(new, "--diff", base, "--format", "folded").splitlines():
        stack, before, after = line.rsplit(" ", 2)
        folded[_name(stack.split(";")[-1])] = (int(before), int(after))
    assert folded["a"] == (100, 300) and folded["b"] == (100, 100)
    _report_out(new, "--diff", base, "--format", "svg", "-o", tmp_path / "d.svg")
    doc = xml.dom.minidom.parse(str(tmp_path / "d.svg"))
    fills = {}
    for g in doc.getElementsByTagName("g"):
        if g.getAttribute("class") == "f":
            fills[_name(g.getAttribute("data-n"))] = g.getElementsByTagName("rect")[0].getAttribute("fill")
    assert fills["a"].startswith("hsl(0,") and fills["b"].startswith("hsl(220,"), fills


def test_diff_refuses_what_cannot_be_compared(tmp_path, capture):
    calls = _capture(tmp_path, "calls", "ratio.py", "1", "1")
    marks = capture("by_arg.py", "a")
    assert "cannot compare" in _fails(calls, "--diff", marks.path, status=1)
    assert "--diff writes text, folded or svg" in _fails(calls, "--diff", calls,
                                                         "--format", "chrome")
    assert "no such" in _fails(calls, "--diff", tmp_path / "missing").lower()


# ---- cutting a view ----

def test_from_and_to_cut_calls_by_time(tmp_path):
    cap = _capture(tmp_path, "cap", "phases.py")
    early = _text_calls(_report_out(cap, "--to", "0.3", "--limit", "0"), "phases.py")
    late = _text_calls(_report_out(cap, "--from", "0.3", "--limit", "0"), "phases.py")
    assert early.get("first") == 100 and "second" not in early, early
    assert late.get("second") == 100 and "first" not in late, late
    doc = json.loads(_report_out(cap, "--from", "0.3", "--format", "speedscope"))
    frames = doc["shared"]["frames"]
    opened = Counter(_name(frames[e["frame"]]["name"]) for p in doc["profiles"]
                     for e in p["events"] if e["type"] == "O")
    assert opened["second"] == 100 and opened["first"] == 0
    assert "[0.3-end s]" in doc["name"]


def test_tid_and_pid_cut_threads_and_processes(tmp_path):
    cap = _capture(tmp_path, "cap", "report_calls.py")
    with etwtrace.open_trace(cap) as trace:
        pushes = {(e.pid, e.tid) for e in trace if e.name == "PythonFunctionPush"}
    (pid,) = {p for p, _ in pushes}
    (worker,) = {t for _, t in pushes if t != pid}
    text = _report_out(cap, "--tid", worker, "--limit", "0")
    assert _text_calls(text, "report_calls.py") == {"worker": 1, "top": 1, "middle": 2,
                                                    "leaf": 15}
    main = _text_calls(_report_out(cap, "--tid", pid, "--limit", "0"), "report_calls.py")
    assert main == {"<module>": 1, "top": 1, "middle": 2, "leaf": 15}
    assert _text_calls(_report_out(cap, "--pid", pid, "--limit", "0"),
                       "report_calls.py")["leaf"] == 30
    assert "no stacks or calls" in _fails(cap, "--pid", pid + 1 if pid < 4000000 else 1,
                                          status=1)


@pytest.mark.parametrize("args, words", [
    (("--from", "soon"), "not a number of seconds"),
    (("--to", "-1"), "not a number of seconds"),
    (("--from", "2", "--to", "1"), "is not after"),
    (("--tid", "x"), "not a list of ids"),
    (("--pid", "0"), "ids are positive"),
])
def test_bad_cuts_are_one_line_errors(capture, args, words):
    cap = capture("by_arg.py", "a")
    assert words in _fails(cap.path, *args)


def test_large_timelines_are_announced_with_their_size(tmp_path, monkeypatch):
    cap = _capture(tmp_path, "cap", "ratio.py", "20000", "20000")
    for fmt in ("speedscope", "chrome"):
        out = tmp_path / f"out.{fmt}"
        monkeypatch.setattr(_report, "WARN_BYTES", 1024)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert _cli.main(["report", str(cap), "--format", fmt, "-o", str(out)]) == 0
        m = re.search(r"this \w+ file will be about ([\d,]+) MiB; --pid, --tid and "
                      r"--from/--to SECONDS cut a smaller view", err.getvalue())
        assert m, err.getvalue()
        # The estimate, in bytes, is within a factor of two of the file.
        monkeypatch.setattr(_report, "WARN_BYTES", 0)
        actual = out.stat().st_size
        with _report_view(cap, fmt) as view:
            estimate = _report.FORMATS[fmt].size(view)
        assert actual / 2 <= estimate <= actual * 2, (fmt, estimate, actual)
    # Small outputs say nothing.
    monkeypatch.setattr(_report, "WARN_BYTES", 100 * 2**20)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _cli.main(["report", str(cap), "--format", "chrome", "-o",
                          str(tmp_path / "c")]) == 0
    assert err.getvalue() == ""


@contextlib.contextmanager
def _report_view(path, fmt):
    from etwtrace.report.scan import Scan
    from etwtrace.report.view import report_view
    from etwtrace.trace.capture import Capture
    with Scan(Capture(path), None, timeline=True) as scan:
        yield report_view(scan, _report.FORMATS[fmt], False, str(path), None, False, None, None)


# ---- which file to open with which tool ----

def test_capture_says_which_tool_opens_which_file(tmp_path, capture):
    from conftest import need_perf
    need_perf()
    cap = _capture(tmp_path, "cap", "hot.py", "1", options=("--stack",), recorder="perf")
    guide = (cap / "README.txt").read_text()
    assert f"python -m etwtrace report {cap}" in guide
    assert f"babeltrace2 {cap}/ctf/pid-PID" in guide
    assert f"perf report -i {cap}/perf.data" in guide
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    from etwtrace.capture import perf as _perf
    # One copy of perf's data: perf inject's output replaced perf.data.
    assert "perf.jit.data" not in guide and not (cap / "perf.jit.data").exists()
    assert f"hotspot {cap}/perf.data" in guide
    assert f"cp {cap}/maps/* {cap}/jit/* /tmp/" in guide
    if not _perf.needs_jit_inject(manifest["callgraph"]):
        return
    assert manifest["perf_jit_injected"] is True
    if not (cap / "buildid").exists():
        # A perf that names the images only from their paths (7.2, in
        # Debian sid): the guide points at /tmp, where they are copied back.
        assert "--buildid-dir" not in guide
        return
    assert f"perf --buildid-dir {cap}/buildid report -i {cap}/perf.data" in guide
    # The capture's own images name the Python frames with no copy in
    # /tmp (the capture leaves none); an empty build-id cache does not.
    (pid,) = {int(d.name[4:]) for d in (cap / "ctf").iterdir()}
    assert not glob.glob(f"/tmp/jitted-{pid}-*.so")

    def named(cache):
        out = subprocess.run(["perf", "--buildid-dir", str(cache), "report", "-i",
                              str(cap / "perf.data"), "--stdio", "--no-children",
                              "--sort", "sym"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, encoding="utf-8").stdout
        return "py::inner:" in out
    assert named(cap / "buildid")
    (tmp_path / "empty").mkdir()
    assert not named(tmp_path / "empty")
    builtin = capture("by_arg.py", "a")
    plain = (builtin.path / "README.txt").read_text()
    assert "perf" not in plain and "babeltrace2" in plain
