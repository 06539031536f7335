"""Progress of a long step (upload, propagation) on stderr, for people and for logs.

On a terminal it is a tqdm bar. Anywhere else (a log file, CI, a pipe) a bar would be one
endless line of carriage returns, or nothing at all, so plain lines are printed instead: one when
the step starts, one for the first unit done, then one every `interval` seconds, and one when it
ends, each with the count, the percentage, the rate and the time left, e.g.

    propagate: 120/3000 frames (4.0 %), 2.1 frames/s, ETA 22m51s

A slow device (a real model on a CPU takes seconds per frame) then never looks hung.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 10.0


def duration_text(seconds: float) -> str:
    """0.4s, 3s, 4m05s, 1h02m, 2d03h: short, exact to the unit shown last."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def size_text(n: float) -> str:
    """512 B, 3.4 KiB, 12.0 MiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """One step's progress. `unit` is "frames" or "bytes". Call `update(done, total)` with the
    running count (total may become known late, as a propagation's does), then `finish()`
    when the step completed or `close()` when it stopped early (no final line)."""

    def __init__(
        self,
        label: str,
        unit: str,
        *,
        total: int = 0,
        enabled: bool = True,
        interval: float = DEFAULT_INTERVAL_S,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_note: str = "",
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0
        self.interval = interval
        self._stream = stream or sys.stderr
        self._clock = clock
        self._started = clock()
        self._last_line: float | None = None
        self._closed = not enabled
        self._bar: Any = None
        if self._closed:
            return
        if _is_terminal(self._stream):
            self._bar = _tqdm_bar(self._stream, label, unit, total)
        if self._bar is None:
            total_text = f" ({self._amount(total)})" if total else ""
            self._print(f"{label}: started{total_text}{start_note}")

    # ----- reporting -----------------------------------------------------------------------
    def update(self, done: int, total: int | None = None) -> None:
        if self._closed:
            return
        if total:
            self.total = total
        first = self.done == 0 and done > 0
        self.done = done
        if self._bar is not None:
            if self.total and self._bar.total != self.total:
                self._bar.total = self.total
                self._bar.refresh()
            self._bar.update(done - self._bar.n)
            return
        if self.total and done >= self.total:
            return  # finish() says it
        now = self._clock()
        if first or self._last_line is None or now - self._last_line >= self.interval:
            self._print(self.line(now))

    def finish(self) -> None:
        """The step completed: a last line with the time it took."""
        if self._closed:
            return
        if self._bar is None:
            now = self._clock()
            elapsed = now - self._started
            self._print(f"{self.line(now, eta=False)} in {duration_text(elapsed)}")
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()

    # ----- text ----------------------------------------------------------------------------
    def _amount(self, n: int) -> str:
        return size_text(n) if self.unit == "bytes" else f"{n} {self.unit}"

    def line(self, now: float, *, eta: bool = True) -> str:
        """E.g. "propagate: 120/3000 frames (4.0 %), 2.1 frames/s, ETA 22m51s"."""
        if self.unit == "bytes":
            count = size_text(self.done)
            if self.total:
                count += f" of {size_text(self.total)}"
        else:
            count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
            count += f" {self.unit}"
        parts = [count]
        if self.total:
            parts[0] += f" ({100.0 * self.done / self.total:.1f} %)"
        elapsed = now - self._started
        if elapsed > 0 and self.done > 0:
            rate = self.done / elapsed
            parts.append(self._rate_text(rate))
            if eta and self.total and self.done < self.total:
                parts.append(f"ETA {duration_text((self.total - self.done) / rate)}")
        return f"{self.label}: " + ", ".join(parts)

    def _rate_text(self, rate: float) -> str:
        if self.unit == "bytes":
            return f"{size_text(rate)}/s"
        if rate < 1:  # a real model on a CPU: seconds per frame read better
            return f"{1 / rate:.1f} s/{self.unit.removesuffix('s')}"
        return f"{rate:.1f} {self.unit}/s"

    def _print(self, text: str) -> None:
        self._last_line = self._clock()
        print(text, file=self._stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _tqdm_bar(stream: TextIO, label: str, unit: str, total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None  # plain lines instead
    if unit == "bytes":
        return tqdm(
            total=total or None,
            file=stream,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            dynamic_ncols=True,
        )
    return tqdm(
        total=total or None, file=stream, desc=label, unit=unit.rstrip("s"), dynamic_ncols=True
    )
