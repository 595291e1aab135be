"""etwtrace top used as a person uses it: in tmux at 80x24, keys sent with
send-keys, the screen read with capture-pane.  Needs root (the BPF
sampler) and tmux; CI has both (ETWTRACE_REQUIRE_PERF=1 makes a skip a
failure).  The screen drawn from made-up samples: test_unit_top.py."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REQUIRE_PERF, SCRIPTS, client_env, need_sampler_module

SHOWN_WITHIN = 4.0      # seconds from the command to the hot function on screen
CACHE = os.environ.get("ETWTRACE_PYTHONS", "/var/cache/etwtrace-pythons")


def need_top():
    need_sampler_module()
    reason = None
    if os.geteuid() != 0:
        reason = "top samples with the BPF sampler, which needs root"
    elif shutil.which("tmux") is None:
        reason = "tmux is not installed (.ci/run installs it)"
    if reason is not None:
        if REQUIRE_PERF:
            pytest.fail(f"{reason} (ETWTRACE_REQUIRE_PERF=1)")
        pytest.skip(reason)


def target_python():
    """A CPython the sampler reads, to run the watched program with."""
    if sys.version_info[:2] == (3, 11) or sys.version_info >= (3, 13):
        return sys.executable
    candidate = os.path.join(CACHE, "3.13", "bin", "python3.13")
    if os.path.isfile(candidate):
        return candidate
    pytest.skip("no CPython 3.11 or 3.13+ here to watch (the version runs watch their own)")


class Terminal:
    """A tmux server of its own with one 80x24 window running `args`; what
    the shell does after it (exit status, the terminal's modes) goes to
    files in `tmp`."""

    def __init__(self, tmp, args):
        # Its socket in a directory of its own (a short path, as sockets need).
        self.socket_dir = tempfile.mkdtemp(prefix="etwtrace-top-")
        self.socket = os.path.join(self.socket_dir, "tmux")
        self.status = tmp / "status"
        self.modes = tmp / "stty"
        command = " ".join(_quote(a) for a in args)
        shell = (f"{command}; echo $? >{_quote(str(self.status))}.new; "
                 f"stty -a >{_quote(str(self.modes))}; "
                 f"mv {_quote(str(self.status))}.new {_quote(str(self.status))}; sleep 600")
        self.started = time.monotonic()
        self._tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "top", shell)

    def _tmux(self, *args):
        return subprocess.run(["tmux", "-S", self.socket, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=30,
                              env=dict(os.environ, TERM="xterm-256color"))

    def screen(self):
        """The screen once two reads 0.15 s apart agree: a whole frame, not
        one the terminal is still receiving (it redraws once a second)."""
        text = self._tmux("capture-pane", "-p", "-t", "top").stdout
        while True:
            time.sleep(0.15)
            again = self._tmux("capture-pane", "-p", "-t", "top").stdout
            if again == text:
                return text
            text = again

    def keys(self, *keys):
        self._tmux("send-keys", "-t", "top", *keys)

    def wait_for(self, what, seconds=30):
        """The screen once what(screen) holds; fails showing the last one."""
        deadline = time.monotonic() + seconds
        while True:
            text = self.screen()
            if what(text):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"not on the screen after {seconds} s:\n{text}")

    def exit_status(self, seconds=15):
        deadline = time.monotonic() + seconds
        while not self.status.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"top did not end:\n{self.screen()}")
            time.sleep(0.1)
        return int(self.status.read_text())

    def close(self):
        self._tmux("kill-server")
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def rows(screen):
    """The (function, own, total) of each row of the table, in order."""
    found = []
    for line in screen.splitlines():
        m = re.match(r"\s*(\d+\.\d)\s+(\d+\.\d)\s+(\S+)", line)
        if m:
            found.append((m.group(3), float(m.group(1)), float(m.group(2))))
    return found


def names(screen):
    return [name for name, _, _ in rows(screen)]


def restored(terminal):
    """Whether the shell got its terminal back as it was: canonical mode,
    echo, and the main screen (the view gone with the alternate one)."""
    modes = terminal.modes.read_text()
    return (re.search(r"(?<!-)\bicanon\b", modes) and re.search(r"(?<!-)\becho\b", modes)
            and "OWN%" not in terminal.screen())


@pytest.fixture
def watched():
    """top_target.py running, ready."""
    proc = subprocess.Popen([target_python(), str(SCRIPTS / "top_target.py"), "120"],
                            stdout=subprocess.PIPE, text=True, env=client_env())
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def terminals(tmp_path):
    made = []

    def make(*args):
        t = Terminal(tmp_path, [sys.executable, "-m", "etwtrace", "top", *map(str, args)])
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


def test_top_shows_the_hot_function_sorts_and_quits_on_q(watched, terminals):
    need_top()
    term = terminals("--pid", watched.pid)
    screen = term.wait_for(lambda s: "hot_inner" in names(s), seconds=SHOWN_WITHIN + 30)
    took = time.monotonic() - term.started
    assert took <= SHOWN_WITHIN, f"hot_inner shown after {took:.1f} s:\n{screen}"
    assert f"process {watched.pid}" in screen.splitlines()[0]
    assert "sort: own" in screen
    # A second's samples: hot_inner runs the most, warm_outer holds it.
    screen = term.wait_for(lambda s: re.search(r"[\d,]{4,} samples", s))
    own = names(screen)
    assert own[0] == "hot_inner", screen
    assert own.index("hot_inner") < own.index("warm_outer")
    term.keys("t")
    screen = term.wait_for(lambda s: "sort: total" in s)
    total = names(screen)
    assert total.index("warm_outer") < total.index("hot_inner"), screen
    by_total = [t for _, _, t in rows(screen)]
    assert by_total == sorted(by_total, reverse=True)
    term.keys("l")
    screen = term.wait_for(lambda s: "LINE" in s)
    assert re.search(r"hot_inner\s+top_target\.py:\d+", screen), screen
    term.keys("q")
    assert term.exit_status() == 0
    assert restored(term), (term.modes.read_text(), term.screen())
    assert watched.poll() is None       # the program runs on


def test_a_thread_alone(watched, terminals):
    need_top()
    term = terminals("--pid", watched.pid)
    term.wait_for(lambda s: "side_spin" in names(s) and "hot_inner" in names(s))
    # h steps through the threads, the busiest first: the main thread, then side.
    term.keys("h")
    screen = term.wait_for(lambda s: f"thread: {watched.pid}" in s)
    assert "side_spin" not in names(screen) and "hot_inner" in names(screen), screen
    term.keys("h")
    screen = term.wait_for(lambda s: "thread: " in s and f"thread: {watched.pid}" not in s
                           and "thread: all" not in s)
    assert "side_spin" in names(screen) and "hot_inner" not in names(screen), screen
    term.keys("h")
    term.wait_for(lambda s: "thread: all (2)" in s)
    term.keys("q")
    assert term.exit_status() == 0


def test_the_program_ending_is_said_and_ctrl_c_quits(terminals):
    need_top()
    python = target_python()
    if python != sys.executable:
        pytest.skip("top --sampled runs the program with its own Python, which is no 3.11 "
                    "or 3.13+ here")
    term = terminals("--sampled", "--", SCRIPTS / "top_target.py", "3")
    screen = term.wait_for(lambda s: "hot_inner" in names(s))
    pid = int(re.search(r"process (\d+)", screen).group(1))
    screen = term.wait_for(lambda s: f"process {pid} ended (exit status 0)" in s)
    assert "hot_inner" in names(screen)     # the last window stays
    term.keys("C-c")
    assert term.exit_status() == 0
    assert restored(term), (term.modes.read_text(), term.screen())


def test_ctrl_c_while_it_watches(watched, terminals):
    need_top()
    term = terminals("--pid", watched.pid)
    term.wait_for(lambda s: "hot_inner" in names(s))
    term.keys("C-c")
    assert term.exit_status() == 0
    assert restored(term), (term.modes.read_text(), term.screen())
    assert watched.poll() is None


def test_a_killed_process_is_said(watched, terminals):
    need_top()
    term = terminals("--pid", watched.pid)
    term.wait_for(lambda s: "hot_inner" in names(s))
    watched.kill()
    watched.wait()
    term.wait_for(lambda s: f"process {watched.pid} ended; q quits" in s)
    term.keys("q")
    assert term.exit_status() == 0


def _one_line(proc, status, text):
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etwtrace: error: ") \
        and text in lines[0], proc.stderr


def test_without_root_it_says_what_it_needs():
    need_sampler_module()
    if os.geteuid() != 0:
        proc = subprocess.run([sys.executable, "-m", "etwtrace", "top", "--pid", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-m", "etwtrace", "top", "--pid", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd="/", env=dict(os.environ, HOME="/"))
        if "etwtrace" not in proc.stderr:
            pytest.skip(f"user nobody cannot run this Python: {proc.stderr.strip()[-200:]}")
    _one_line(proc, 1, "top samples with the BPF sampler: it needs root, or CAP_BPF, "
                       "CAP_PERFMON and CAP_SYS_PTRACE")


def test_bad_arguments_and_no_terminal_are_one_line(tmp_path):
    def top(*args, **kw):
        return subprocess.run([sys.executable, "-m", "etwtrace", "top", *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    _one_line(top("--pid", "-3"), 2, "--pid -3: out of range")
    _one_line(top("--rate", "fast", "--pid", "3"), 2, "--rate takes a number, not 'fast'")
    need_top()
    _one_line(top("--sampled", "--", tmp_path / "missing.py"), 2, "no such script")
    if sys.version_info[:2] == (3, 11) or sys.version_info >= (3, 13):
        _one_line(top("--sampled", "--", SCRIPTS / "top_target.py", "1",
                      stdin=subprocess.DEVNULL), 1, "top draws on a terminal")
