"""CLI parity with the original, and bad input."""
import ast
import os
import subprocess
import sys
import venv
import xml.dom.minidom

import pytest

import etwtrace
from pathlib import Path
from conftest import SCRIPTS, run_etwtrace


@pytest.mark.parametrize("args", [[], ["-h"], ["-?"], ["--help"]])
def test_help(args):
    proc = run_etwtrace(*args)
    assert proc.returncode == 0
    assert etwtrace.__version__ in proc.stdout
    assert "--capture PATH" in proc.stdout and "--enable" in proc.stdout


def test_unused_arguments_are_reported():
    proc = run_etwtrace("--stack", "--bogus", "other thing")
    assert proc.returncode == 1
    assert proc.stderr.strip() == 'WARNING: The following arguments were not used: --bogus "other thing"'


def test_info_is_a_tuple_literal_naming_the_native_module():
    proc = run_etwtrace("--info")
    assert proc.returncode == 0
    info = ast.literal_eval(proc.stdout.strip())
    assert isinstance(info, tuple)
    assert info[0] == "etwtrace._etwtrace"


def test_profile_path_has_both_presets():
    proc = run_etwtrace("--profile")
    assert proc.returncode == 0
    path = proc.stdout.strip()
    text = Path(path).read_text(encoding="utf-8")
    assert "[Default]" in text and "[Minimal]" in text


def test_stacktags_is_xml_with_linux_patterns():
    proc = run_etwtrace("--stacktags")
    assert proc.returncode == 0
    doc = xml.dom.minidom.parse(proc.stdout.strip())
    modules = {e.getAttribute("Module") for e in doc.getElementsByTagName("Entrypoint")}
    assert "libpython3*.so*" in modules
    assert any(m.startswith("python3") for m in modules)
    assert any("_etwtrace" in m for m in modules)


