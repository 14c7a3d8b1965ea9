"""A one-line progress display on stderr for the bulk commands (no dependencies)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

# On a terminal the line is redrawn in place; in a log it is printed now and then.
TTY_INTERVAL = 0.2
LOG_INTERVAL = 5.0


class ProgressLine:
    """A status line redrawn in place; other output can be printed above it."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (
            TTY_INTERVAL if self.tty else LOG_INTERVAL)
        self._clock = clock
        self._last: float | None = None
        self._text = ""
        self._lock = threading.Lock()

    def update(self, text: str, force: bool = False) -> None:
        """Show `text`; skipped when the last redraw was less than the interval ago."""
        with self._lock:
            self._text = text
            now = self._clock()
            if not force and self._last is not None and now - self._last < self.interval:
                return
            self._last = now
            self._draw()

    def echo(self, line: str, stream: TextIO | None = None) -> None:
        """Print a line of other output (stdout by default) without garbling the status line."""
        with self._lock:
            out = stream or sys.stdout
            if self.tty and self._text:
                self.stream.write("\r\033[K")
                self.stream.flush()
            print(line, file=out, flush=True)
            if self.tty and self._text:
                self._draw()

    def done(self, text: str | None = None) -> None:
        """Leave the final state on its own line."""
        with self._lock:
            if text is not None:
                self._text = text
            if self._text:
                if self.tty:
                    self.stream.write("\r\033[K" + self._text + "\n")
                else:
                    self.stream.write(self._text + "\n")
                self.stream.flush()
            self._text = ""

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self._text)
        else:
            self.stream.write(self._text + "\n")
        self.stream.flush()


def human_bytes(count: float) -> str:
    """A byte count for people: 512 B, 3.4 kB, 12.0 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"
