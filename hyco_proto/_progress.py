"""Transfer progress for ``hyco listen`` / ``hyco send``: counts, the in-place status line and the
one-line summary. Pure: the clock and the stream are passed in (the CLI passes
``time.monotonic`` and ``sys.stderr``), so tests drive it with a fake clock and a StringIO."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

__all__ = ["TransferMeter", "format_bytes", "format_duration"]

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(count: int) -> str:
    """``512 B``, ``1.5 KiB``, ``12.3 MiB`` (binary units, as ``--max-control-message``)."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``0.42 s`` and ``12.3 s`` under a minute, then ``m:ss`` and ``h:mm:ss``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TransferMeter:
    """Bytes each way of one connection since ``start``.

    ``received`` / ``sent`` are called once per message (cheap: two additions). ``tick`` is
    called by a timer: on a terminal it redraws the status line in place (``\\r``), at most
    every ``interval`` seconds and only once the transfer has run ``delay`` seconds, so a quick
    exchange prints nothing. ``finish`` ends a drawn line with a newline.
    """

    def __init__(self, stream: IO[str], clock: Callable[[], float], *, prefix: str = "hyco",
                 interval: float = 0.25, delay: float = 1.0,
                 columns: Callable[[], int] | None = None) -> None:
        self.stream = stream
        self.clock = clock
        self.prefix = prefix
        self.interval = interval
        self.delay = delay
        #: The terminal's width, asked at each redraw: a longer line would wrap, and ``\r``
        #: then redraws only its last row.
        self.columns = columns
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = clock()
        self._drawn_at: float | None = None
        self._drawn_counts: tuple[int, int] | None = None
        self._width = 0

    def received(self, count: int) -> None:
        self.bytes_in += count

    def sent(self, count: int) -> None:
        self.bytes_out += count

    def elapsed(self) -> float:
        return max(self.clock() - self.started, 0.0)

    def rate(self) -> float:
        """Bytes per second, both directions together."""
        elapsed = self.elapsed()
        return (self.bytes_in + self.bytes_out) / elapsed if elapsed > 0 else 0.0

    def status_line(self) -> str:
        """``hyco: 12.3 MiB received, 0 B sent, 4.1 MiB/s, 3.00 s``."""
        return (f"{self.prefix}: {format_bytes(self.bytes_in)} received, "
                f"{format_bytes(self.bytes_out)} sent, {format_bytes(int(self.rate()))}/s, "
                f"{format_duration(self.elapsed())}")

    def summary(self) -> str:
        """``12.3 MiB received, 12 B sent in 3.00 s (4.1 MiB/s)``: for ``-v``'s close line."""
        return (f"{format_bytes(self.bytes_in)} received, {format_bytes(self.bytes_out)} sent "
                f"in {format_duration(self.elapsed())} ({format_bytes(int(self.rate()))}/s)")

    @property
    def drawn(self) -> bool:
        """Whether a status line is on the terminal (``finish`` ends it)."""
        return self._drawn_at is not None

    def tick(self) -> bool:
        """Redraw the status line if it is due and the counts changed since it was drawn (an
        idle connection does not redraw); whether it was drawn."""
        now = self.clock()
        if now - self.started < self.delay:
            return False
        counts = (self.bytes_in, self.bytes_out)
        if self._drawn_at is not None and (now - self._drawn_at < self.interval
                                           or counts == self._drawn_counts):
            return False
        line = self.status_line()
        width = self._width
        if self.columns is not None:
            limit = max(self.columns() - 1, 10)
            line, width = line[:limit], min(width, limit)
        # Pad over the remains of a longer previous line (the line only ever redraws itself).
        padding = " " * max(width - len(line), 0)
        self.stream.write(f"\r{line}{padding}")
        self.stream.flush()
        self._width = len(line)
        self._drawn_at = now
        self._drawn_counts = counts
        return True

    def break_line(self) -> None:
        """End a drawn status line so another message can take its own line; the next
        ``tick`` draws the status line again below it."""
        if self._drawn_at is None:
            return
        self.stream.write("\n")
        self.stream.flush()
        self._drawn_at = None
        self._width = 0

    def clear(self) -> None:
        """Blank a drawn status line and put the cursor at its start, so the next output takes
        the line; the next ``tick`` draws the status line again (below that output)."""
        if self._drawn_at is None:
            return
        self.stream.write("\r" + " " * self._width + "\r")
        self.stream.flush()
        self._drawn_at = None
        self._width = 0

    def finish(self) -> None:
        """Draw the final counts and end the line, if a status line was drawn."""
        if self._drawn_at is None:
            return
        self._drawn_at = None  # the last redraw is not rate-limited, and always drawn
        self.tick()
        self.stream.write("\n")
        self.stream.flush()
        self._drawn_at = None
        self._width = 0