def run_into_closed_pipe(*args, python=sys.executable):
    """Runs etwtrace with its stdout a pipe whose reader has gone, as
    `| head -1` leaves it once head has its line."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([python, "-m", "etwtrace", *map(str, args)], stdout=write,
                              stderr=subprocess.PIPE, encoding="utf-8", cwd=SCRIPTS,
                              timeout=300)
    finally:
        os.close(write)


@pytest.mark.parametrize("args, status", [
    ([], 0), (["--help"], 0), (["-?"], 0), (["--info"], 0), (["--profile"], 0),
    (["--stacktags"], 0), (["report", "--help"], 0), (["record", "--help"], 0),
    (["record"], 2), (["attach", "--help"], 0), (["detach"], 2)])
def test_output_into_a_closed_pipe_ends_quietly(args, status):
    proc = run_into_closed_pipe(*args)
    assert (proc.returncode, proc.stderr) == (status, ""), proc.stderr


def test_a_report_into_a_closed_pipe_ends_quietly(capture):
    cap = capture("report_calls.py", mode="instrumented")
    for fmt in ("text", "folded", "svg", "chrome"):
        proc = run_into_closed_pipe("report", cap.path, "--format", fmt)
        assert (proc.returncode, proc.stderr) == (0, ""), (fmt, proc.stderr)


def test_module_target_and_arguments(tmp_path):
    (tmp_path / "mymod.py").write_text("import sys\nprint('args', sys.argv[1:])\n")
    proc = run_etwtrace("--", "-m", "mymod", "x", "y", cwd=tmp_path,
                        env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "args ['x', 'y']" in proc.stdout


def test_script_exit_status_is_kept(tmp_path):
    (tmp_path / "fail.py").write_text("import sys\nsys.exit(7)\n")
    assert run_etwtrace("--", tmp_path / "fail.py").returncode == 7


@pytest.mark.versioned
def test_instrumented_runs_without_capture():
    proc = run_etwtrace("--instrumented", "--", SCRIPTS / "no_events.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sum(i * i for i in range(1000)))


@pytest.mark.versioned
def test_instrumented_through_enable_if(tmp_path):
    # The TYPE_VAR of enable_if picks instrumented mode.
    script = tmp_path / "t.py"
    script.write_text("import etwtrace\n"
                      "etwtrace.enable_if('T_ENABLE', 'T_TYPE')\n"
                      "print(etwtrace._native().get_mode())\n")
    env = dict(os.environ, T_ENABLE="1", T_TYPE="instrumented")
    out = subprocess.run([sys.executable, script], env=env, stdout=subprocess.PIPE,
                         encoding="utf-8", check=True).stdout
    assert out.strip() == "instrumented"


@pytest.mark.parametrize("args, message", [
    (["--", "does-not-exist.py"], "no such script"),
    (["--", "-m", "no_such_module_xyz"], "no module named"),
    (["--capture"], "--capture needs a value"),
    (["--recorder", "magic", "--", "x.py"], "--recorder must be"),
    (["--capture", "/proc/forbidden/capture", "--", "basic.py"], "cannot create capture directory"),
    (["--capture", "somewhere"], "needs a program"),
    (["--preset", "Nope", "--capture", "CAP", "--", "basic.py"], "no preset 'Nope'"),
    (["--", ], "nothing to run"),
])
def test_bad_input_is_one_line_error(tmp_path, args, message):
    args = [str(tmp_path / "CAP") if a == "CAP" else a for a in args]
    proc = run_etwtrace(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("etwtrace: error:") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_capture_refuses_to_replace_a_non_capture_directory(tmp_path):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "data.txt").write_text("keep me")
    proc = run_etwtrace("--capture", keep, "--recorder", "builtin", "--", SCRIPTS / "basic.py")
    assert proc.returncode == 2
    assert "refusing to replace" in proc.stderr
    assert (keep / "data.txt").read_text() == "keep me"


def test_capture_replaces_an_earlier_capture(tmp_path):
    path = tmp_path / "cap"
    for _ in range(2):
        proc = run_etwtrace("--capture", path, "--recorder", "builtin", "--", SCRIPTS / "basic.py")
        assert proc.returncode == 0, proc.stderr
    pids = os.listdir(path / "ctf")
    assert len(pids) == 1, "the earlier capture was replaced, not merged"


def test_perf_recorder_without_perf_is_a_clear_error(tmp_path):
    env = {"PATH": str(tmp_path)}  # no perf on this PATH
    proc = run_etwtrace("--capture", tmp_path / "cap", "--recorder", "perf", "--",
                        SCRIPTS / "basic.py", env=env)
    assert proc.returncode == 2
    assert "perf is not installed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_auto_recorder_falls_back_and_says_so(tmp_path):
    env = {"PATH": str(tmp_path)}
    proc = run_etwtrace("--capture", tmp_path / "cap", "--", SCRIPTS / "by_arg.py", "a", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "built-in recorder" in proc.stderr
    with etwtrace.open_trace(tmp_path / "cap") as trace:
        assert any(e.name == "PythonStackSample" for e in trace)


@pytest.fixture
def venv_python(tmp_path):
    """A virtual environment that sees the etwtrace under test (through a
    .pth naming where it is installed: the tests may themselves run in a
    venv, whose packages a nested venv's system site would not show)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    with open(os.path.join(_site_packages(python), "_etwtrace_under_test.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(os.path.abspath(etwtrace.__file__))) + "\n")
    return python


def _site_packages(python):
    return subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        encoding="utf-8").strip()


