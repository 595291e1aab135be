"""One error type and one command line: every exception etwtrace raises
is an etwtrace.Error; every subcommand's usage error exits 2 and its
failures 1, with one `etwtrace: error:` line; the ETWTRACE_* variables are
read in _env.py alone.  In-process (no subprocess, no perf)."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import etwtrace
from etwtrace.cli import main as _cli

PACKAGE = Path(etwtrace.__file__).parent
# Modules that run something when imported.
NOT_IMPORTED = ("etwtrace.__main__", "etwtrace._autostart")


def _modules():
    names = ["etwtrace"]
    for info in pkgutil.walk_packages([str(PACKAGE)], "etwtrace."):
        if not info.name.startswith(NOT_IMPORTED):
            names.append(info.name)
    return [importlib.import_module(name) for name in names]


def _exception_classes():
    found = {}
    for module in _modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("etwtrace"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_class_is_an_etwtrace_error():
    found = _exception_classes()
    # The walk sees the package's classes (not an empty pass).
    for name in ("TraceError", "ReportError", "CaptureError", "PerfError", "SessionError",
                 "AttachError", "SampledError", "RemoteError", "ElfError", "EnvError",
                 "UsageError", "SizeError", "BudgetError", "OutputError"):
        assert any(key.endswith("." + name) for key in found), name
    outside = [name for name, cls in found.items() if not issubclass(cls, etwtrace.Error)]
    assert outside == [], outside


def test_errors_keep_their_builtin_bases_and_names():
    from etwtrace import sizes as _sizes
    from etwtrace.trace import files as _capfile
    assert issubclass(_sizes.SizeError, ValueError)
    assert etwtrace.TraceError is _capfile.TraceError
    assert _cli.UsageError is etwtrace.errors.UsageError
    assert "Error" in etwtrace.__all__


def _run(capsys, *args):
    status = _cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines()


@pytest.mark.parametrize("args, message", [
    (["--recorder", "magic", "--", "x.py"], "--recorder must be"),
    (["--capture"], "--capture needs a value"),
    (["--sampled", "--rate", "0", "--pid", "1", "--capture", "c"], "--rate 0: out of range"),
    (["report"], "needs a PATH"),
    (["report", "x", "--format", "nope"], "invalid choice"),
    (["report", "x", "--bogus"], "unknown option '--bogus'"),
    (["report", "x", "--from", "2", "--to", "1"], "is not after"),
    (["record", "start"], "record start needs a PATH"),
    (["record", "bogus"], "unknown record command 'bogus'"),
    (["record", "start", "p", "--recorder", "magic"], "--recorder must be"),
    (["record", "start", "p", "--rate", "99"], "--rate is for --sampled"),
    (["record", "start", "p", "--sampled", "--rate", "x"], "--rate takes a number"),
    (["record", "start", "p", "--max-size", "lots"], "--max-size"),
    (["record", "start", "p", "q"], "not also 'q'"),
    (["record", "status", "extra"], "takes no arguments"),
    (["record", "snapshot", "--x"], "record snapshot [PATH]"),
    (["attach", "notapid"], "attach needs a process id, not 'notapid'"),
    (["attach", "12", "--c-calls"], "--c-calls needs --instrumented"),
    (["attach", "12", "--bogus"], "unknown option '--bogus' for attach"),
    (["detach", "x"], "detach needs a process id"),
    (["detach", "12", "--instrumented"], "unknown option '--instrumented' for detach"),
])
def test_usage_errors_exit_2_with_one_line(capsys, args, message):
    status, lines = _run(capsys, *args)
    assert status == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("etwtrace: error: ") and message in lines[0], lines[0]


@pytest.mark.parametrize("args, message", [
    (["detach", "4194000"], "no process 4194000"),
    (["record", "stop"], "no recording session is running"),
])
def test_failures_exit_1_with_one_line(capsys, monkeypatch, tmp_path, args, message):
    # A session directory of this test's own, as root's would be the machine's.
    monkeypatch.setenv("ETWTRACE_SESSION_DIR", str(tmp_path))
    status, lines = _run(capsys, *args)
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("etwtrace: error: ") and message in lines[0], lines[0]


@pytest.mark.parametrize("args, status", [
    (["record"], 2), (["attach"], 2), (["detach"], 2),
    (["record", "--help"], 0), (["attach", "-h"], 0), (["report", "--help"], 0)])
def test_subcommand_help_comes_from_the_parser(capsys, args, status):
    assert _cli.main(args) == status
    out = capsys.readouterr().out
    assert out.startswith("Usage: python -m etwtrace")


def test_help_lists_every_option_the_parser_reads(capsys):
    from etwtrace.cli import args as _args
    assert _cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in _args.RUN_OPTIONS:
        assert option.names[0] in text, option.names
    for fmt in _args.report_formats():
        assert fmt in text.split("report PATH [--format ")[1].split("]")[0], fmt
    assert "pprof" in _args.report_help()
    for option in _args.REPORT_OPTIONS:
        assert option.names[-1] in _args.report_help(), option.names
    for option in _args.RECORD_START_OPTIONS:
        assert option.names[0] in _args.record_help(), option.names
    for option in _args.ATTACH_OPTIONS:
        assert option.names[0] in _args.attach_help(), option.names


# ---- ETWTRACE_* variables: read in _env.py alone ----

# Bootstrap code that runs before etwtrace may be imported at all.
ENV_READERS_ALLOWED = {"env.py", "_autostart/sitecustomize.py"}


def _is_environ(node):
    """os.environ, or a parameter named environ."""
    return ((isinstance(node, ast.Attribute) and node.attr == "environ")
            or (isinstance(node, ast.Name) and node.id == "environ"))


def _names_etwtrace_variable(node, constants):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("ETWTRACE_")
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id == "_env"          # _env.CAPTURE
    if isinstance(node, ast.Name):
        return node.id in constants
    return False


def environment_reads(source):
    """(line, text) of each read of an ETWTRACE_* variable in `source`:
    os.environ.get/[...]/getenv of a literal, an _env name or a module
    constant naming one."""
    tree = ast.parse(source)
    constants = {t.id for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant)
                 and str(node.value.value).startswith("ETWTRACE_")
                 for t in node.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "pop") \
                    and _is_environ(func.value):
                key = node.args[0]
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or \
                    (isinstance(func, ast.Name) and func.id == "getenv"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and _is_environ(node.value):
            key = node.slice
        if key is not None and _names_etwtrace_variable(key, constants):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_environment_check_finds_reads():
    # The check itself: it sees each form of read, and not a write.
    source = ('import os\nX = "ETWTRACE_X"\n'
              'a = os.environ.get("ETWTRACE_A")\nb = os.getenv(X)\n'
              'c = os.environ[_env.CAPTURE]\nos.environ["ETWTRACE_D"] = "1"\n')
    assert [line for line, _ in environment_reads(source)] == [3, 4, 5]


def test_etwtrace_variables_are_read_in_env_only():
    reads = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name in ENV_READERS_ALLOWED:
            continue
        found = environment_reads(path.read_text(encoding="utf-8"))
        if found:
            reads[name] = found
    assert reads == {}, reads
