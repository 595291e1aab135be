"""Instrumented mode: push/pop events rebuilt into exact call stacks."""
import os
import subprocess
import sys
from collections import Counter

import pytest

import etwtrace
from callstacks import CallStacks
from conftest import SCRIPTS, need_tool, run_etwtrace

pytestmark = pytest.mark.versioned


def function_names(events):
    return {e.fields["FunctionID"]: e.fields["Name"] for e in events if e.name == "PythonFunction"}


def check_consistent(events):
    """Rebuilds every thread's stack; returns (CallStacks, stacks at each
    PythonStackSample).  Fails on any pop that does not match its thread's
    innermost open push."""
    stacks = CallStacks()
    names = function_names(events)
    sampled = []
    for e in events:
        if e.name in ("PythonFunctionPush", "PythonFunctionPop"):
            assert e.fields["FunctionID"] in names, "PythonFunction must precede its pushes"
        stacks.add(e)
        if e.name == "PythonStackSample":
            sampled.append([names[c.function_id] for c in reversed(stacks.stack(e.pid, e.tid))])
    assert stacks.mismatched_pops == 0
    return stacks, sampled


def script_stack(stack):
    """The part of a rebuilt stack inside the test script (innermost first)."""
    return [n for n in stack if n in ("a", "b", "c", "<module>")]


def test_basic(capture):
    events = capture("basic.py", mode="instrumented").events()
    stacks, sampled = check_consistent(events)
    assert [script_stack(s) for s in sampled] == [["b", "a", "<module>"]]
    assert stacks.unmatched_pops == 0


@pytest.mark.parametrize("args, expected", [
    (["a"], [["a", "<module>"]]),
    (["a", "b"], [["a", "<module>"], ["b", "a", "<module>"]]),
    (["a", "b", "c"], [["a", "<module>"], ["b", "a", "<module>"], ["c", "b", "a", "<module>"]]),
])
def test_by_arg(capture, args, expected):
    events = capture("by_arg.py", *args, mode="instrumented").events()
    _, sampled = check_consistent(events)
    assert [script_stack(s) for s in sampled] == expected


def test_mark_stack_equals_real_stack(capture):
    # In instrumented mode the rebuilt stack at a PythonStackSample is the
    # whole Python stack, not only the script's part.
    events = capture("basic.py", mode="instrumented").events()
    _, sampled = check_consistent(events)
    assert sampled == [["b", "a", "<module>"]]


def test_threaded(capture):
    events = capture("threaded.py", mode="instrumented").events()
    stacks, sampled = check_consistent(events)
    counts = Counter(tuple(script_stack(s)) for s in sampled)
    assert counts == {("a",): 10, ("b", "a"): 10, ("c", "b", "a"): 10}
    tids = {e.tid for e in events if e.name == "PythonStackSample"}
    assert len(tids) == 10
    assert not stacks.open_calls()


@pytest.mark.parametrize("n", [1, 1000, 25000])
def test_exact_call_counts(capture, n):
    events = capture("calls.py", n, mode="instrumented").events()
    check_consistent(events)
    names = function_names(events)
    pushes = Counter(names[e.fields["FunctionID"]] for e in events if e.name == "PythonFunctionPush")
    pops = Counter(names[e.fields["FunctionID"]] for e in events if e.name == "PythonFunctionPop")
    assert pushes["f"] == pops["f"] == n
    assert pushes["g"] == 2
    assert pushes["loop"] == 1
    assert pushes["key"] == 3
    # Without --c-calls, no C callable is traced.
    py = {e.fields["FunctionID"] for e in events if e.name == "PythonFunction" and e.fields["IsPythonCode"]}
    assert {e.fields["FunctionID"] for e in events if e.name == "PythonFunctionPush"} <= py


def test_caller_and_line(capture):
    events = capture("calls.py", 3, mode="instrumented").events()
    names = function_names(events)
    seen = Counter((names[e.fields["FunctionID"]], names.get(e.fields["Caller"]), e.fields["CallerLine"])
                   for e in events if e.name == "PythonFunctionPush")
    assert seen[("f", "loop", 29)] == 3
    assert seen[("g", "f", 13)] == 1 and seen[("g", "f", 14)] == 1
    assert seen[("loop", "<module>", 32)] == 1


# C calls are observed through sys.monitoring on 3.12+, or a profile
# function (the only way before 3.12, and ETWTRACE_C_CALL_HOOK=profile).
C_CALL_HOOKS = ["monitoring", "profile"] if sys.version_info >= (3, 12) else ["profile"]


