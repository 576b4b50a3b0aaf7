"""What the client is doing, at a glance: one live status line on a terminal.

When stderr is a terminal (and the log level is neither ``-q``'s warning nor
debug), ``wstun-client`` keeps one line at the bottom, redrawn at most once a
second::

    wstun: 2 open | up 1.2 MB 35 kB/s | down 48 MB 1.1 MB/s | 0 failed | ping 12 ms

Log lines never tangle with it: the log handler clears the line, writes the
record, and draws the line again below it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import IO

from wstun.client.tunnel import TunnelHandshakeCounter
from wstun.common.report import TunnelReport

__all__ = ["ClientCounts", "Snapshot", "StatusLine", "format_bytes", "status_text", "wanted"]

#: Seconds between two redraws, at least.
INTERVAL = 1.0

# Carriage return, then erase to the end of the line (ECMA-48 EL).
_CLEAR = "\r\x1b[K"


class ClientCounts:
    """The client's tunnels as counts, fed like the metrics (and passing them on)."""

    def __init__(self, metrics: TunnelHandshakeCounter | None = None) -> None:
        self._metrics = metrics
        #: Tunnels relaying now, their reports' counts being live.
        self.open: set[TunnelReport] = set()
        #: Payload bytes of the tunnels that ended, up and down.
        self.done_up = 0
        self.done_down = 0
        #: Tunnels that could not be opened.
        self.failed = 0
        #: A recent WebSocket ping's round trip, in seconds (kept once seen).
        self.ping: float | None = None

    def tunnel_opened(self, report: TunnelReport) -> None:
        self.open.add(report)
        if self._metrics is not None:
            self._metrics.tunnel_opened(report)

    def tunnel_ended(self, report: TunnelReport) -> None:
        self.open.discard(report)
        self.done_up += report.up
        self.done_down += report.down
        if self._metrics is not None:
            self._metrics.tunnel_ended(report)

    def handshake_failed(self, status: int) -> None:
        self.failed += 1
        if self._metrics is not None:
            self._metrics.handshake_failed(status)

    def recent_ping(self) -> float | None:
        """The round trip of the newest open tunnel whose ping was answered."""
        for report in sorted(self.open, key=lambda r: r.started, reverse=True):
            latency = getattr(report.remote, "latency", 0.0)
            if latency:
                self.ping = float(latency)
                break
        return self.ping


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The counts at one moment."""

    at: float
    open: int
    up: int
    down: int
    failed: int
    ping: float | None

    @classmethod
    def of(cls, counts: ClientCounts, at: float) -> Snapshot:
        live = [report.moved() for report in list(counts.open)]
        return cls(
            at,
            len(live),
            counts.done_up + sum(up for up, _ in live),
            counts.done_down + sum(down for _, down in live),
            counts.failed,
            counts.recent_ping(),
        )


def format_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as rates on links are written)."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 999.5 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def status_text(now: Snapshot, before: Snapshot | None) -> str:
    """The status line for ``now``; rates from ``before``, when there is one."""
    elapsed = now.at - before.at if before is not None else 0.0

    def rate(current: int, previous: int) -> str:
        if before is None or elapsed <= 0:
            return ""
        return f" {format_bytes(max(0, current - previous) / elapsed)}/s"

    up = rate(now.up, before.up if before else 0)
    down = rate(now.down, before.down if before else 0)
    ping = f"{now.ping * 1000:.0f} ms" if now.ping is not None else "-"
    return (
        f"wstun: {now.open} open | up {format_bytes(now.up)}{up} | "
        f"down {format_bytes(now.down)}{down} | {now.failed} failed | ping {ping}"
    )


def wanted(stream: IO[str], log_level: str) -> bool:
    """A status line on ``stream``: a terminal, and neither -q's warning nor debug."""
    return stream.isatty() and log_level.lower() == "info"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log records above the status line, never into it."""

    def __init__(self, stream: IO[str], status: StatusLine) -> None:
        super().__init__(stream)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        self.status.clear()
        super().emit(record)
        self.status.draw()


class StatusLine:
    """Draws ``counts`` on ``stream`` once a second, under the log."""

    def __init__(
        self,
        counts: ClientCounts,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts = counts
        self.stream = stream or sys.stderr
        self._clock = clock
        self._before: Snapshot | None = None
        self._text = ""
        self._timer: asyncio.TimerHandle | None = None

    def install(self) -> None:
        """Take over the root logger's stderr handlers and start redrawing."""
        root = logging.getLogger()
        for index, handler in enumerate(root.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                replacement = _Handler(self.stream, self)
                replacement.setFormatter(handler.formatter)
                for log_filter in handler.filters:
                    replacement.addFilter(log_filter)
                root.handlers[index] = replacement
        self._tick()

    def _tick(self) -> None:
        now = Snapshot.of(self.counts, self._clock())
        self._text = status_text(now, self._before)
        self._before = now
        self.draw()
        self._timer = asyncio.get_running_loop().call_later(INTERVAL, self._tick)

    def draw(self) -> None:
        if self._text:
            self.stream.write(_CLEAR + self._text)
            self.stream.flush()

    def clear(self) -> None:
        if self._text:
            self.stream.write(_CLEAR)

    def stop(self) -> None:
        """Stop redrawing and leave the terminal's line empty."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.clear()
        self._text = ""
        self.stream.flush()
