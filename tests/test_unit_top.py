"""etwtrace top's parts, in this process from made-up samples: the rolling
counts (sampled/live.py), the keys and the drawn screen (cli/top.py), and
its command line.  No BPF, no subprocess (marked `unit`); the live view
itself is tested in tmux by test_top.py."""

import struct
import types

import pytest

from etwtrace.cli import args as _args, top as _top
from etwtrace.errors import UsageError
from etwtrace.sampled import live as _live
from etwtrace.trace.ctfwrite import EVENT_ID, sample_payload

pytestmark = pytest.mark.unit

# Made-up functions of one process: Python lines at synthetic addresses,
# native functions at their ranges.
PY = 0x0100_0000_0000_0000
HOT_5, HOT_6, OUTER, MODULE = PY, PY + 0x100, PY + 0x200, PY + 0x300
LIBPY = "/usr/lib/libpython3.11.so.1.0"
EVAL, ADD, MAIN = 0x7000, 0x8000, 0x9000
FUNCTIONS = [
    (HOT_5, HOT_5 + 0x100, 5, True, "/src/app.py", "hot"),
    (HOT_6, HOT_6 + 0x100, 6, True, "/src/app.py", "hot"),
    (OUTER, OUTER + 0x100, 12, True, "/src/app.py", "outer"),
    (MODULE, MODULE + 0x100, 20, True, "/src/app.py", "<module>"),
    (EVAL, EVAL + 0x800, 0, False, LIBPY, "_PyEval_EvalFrameDefault"),
    (ADD, ADD + 0x100, 0, False, LIBPY, "PyNumber_Add"),
    (MAIN, MAIN + 0x100, 0, False, "/usr/lib/x86_64-linux-gnu/libc.so.6", "start_thread"),
]


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def feed_with_functions(window, clock):
    feed = _live.Feed(window, clock)
    stream = feed.stream(1)
    for i, (begin, end, line, is_python, file, name) in enumerate(FUNCTIONS):
        stream.function(0, i + 1, begin, end, line, is_python, file, name)
    return feed


def chunk(*stacks, ts=1):
    """Encoded SampledProfile events, as the sampler's chunks hold them."""
    return b"".join(struct.pack("<BIQ", 31, EVENT_ID["SampledProfile"], ts)
                    + sample_payload(stack) for stack in stacks)


def add(feed, tid, stack, n=1):
    """n samples of `stack` (leaf first) on thread tid, as a chunk."""
    feed.stream(tid).extend(chunk(*[stack] * n), 1, 1, n)


def table(rows):
    return [(r.frame.name, r.frame.line, r.own, r.total) for r in rows]


# ---- the counts ----

def test_own_is_the_leaf_and_total_every_function_on_the_stack():
    clock = Clock()
    window = _live.Window(5)
    feed = feed_with_functions(window, clock)
    add(feed, 1, [HOT_5, OUTER, MODULE, EVAL + 0x10, MAIN + 8], 6)
    add(feed, 1, [OUTER, MODULE, EVAL + 0x10, MAIN + 8], 3)
    feed.stream(1).sample(1, sample_payload([ADD + 4, HOT_6, OUTER, MODULE, MAIN + 8]))
    samples, rows = window.rows(clock.now, sort="own")
    assert samples == 10
    got = {name: (own, total) for name, _, own, total in table(rows)}
    assert got == {"hot": (6, 7), "outer": (3, 10), "<module>": (0, 10),
                   "_PyEval_EvalFrameDefault": (0, 9), "PyNumber_Add": (1, 1),
                   "start_thread": (0, 10)}
    assert [r.frame.name for r in rows][:3] == ["hot", "outer", "PyNumber_Add"]
    _, by_total = window.rows(clock.now, sort="total")
    assert [r.frame.name for r in by_total][:4] == ["outer", "<module>", "start_thread",
                                                    "_PyEval_EvalFrameDefault"]


def test_an_address_in_no_function_is_unknown():
    clock = Clock()
    window = _live.Window(5)
    feed = feed_with_functions(window, clock)
    add(feed, 1, [0x5555, OUTER, MODULE])
    _, rows = window.rows(clock.now)
    assert table(rows)[0] == ("[unknown]", 0, 1, 1)


def test_lines_apart_or_together_as_their_function():
    clock = Clock()
    window = _live.Window(5)
    feed = feed_with_functions(window, clock)
    add(feed, 1, [HOT_5, OUTER, MODULE], 4)
    add(feed, 1, [HOT_6, OUTER, MODULE], 2)
    _, functions = window.rows(clock.now, lines=False)
    assert table(functions)[0] == ("hot", 0, 6, 6)
    _, lines = window.rows(clock.now, lines=True)
    assert table(lines)[:2] == [("hot", 5, 4, 4), ("hot", 6, 2, 2)]