@pytest.mark.parametrize("hook", C_CALL_HOOKS)
def test_c_calls(capture, tmp_path, hook):
    path = tmp_path / "cap"
    proc = run_etwtrace("--instrumented", "--c-calls", "--capture", path, "--recorder", "builtin",
                        "--", SCRIPTS / "calls.py", 3, env={"ETWTRACE_C_CALL_HOOK": hook})
    assert proc.returncode == 0, proc.stderr
    with etwtrace.open_trace(path) as trace:
        events = list(trace)
    check_consistent(events)
    funcs = {e.fields["FunctionID"]: e.fields for e in events if e.name == "PythonFunction"}
    pushes = [(funcs[e.fields["FunctionID"]], funcs.get(e.fields["Caller"], {}), e.fields["CallerLine"])
              for e in events if e.name == "PythonFunctionPush"]
    lens = [(c, line) for f, c, line in pushes if f["Name"] == "len" and c.get("Name") == "c_calls"]
    assert lens and lens[0][1] == 23
    assert lens[0][0]["IsPythonCode"] == 1
    length = next(f for f, _, _ in pushes if f["Name"] == "len")
    assert length["IsPythonCode"] == 0 and length["SourceFile"] == "builtins"
    # key is called by sorted (a C callable), sorted by c_calls at line 24.
    assert [c["Name"] for f, c, _ in pushes if f["Name"] == "key"] == ["sorted"] * 3
    assert [(c["Name"], line) for f, c, line in pushes if f["Name"] == "sorted"] == [("c_calls", 24)]


def test_c_calls_needs_instrumented():
    proc = run_etwtrace("--c-calls", "--", SCRIPTS / "basic.py")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "etwtrace: error: --c-calls needs --instrumented"


@pytest.mark.parametrize("c_calls", [None] + C_CALL_HOOKS)
def test_consistency_cases(capture, tmp_path, c_calls):
    path = tmp_path / "cap"
    options = ["--c-calls"] if c_calls else []
    proc = run_etwtrace("--instrumented", *options, "--capture", path, "--recorder", "builtin",
                        "--", SCRIPTS / "consistency.py", env={"ETWTRACE_C_CALL_HOOK": c_calls or ""})
    assert proc.returncode == 0, proc.stderr
    with etwtrace.open_trace(path) as trace:
        events = list(trace)
    stacks, _ = check_consistent(events)
    assert stacks.unmatched_pops == 0
    assert not stacks.open_calls()
    names = function_names(events)
    pushes = Counter(names[e.fields["FunctionID"]] for e in events if e.name == "PythonFunctionPush")
    # gen_user runs 5 times (main thread + 4 threads); each time gen(5) is
    # called (making the generator) and resumed 6 times, gen(10) called,
    # resumed once and closed (GeneratorExit thrown in: one more resume).
    # 3.11+ runs the new frame to make a generator (RETURN_GENERATOR).  3.13
    # may close a generator suspended outside any try block without resuming
    # it: 3.13.5 does; 3.13.15 does not while a profile function is set.  The
    # pushes follow what the interpreter did either way (pops are checked
    # above), so both counts are right there.
    make = 1 if sys.version_info >= (3, 11) else 0
    closes = {0, 1} if sys.version_info >= (3, 13) else {1}
    assert pushes["gen"] in {5 * ((make + 6) + (make + 1 + close)) for close in closes}
    assert pushes["deep_raise"] == 31 * 5
    assert pushes["interrupted"] == 11
    assert pushes["recurse"] > 500
    assert pushes["leaf"] >= 5 * 2
    assert len({e.tid for e in events if e.name == "PythonFunctionPush"}) >= 5


def test_enabled_and_disabled_midstack(tmp_path):
    path = tmp_path / "cap"
    env = dict(os.environ, ETWTRACE_CAPTURE=str(path))
    subprocess.run([sys.executable, SCRIPTS / "consistency.py", "midstack"], env=env, check=True,
                   cwd=SCRIPTS)
    with etwtrace.open_trace(path) as trace:
        events = list(trace)
    stacks, _ = check_consistent(events)
    names = function_names(events)
    # outer_enable and inner_enable were running before tracing began: no
    # pushes, and their pops are not written either.
    pushed = {names[e.fields["FunctionID"]] for e in events if e.name == "PythonFunctionPush"}
    assert "outer_enable" not in pushed and "inner_enable" not in pushed
    assert stacks.unmatched_pops == 0
    # The first push starts part-way: its Caller is the running function.
    first = next(e for e in events if e.name == "PythonFunctionPush")
    assert names[first.fields["FunctionID"]] == "all_cases"
    assert names[first.fields["Caller"]] == "inner_enable"
    # inner_disable was open when tracing stopped.
    main_tid = first.tid
    assert [names[c.function_id] for c in stacks.open_calls()[first.pid, main_tid]] == ["inner_disable"]


