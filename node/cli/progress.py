"""Progress of long CLI operations on a terminal: a counter (``Progress``: files imported,
pages read) or, while one long call runs, the time it has taken so far (``Working``).

Shown on stderr only when stderr is a terminal and the verb's output is not ``--json``, so
pipes, scripts and logs never see it; the line is erased when the operation ends."""
from __future__ import annotations

import sys
import threading
import time

#: seconds between two redraws
REDRAW_S = 0.25


def wanted(args, stream=None) -> bool:
    """Whether progress may be drawn for this verb: a terminal, and no --json."""
    stream = stream or sys.stderr
    return not getattr(args, "json", False) and hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """``with Progress(args, "importing files", total) as p: ... p.advance(n)``."""

    def __init__(self, args, label: str, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.on = wanted(args, self.stream)
        self.label, self.total, self.done = label, total, 0
        self._last = 0.0

    def __enter__(self):
        self._draw(force=True)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if not force and now - self._last < REDRAW_S and self.done < self.total:
            return
        self._last = now
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        self.stream.write(f"\r\x1b[K{self.label} {self.done:,}/{self.total:,}{pct}")
        self.stream.flush()

    def __exit__(self, *exc):
        if self.on:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class Working:
    """``with Working(args, "exporting"): long_call()`` shows "exporting… 12 s" meanwhile."""

    def __init__(self, args, label: str, stream=None):
        self.stream = stream or sys.stderr
        self.on = wanted(args, self.stream)
        self.label = label
        self._stop = threading.Event()
        self._thread = None

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(REDRAW_S):
            self.stream.write(f"\r\x1b[K{self.label}… {time.monotonic() - t0:.0f} s")
            self.stream.flush()

    def __enter__(self):
        if self.on:
            self._thread = threading.Thread(target=self._run, daemon=True, name="cli-progress")
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()
