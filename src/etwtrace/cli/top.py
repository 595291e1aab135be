"""python -m etwtrace top: the live view, drawn with curses, of what
sampled/live.py counts.  screen() makes the text of one refresh from the
counts (tests draw it from made-up samples); main() checks, samples and draws."""

import os
import select
import signal
import subprocess
import sys
import time

from ..errors import Error
from ..report.scan import interpreter_fold  # noqa: F401 (what top folds)

REFRESH_SECONDS = 1.0
POLL_MS = 100           # the longest wait between reads of the sampler's ring
HEADER_ROW = 3
KEYS_TEXT = "o own  t total  l lines/functions  h thread  q quit"


class TopError(Error):
    pass


class View:
    """What the screen shows, as the keys set it."""

    def __init__(self, title, rate, seconds):
        self.title = title
        self.rate = rate
        self.seconds = seconds
        self.sort = "own"
        self.lines = False
        self.tid = None         # the thread shown, or None for all
        self.thread_names = {}
        self.message = ""       # what happened to the process (it ended)

    def key(self, ch, threads):
        """Applies key `ch` (a character); False when it quits.  `threads`:
        those with samples in the window, which h steps through."""
        if ch in ("q", "Q"):
            return False
        if ch == "o":
            self.sort = "own"
        elif ch == "t":
            self.sort = "total"
        elif ch == "l":
            self.lines = not self.lines
        elif ch == "h":
            order = [None, *threads]
            if self.tid not in order:
                order.insert(1, self.tid)
            self.tid = order[(order.index(self.tid) + 1) % len(order)]
        return True