def test_a_recursive_function_counts_once_a_sample():
    clock = Clock()
    window = _live.Window(5)
    feed = feed_with_functions(window, clock)
    add(feed, 1, [HOT_5, OUTER, OUTER, OUTER, MODULE], 5)
    _, rows = window.rows(clock.now)
    assert ("outer", 0, 0, 5) in table(rows)


def test_the_window_slides_by_whole_seconds():
    clock = Clock(100.2)
    window = _live.Window(3)
    feed = feed_with_functions(window, clock)
    add(feed, 1, [HOT_5, MODULE], 4)            # second 100
    clock.now = 101.5
    add(feed, 1, [OUTER, MODULE], 2)            # second 101
    assert window.rows(102.9)[0] == 6           # seconds 100-102
    assert table(window.rows(103.0)[1])[:1] == [("outer", 0, 2, 2)]     # 101-103
    assert window.rows(104.0)[0] == 0
    clock.now = 104.1
    add(feed, 1, [HOT_5, MODULE])               # a new second drops those past
    assert sorted(window.buckets) == [104]


def test_one_thread_or_all():
    clock = Clock()
    window = _live.Window(5)
    feed = feed_with_functions(window, clock)
    add(feed, 1, [HOT_5, MODULE], 2)
    add(feed, 7, [OUTER, MODULE], 5)
    assert window.threads(clock.now) == [7, 1]
    assert table(window.rows(clock.now, tid=1)[1]) == [("hot", 0, 2, 2), ("<module>", 0, 0, 2)]
    assert window.rows(clock.now, tid=7)[0] == 5
    assert window.rows(clock.now)[0] == 7


def test_folded_frames_give_their_time_to_the_function_they_run():
    clock = Clock()
    window = _live.Window(5, fold=_top.interpreter_fold())
    feed = feed_with_functions(window, clock)
    add(feed, 1, [EVAL + 0x20, HOT_5, EVAL + 0x10, MAIN + 8], 3)
    add(feed, 1, [0x5555, HOT_5, MAIN + 8])     # a nameless frame, folded too
    add(feed, 1, [ADD + 4, HOT_5, MAIN + 8])     # no interpreter plumbing: shown
    _, rows = window.rows(clock.now)
    assert table(rows)[:2] == [("hot", 0, 4, 5), ("PyNumber_Add", 0, 1, 1)]
    assert "_PyEval_EvalFrameDefault" not in [r.frame.name for r in rows]


def test_the_samplers_recorder_feeds_the_window_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = Clock()
    window = _live.Window(5)
    recorder = _live.LiveRecorder(None, window, clock)
    feed = recorder.new_writer(42)
    # (what SampledRecorder.add sets up for a process it reads)
    named = []
    recorder.targets[42] = types.SimpleNamespace(
        writer=feed, name_thread=lambda tid, stream, ts: (
            named.append(tid), stream.thread_name(ts, tid, "worker")))
    for i, (begin, end, line, is_python, file, name) in enumerate(FUNCTIONS):
        feed.stream(7).function(0, i + 1, begin, end, line, is_python, file, name)
    stack = [HOT_5, OUTER, MODULE]
    recorder.handle_chunk(42, 7, 1, 3, 3, chunk(stack, stack, stack))
    recorder.handle_chunk(99, 7, 1, 1, 1, chunk(stack))     # no process of its own
    samples, rows = window.rows(clock.now)
    assert samples == 3 and table(rows)[0] == ("hot", 0, 3, 3)
    assert named == [7]
    assert window.threads(clock.now) == [7]
    assert recorder.ctf_root is None and list(tmp_path.iterdir()) == []


# ---- keys and the screen ----

def test_keys_sort_switch_and_step_through_threads():
    view = _top.View("process 1 (x)", 999, 5)
    assert (view.sort, view.lines, view.tid) == ("own", False, None)
    assert view.key("t", [3, 4]) and view.sort == "total"
    assert view.key("o", [3, 4]) and view.sort == "own"
    assert view.key("l", [3, 4]) and view.lines
    steps = []
    for _ in range(3):
        view.key("h", [3, 4])
        steps.append(view.tid)
    assert steps == [3, 4, None]
    assert view.key("x", [3]) and view.tid is None
    assert not view.key("q", [3])


def _screen_of(sort="own", lines=False, width=80, height=24, message=""):
    clock = Clock()
    window = _live.Window(5, fold=_top.interpreter_fold())
    feed = feed_with_functions(window, clock)
    add(feed, 1, [HOT_5, OUTER, MODULE, EVAL, MAIN + 8], 7)
    add(feed, 1, [HOT_6, OUTER, MODULE, EVAL, MAIN + 8], 1)
    add(feed, 2, [OUTER, MODULE, EVAL, MAIN + 8], 2)
    view = _top.View("process 42 (python3 app.py)", 999, 5)
    view.sort, view.lines, view.message = sort, lines, message
    return _top.screen(view, window, clock.now, width, height)


