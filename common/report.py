"""The one log line each tunnel leaves behind when it ends."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import time
from typing import Protocol

from wstun.common.errors import IdleTimeout, RelayError
from wstun.common.relay import Transfer, copy_bidirectional
from wstun.common.streams import ByteStream

__all__ = [
    "TunnelCounter",
    "TunnelEnd",
    "TunnelReport",
    "format_peer",
    "new_tunnel_id",
    "relay_and_report",
]

_ids = itertools.count(1)


def new_tunnel_id(prefix: str) -> str:
    """A short id, unique in this process, e.g. ``s42`` or ``c7``."""
    return f"{prefix}{next(_ids)}"


def format_peer(address: object) -> str:
    """``host:port`` (IPv6 in brackets) from a socket address tuple."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else "-"


class TunnelEnd(enum.Enum):
    """How a tunnel ended, as its log line and metrics say it."""

    #: Both directions finished cleanly.
    EOF = "eof"
    #: A read, write or half-close failed on either side.
    ERROR = "error"
    #: No payload moved for the idle timeout.
    IDLE_TIMEOUT = "idle-timeout"
    #: The server refused to open it (client side only; logged at DEBUG).
    REFUSED = "refused"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(eq=False)
class TunnelReport:
    """What happened to one tunnel. ``up`` is client->target payload bytes."""

    id: str
    peer: str
    target: str
    #: ``forward`` (-L, -D, -W) or ``reverse`` (-R: the connection came in on the
    #: server's listener; ``up`` is then that application to the client's service).
    kind: str = "forward"
    started: float = dataclasses.field(default_factory=time.monotonic)
    up: int = 0
    down: int = 0
    end: TunnelEnd = TunnelEnd.EOF
    reason: str = ""
    #: The relay's two directions while it runs (their counts are live).
    progress: list[Transfer] = dataclasses.field(default_factory=list, repr=False)
    #: The stream to the far side, once there is one (for its ping round trip).
    remote: ByteStream | None = dataclasses.field(default=None, repr=False)
    #: Payload bytes the dial already sent up, ahead of the relay (counted in ``up``).
    sent_ahead: int = 0
    #: The server's user for this tunnel (``--users-file``); None: not said in the line.
    user: str | None = None

    def moved(self) -> tuple[int, int]:
        """Payload bytes up and down so far: live while relaying, final after."""
        if self.progress:
            forward, backward = self.progress
            return self.sent_ahead + forward.count, backward.count
        return self.up, self.down

    def finish(self, counts: tuple[int, int] | None, error: BaseException | None) -> None:
        """Record the relay's outcome: its counts, or the error that ended it."""
        if counts is not None:
            self.up, self.down = counts
        if isinstance(error, RelayError):
            self.up, self.down = error.a_to_b, error.b_to_a
            self.end = TunnelEnd.IDLE_TIMEOUT if isinstance(error, IdleTimeout) else TunnelEnd.ERROR
            self.reason = str(error)
        elif error is not None:
            self.end = TunnelEnd.ERROR
            self.reason = self.reason or str(error) or type(error).__name__
        if counts is not None or isinstance(error, RelayError):
            self.up += self.sent_ahead

    def line(self) -> str:
        duration = time.monotonic() - self.started
        text = (
            f"tunnel closed id={self.id}{' kind=reverse' if self.kind == 'reverse' else ''}"
            f"{f' user={self.user}' if self.user is not None else ''} "
            f"peer={self.peer} target={self.target} "
            f"up={self.up} down={self.down} duration={duration:.3f}s end={self.end}"
        )
        if self.reason:
            text += f' reason="{self.reason}"'
        return text


class TunnelCounter(Protocol):
    """What counts tunnels (the metrics): told when one starts and how it ended."""

    def tunnel_opened(self, report: TunnelReport) -> None: ...

    def tunnel_ended(self, report: TunnelReport) -> None: ...


async def relay_and_report(
    a: ByteStream,
    b: ByteStream,
    report: TunnelReport,
    log: logging.Logger,
    *,
    read_size: int,
    idle_timeout: float | None,
    names: tuple[str, str],
    cancel_reason: str,
    counter: TunnelCounter | None = None,
) -> None:
    """Relay ``a`` (the client side) and ``b``, then log the tunnel's one line.

    A relay error ends up in the report, not raised: the tunnel is over
    either way. Cancellation is logged with ``cancel_reason`` and re-raised.
    ``counter``, when given, hears of the tunnel's start and of its end,
    with the same report (and so the same payload counts) as the log line.
    """
    if counter is not None:
        counter.tunnel_opened(report)
    counts: tuple[int, int] | None = None
    error: BaseException | None = None
    try:
        counts = await copy_bidirectional(
            a,
            b,
            read_size=read_size,
            idle_timeout=idle_timeout,
            names=names,
            progress=report.progress,
        )
    except RelayError as exc:
        error = exc
    except asyncio.CancelledError as exc:
        error = exc
        report.reason = cancel_reason
        raise
    finally:
        report.finish(counts, error)
        log.info("%s", report.line())
        if counter is not None:
            counter.tunnel_ended(report)