def screen(view, window, now, width, height, lost=0):
    """The lines of one refresh, each at most `width` characters, at most
    `height` of them."""
    samples, rows = window.rows(now, view.sort, view.lines, view.tid)
    threads = window.threads(now)
    if view.tid is None:
        thread = f"all ({len(threads)})"
    else:
        name = view.thread_names.get(view.tid)
        thread = f"{view.tid}" + (f" {name}" if name else "")
    head = f"etwtrace top - {view.title}"
    rate = f"{view.rate} Hz, last {view.seconds} s"
    lines = [
        _fit(head, width - len(rate) - 1).ljust(width - len(rate)) + rate
        if width > len(rate) + 10 else _fit(head, width),
        _fit(f"{samples:,} samples" + (f", {lost:,} lost" if lost else "")
             + f"   thread: {thread}   sort: {view.sort}   "
             + ("lines" if view.lines else "functions"), width),
        "",
    ]
    what = "LINE" if view.lines else "FUNCTION"
    name_width = max(8, (width - 16) * 3 // 5)
    lines.append(_fit(f"{'OWN%':>6} {'TOTAL%':>7}  {what:<{name_width}} WHERE", width))
    room = height - len(lines) - 2
    for row in rows[:max(room, 0)]:
        frame = row.frame
        where = os.path.basename(frame.file)
        if not frame.python:
            where = f"[{where}]" if where else ""
        elif view.lines:
            where += f":{frame.line}"
        own = 100.0 * row.own / samples if samples else 0.0
        total = 100.0 * row.total / samples if samples else 0.0
        lines.append(_fit(f"{own:6.1f} {total:7.1f}  {_fit(frame.name, name_width):<{name_width}}"
                          f" {where}", width))
    if not rows:
        lines.append(_fit("  (no samples in the window)" if not view.message else "", width))
    lines += [""] * (height - 2 - len(lines))
    lines.append(_fit(view.message, width))
    lines.append(_fit(KEYS_TEXT, width))
    return lines[:height]


def _fit(text, width):
    """`text` cut to `width` characters (a tilde marks the cut)."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:width - 1] + "~"


def main(opts, say):
    """The top command: checks, then the live view until q, Ctrl-C or
    SIGTERM; the exit status."""
    from ..sampled import live as _live, remote as _remote, sampler as _sampler
    _sampler.load_sampler()
    try:
        _sampler.check_privileges()
    except _sampler.SampledError:
        raise TopError("top samples with the BPF sampler: it needs root, or CAP_BPF, "
                       "CAP_PERFMON and CAP_SYS_PTRACE") from None
    if opts.pid is not None:
        try:
            _sampler.check_process(opts.pid)
        except _sampler.SampledError as ex:
            raise TopError(str(ex)) from None
    else:
        from .main import check_target
        check_target(opts.target)
        if sys.version_info[:2] not in _remote.SUPPORTED:
            raise TopError(f"top --sampled runs the program with this Python, "
                           f"{sys.version.split()[0]}, and reads CPython "
                           f"{_remote.supported_text()}")
    if not (os.isatty(0) and os.isatty(1)):
        raise TopError("top draws on a terminal: run it in one (stdin and stdout)")
    try:
        import curses
    except ImportError:
        raise TopError("top draws with Python's curses module, which this Python lacks") \
            from None
    rate = opts.rate or _sampler.DEFAULT_RATE
    window = _live.Window(opts.window, interpreter_fold())
    try:
        sampling = _live.LiveSampling(rate, window)
    except _sampler.SampledError as ex:
        raise TopError(str(ex)) from None
    child = None
    previous = signal.signal(signal.SIGTERM, lambda *a: sys.exit(128 + signal.SIGTERM))
    try:
        if opts.pid is not None:
            pid = opts.pid
            title = f"process {pid} ({_command_of(pid)})"
            try:
                sampling.add(pid)
            except _sampler.SampledError as ex:
                raise TopError(str(ex)) from None
        else:
            # Its own session: Ctrl-C is top's; its output would draw over the view.
            child = subprocess.Popen([sys.executable, *opts.target], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
            pid = child.pid
            title = f"process {pid} ({' '.join(opts.target)})"
            try:
                sampling.add(pid, child)    # (False: it ended first; the view says so)
            except _sampler.SampledError as ex:
                raise TopError(str(ex)) from None
        view = View(title, rate, opts.window)
        return curses.wrapper(_live_view, view, window, sampling, pid, child)
    except KeyboardInterrupt:
        return 0        # Ctrl-C quits, as q does (curses.wrapper restored the terminal)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            sampling.close()
        finally:
            if child is not None:
                _end(child)


def _live_view(stdscr, view, window, sampling, pid, child):
    import curses
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    stdscr.nodelay(True)
    waiting = select.poll()
    waiting.register(sampling.fileno(), select.POLLIN)
    waiting.register(0, select.POLLIN)
    try:
        pidfd = os.pidfd_open(pid)
        waiting.register(pidfd, select.POLLIN)
    except ProcessLookupError:
        pidfd = None        # (it ended already: said at the first turn)
    ended_at = None
    next_draw = 0.0
    try:
        while True:
            ready = waiting.poll(POLL_MS)
            if ended_at is None:
                sampling.drain()
            if ended_at is None and (pidfd is None or any(fd == pidfd for fd, _ in ready)):
                # The last window stays as it was when the process ended.
                ended_at = time.monotonic()
                waiting.unregister(sampling.fileno())
                if pidfd is not None:
                    waiting.unregister(pidfd)   # (readable from now on)
                view.message = _ended(pid, child)
                next_draw = 0.0
            now = ended_at if ended_at is not None else time.monotonic()
            while True:
                ch = stdscr.getch()
                if ch == -1:
                    break
                if ch == curses.KEY_RESIZE:
                    next_draw = 0.0
                    continue
                if 0 <= ch < 256 and not view.key(chr(ch), window.threads(now)):
                    return 0
                next_draw = 0.0
            if time.monotonic() >= next_draw:
                _draw(stdscr, view, window, now, sampling.lost(), pid)
                next_draw = time.monotonic() + REFRESH_SECONDS
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _draw(stdscr, view, window, now, lost, pid):
    import curses
    height, width = stdscr.getmaxyx()
    for tid in window.threads(now):
        if tid not in view.thread_names:
            view.thread_names[tid] = _thread_name(pid, tid)
    stdscr.erase()
    for y, line in enumerate(screen(view, window, now, width, height, lost)):
        # (the bottom right cell cannot be written without an error)
        attr = curses.A_REVERSE if y == HEADER_ROW else curses.A_NORMAL
        try:
            stdscr.addnstr(y, 0, line, width - 1 if y == height - 1 else width, attr)
        except curses.error:
            pass
    stdscr.refresh()


def _ended(pid, child):
    if child is None:
        return f"process {pid} ended; q quits"
    status = child.wait()
    how = f"exit status {status}" if status >= 0 else f"signal {-status}"
    return f"process {pid} ended ({how}); q quits"


def _end(child):
    """Ends the program top ran (it ends with top)."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(2)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _command_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode("utf-8", "replace") for w in words if w) or "?"


def _thread_name(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
