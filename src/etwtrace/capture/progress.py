"""What a capture's end is doing while perf's data is made readable (perf
inject, perf script), which takes a while after a long run: one line on
stderr, rewritten in place, when stderr is a terminal; nothing otherwise
(the capture's last line then says its size and how long the end took)."""

import sys
import time


class Progress:
    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.live = self.stream.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self.started = time.monotonic()
        self.width = 0

    def step(self, text):
        """Shows `text` as what the capture's end does now."""
        if not self.live:
            return
        line = f"etwtrace: finishing the capture: {text} ({self.elapsed():.1f} s)"
        self._write("\r" + line.ljust(self.width))
        self.width = len(line)

    def elapsed(self):
        return time.monotonic() - self.started

    def clear(self):
        """Removes the line (the capture's last line comes after)."""
        if self.live and self.width:
            self._write("\r" + " " * self.width + "\r")
            self.width = 0

    def _write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.live = False