def test_babeltrace2_reads_instrumented_trace(capture):
    need_tool("babeltrace2")
    cap = capture("calls.py", 200, mode="instrumented")
    events = cap.events()
    ours = sum(e.name.startswith("PythonFunctionP") for e in events)
    out = subprocess.run(["babeltrace2", str(cap.path / "ctf")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, encoding="utf-8", check=True).stdout
    theirs = sum(1 for line in out.splitlines() if "PythonFunctionP" in line)
    assert theirs == ours > 400


def test_millions_of_events_open(capture):
    cap = capture("calls.py", 1_500_000, mode="instrumented")
    pushes = pops = 0
    with etwtrace.open_trace(cap.path) as trace:
        for e in trace:
            if e.name == "PythonFunctionPush":
                pushes += 1
            elif e.name == "PythonFunctionPop":
                pops += 1
    assert pushes >= 1_500_000 and pops >= 1_500_000
    size = sum(os.path.getsize(p) for p in (cap.path / "ctf").rglob("stream-*"))
    # Compact encoding: a push is 8 bytes, a pop 6.
    assert size / (pushes + pops) < 8


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
@pytest.mark.parametrize("hook, expected", [("monitoring", "etwtrace"), ("profile", None)])
def test_c_call_hook_is_sys_monitoring_on_3_12(hook, expected):
    code = ("import sys, etwtrace\n"
            "t = etwtrace.InstrumentedTracer(c_calls=True)\n"
            "t.enable()\n"
            "during = [sys.monitoring.get_tool(i) for i in range(6)]\n"
            "t.disable()\n"
            "after = [sys.monitoring.get_tool(i) for i in range(6)]\n"
            "print(('etwtrace' if 'etwtrace' in during else None), after.count('etwtrace'))\n")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         encoding="utf-8", env={**os.environ, "ETWTRACE_C_CALL_HOOK": hook})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(expected), "0"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
def test_c_calls_beside_cprofile_take_another_tool_id(tmp_path):
    # cProfile holds sys.monitoring's profiler id; etwtrace takes another.
    code = ("import cProfile, sys, etwtrace\n"
            "p = cProfile.Profile(); p.enable()\n"
            "t = etwtrace.InstrumentedTracer(c_calls=True); t.enable()\n"
            "print(sorted(x for x in (sys.monitoring.get_tool(i) for i in range(6)) if x))\n"
            "len([1]); t.disable(); p.disable()\n")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert "etwtrace" in out.stdout and "cProfile" in out.stdout


def test_caller_lines_from_many_call_sites(capture):
    rounds = 20
    events = capture("many_call_sites.py", rounds, mode="instrumented").events()
    check_consistent(events)
    names = function_names(events)
    source = (SCRIPTS / "many_call_sites.py").read_text().splitlines()
    expected = Counter()
    for number, text in enumerate(source, 1):
        if text.endswith("# site") or text.endswith("# throw site"):
            caller = "dispatch" if text.endswith("# site") else "thrower"
            callee = "gen" if "throw(" in text else "leaf"
            expected[callee, caller, number] += rounds
        elif text.endswith("# site x2"):
            expected["leaf", "dispatch", number] += 2 * rounds
    seen = Counter((names[e.fields["FunctionID"]], names.get(e.fields["Caller"]), e.fields["CallerLine"])
                   for e in events if e.name == "PythonFunctionPush"
                   and names.get(e.fields["Caller"]) in ("dispatch", "thrower"))
    # Making and first resuming the generator are calls too (from unmarked
    # lines, and how many depends on the version); every leaf call and
    # throw() is at its marked line.
    assert {key: n for key, n in seen.items() if key[0] == "leaf" or key[2] in
            {line for _, _, line in expected}} == expected


def test_no_call_times_counts_callers_and_order_stay_exact(tmp_path):
    """--no-call-times: the same pushes and pops, consistent and in order,
    without a clock read for each (one timestamp per run of events); the
    trace stays valid CTF."""
    n = 25000
    timed = tmp_path / "timed"
    untimed = tmp_path / "untimed"
    for path, options in ((timed, []), (untimed, ["--no-call-times"])):
        proc = run_etwtrace("--instrumented", *options, "--capture", path, "--recorder", "builtin",
                            "--", SCRIPTS / "calls.py", n)
        assert proc.returncode == 0, proc.stderr

    def calls(path):
        with etwtrace.open_trace(path) as trace:
            events = list(trace)
        check_consistent(events)
        names = function_names(events)
        return events, [(e.name, names[e.fields["FunctionID"]], names.get(e.fields.get("Caller")),
                         e.fields.get("CallerLine"))
                        for e in events if e.name.startswith("PythonFunctionP")]

    timed_events, timed_calls = calls(timed)
    untimed_events, untimed_calls = calls(untimed)
    assert untimed_calls == timed_calls
    assert sum(1 for c in untimed_calls if c[:2] == ("PythonFunctionPush", "f")) == n
    # Timed: nearly every push/pop has its own time; untimed: they share the
    # few clock readings the recorder still takes (packets, other events).
    def distinct_times(events):
        return len({e.timestamp for e in events if e.name.startswith("PythonFunctionP")})
    assert distinct_times(timed_events) > len(timed_calls) // 2
    assert distinct_times(untimed_events) < len(untimed_calls) // 100
    need_tool("babeltrace2")
    out = subprocess.run(["babeltrace2", str(untimed / "ctf")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, encoding="utf-8", check=True).stdout
    assert sum(1 for line in out.splitlines() if "PythonFunctionP" in line) == len(untimed_calls)