@pytest.mark.versioned
def test_enable_and_disable_pth(venv_python, tmp_path):
    site_dir = _site_packages(venv_python)
    out = subprocess.run([venv_python, "-m", "etwtrace", "--enable", "MY_TRACE", "MY_TYPE"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    pth = os.path.join(site_dir, "etwtrace.pth")
    assert os.path.isfile(pth)
    assert "enable_if('MY_TRACE', 'MY_TYPE')" in Path(pth).read_text()
    # What it prints, into a pipe no one reads: the .pth written all the same.
    os.unlink(pth)
    quiet = run_into_closed_pipe("--enable", "MY_TRACE", "MY_TYPE", python=venv_python)
    assert (quiet.returncode, quiet.stderr) == (0, ""), quiet.stderr
    assert "enable_if('MY_TRACE', 'MY_TYPE')" in Path(pth).read_text()

    probe = "import etwtrace; print(etwtrace.is_active())"
    off = subprocess.run([venv_python, "-c", probe], stdout=subprocess.PIPE, encoding="utf-8",
                         env={**os.environ, "MY_TRACE": "0"})
    on = subprocess.run([venv_python, "-c", probe], stdout=subprocess.PIPE, encoding="utf-8",
                        env={**os.environ, "MY_TRACE": "1"})
    assert off.stdout.strip() == "False"
    assert on.stdout.strip() == "True"

    # python -m etwtrace never traces itself through the .pth
    info = subprocess.run([venv_python, "-m", "etwtrace", "--info"], stdout=subprocess.PIPE,
                          encoding="utf-8", env={**os.environ, "MY_TRACE": "1"})
    assert ast.literal_eval(info.stdout.strip())[7] is None   # not recording

    # ETWTRACE_CAPTURE makes a .pth-started process record into DIR
    cap = tmp_path / "pthcap"
    script = "import etwtrace\ndef f():\n    etwtrace._mark_stack('pth')\nf()\n"
    (tmp_path / "s.py").write_text(script)
    run = subprocess.run([venv_python, tmp_path / "s.py"], stderr=subprocess.PIPE, encoding="utf-8",
                         env={**os.environ, "MY_TRACE": "1", "ETWTRACE_CAPTURE": str(cap)})
    assert run.returncode == 0, run.stderr
    with etwtrace.open_trace(cap) as trace:
        marks = [e.fields["Mark"] for e in trace if e.name == "PythonStackSample"]
    assert marks == ["pth"]

    out = subprocess.run([venv_python, "-m", "etwtrace", "--disable"], stdout=subprocess.PIPE,
                         encoding="utf-8")
    assert out.returncode == 0
    assert not os.path.exists(pth)


@pytest.mark.parametrize("version", ["(3, 8, 18, 'final', 0)", "(3, 16, 0, 'alpha', 1)"])
def test_an_unsupported_interpreter_is_refused_in_one_line(version):
    setup_py = Path(__file__).absolute().parent.parent / "setup.py"
    if not setup_py.exists():
        pytest.skip("needs the source tree")
    code = (f"import sys; sys.version_info = {version}; "
            f"exec(compile({setup_py.read_text()!r}, 'setup.py', 'exec'))")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", cwd=setup_py.parent)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and "supports CPython 3.9 to 3.15" in lines[0], proc.stderr


@pytest.mark.parametrize("args, message", [
    (["record", "start"], "record start needs a PATH"),
    (["record", "bogus"], "unknown record command 'bogus'"),
    (["attach", "notapid"], "attach needs a process id"),
    (["report", "somewhere", "--format", "nope"], "invalid choice"),
])
def test_every_subcommands_usage_error_exits_2(args, message):
    proc = run_etwtrace(*args)
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert lines[0].startswith("etwtrace: error:") and message in lines[0], lines[0]


@pytest.mark.parametrize("machine", ["i686", "riscv64"])
def test_an_unsupported_machine_is_refused_in_one_line(machine):
    setup_py = Path(__file__).absolute().parent.parent / "setup.py"
    if not setup_py.exists():
        pytest.skip("needs the source tree")
    code = (f"import platform; platform.machine = lambda: {machine!r}; "
            f"exec(compile({setup_py.read_text()!r}, 'setup.py', 'exec'))")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, encoding="utf-8", cwd=setup_py.parent)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]], proc.stderr
    assert "on Linux x86_64 and aarch64" in lines[0] and machine in lines[0], proc.stderr