def _rows_of(screen):
    return [line.split()[2] for line in screen[_top.HEADER_ROW + 1:] if line[:1] == " "
            and len(line.split()) > 2]


def test_the_screen_at_80x24():
    screen = _screen_of()
    assert len(screen) == 24 and all(len(line) <= 80 for line in screen)
    assert screen[0].startswith("etwtrace top - process 42 (python3 app.py)")
    assert screen[0].endswith("999 Hz, last 5 s")
    assert "10 samples" in screen[1] and "thread: all (2)" in screen[1]
    assert "sort: own" in screen[1] and "functions" in screen[1]
    assert screen[_top.HEADER_ROW].split()[:3] == ["OWN%", "TOTAL%", "FUNCTION"]
    first = screen[_top.HEADER_ROW + 1].split()
    assert first == ["80.0", "80.0", "hot", "app.py"]
    assert _rows_of(screen) == ["hot", "outer", "<module>", "start_thread"]
    assert screen[-1] == _top.KEYS_TEXT


def test_the_sort_key_changes_the_order():
    assert _rows_of(_screen_of(sort="own"))[:2] == ["hot", "outer"]
    by_total = _screen_of(sort="total")
    # (equal totals: the larger own share first, then by name)
    assert _rows_of(by_total) == ["outer", "<module>", "start_thread", "hot"]
    assert by_total[_top.HEADER_ROW + 1].split()[:3] == ["20.0", "100.0", "outer"]
    assert "sort: total" in by_total[1]


def test_lines_show_where_each_line_is():
    screen = _screen_of(lines=True)
    assert screen[_top.HEADER_ROW].split()[2] == "LINE"
    assert screen[_top.HEADER_ROW + 1].split() == ["70.0", "70.0", "hot", "app.py:5"]
    assert screen[_top.HEADER_ROW + 3].split() == ["10.0", "10.0", "hot", "app.py:6"]


def test_native_functions_show_their_file_in_brackets():
    screen = _screen_of()
    assert any(line.split()[2:] == ["start_thread", "[libc.so.6]"]
               for line in screen if line.strip())


def test_the_process_ending_is_said_and_small_terminals_fit():
    screen = _screen_of(message="process 42 ended (exit status 0); q quits")
    assert screen[-2] == "process 42 ended (exit status 0); q quits"
    small = _screen_of(width=40, height=8)
    assert len(small) == 8 and all(len(line) <= 40 for line in small)
    assert small[-1].startswith("o own") and small[-1].endswith("~")
    assert _rows_of(small) == ["hot", "outer"]


def test_an_empty_window_says_so():
    window = _live.Window(5)
    view = _top.View("process 1 (x)", 999, 5)
    screen = _top.screen(view, window, 100.0, 80, 24)
    assert "0 samples" in screen[1] and "(no samples in the window)" in screen[_top.HEADER_ROW + 1]


# ---- the command line ----

def test_top_parses_its_two_forms():
    command, values = _args.parse(["top", "--pid", "42", "--window", "3", "--rate", "499"])
    assert command == "top" and (values.pid, values.window, values.rate) == (42, 3, 499)
    assert values.target is None
    command, values = _args.parse(["top", "--sampled", "--", "app.py", "--pid", "1"])
    assert values.sampled and values.target == ["app.py", "--pid", "1"] and values.pid is None
    assert _args.parse(["top", "--help"])[1].help == 0
    assert "python -m etwtrace top --pid PID" in _args.main_help()
    text = _args.top_help()
    assert all(option.label() in text for option in _args.TOP_OPTIONS)


@pytest.mark.parametrize("argv, message", [
    ([], "top needs --pid PID, or --sampled -- script args"),
    (["--pid"], "--pid needs a value"),
    (["--pid", "0"], "--pid 0: out of range"),
    (["--pid", "x"], "--pid takes a number, not 'x'"),
    (["--pid", "4", "--sampled", "--", "a.py"], "not both"),
    (["--pid", "4", "--", "a.py"], "not both"),
    (["--sampled"], "--sampled needs a program to run after --"),
    (["--sampled", "--"], "nothing to run after --"),
    (["--window", "0", "--pid", "4"], "--window 0: out of range"),
    (["--bogus"], "unknown option '--bogus' for top"),
    (["app.py"], "top takes options, not 'app.py'"),
])
def test_a_bad_top_command_line_is_a_usage_error(argv, message):
    with pytest.raises(UsageError) as raised:
        _args.parse(["top", *argv])
    assert message in str(raised.value)
