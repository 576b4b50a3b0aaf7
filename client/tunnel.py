"""One tunnel of the client, from the dial to its log line, for every mode.

``-L``, ``-D`` and ``-W`` differ only in their local end: a TCP connection,
a SOCKS5 client that wants a reply code, stdin/stdout. Each is a
:class:`LocalEnd`; everything else is :class:`Tunnel`: dial through the
:class:`Dialer`, on a refusal count it, log it (through ``log_failure``,
which may rate-limit) and let the local end react, otherwise relay and leave
the tunnel's one log line.

The :class:`Dialer` is the seam where the server is reached: a new way to
get a tunnel stream (a pool of open WebSockets, a reverse tunnel's channel)
is a new Dialer, not a new copy of this flow.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from wstun.common.errors import HandshakeError
from wstun.common.protocol import Target
from wstun.common.report import (
    TunnelCounter,
    TunnelEnd,
    TunnelReport,
    new_tunnel_id,
    relay_and_report,
)
from wstun.common.streams import ByteStream

__all__ = ["Dialer", "LocalEnd", "Tunnel", "TunnelSettings"]

logger = logging.getLogger("wstun.client")


class Dialer(Protocol):
    """Gives a connected tunnel stream for a target."""

    async def dial(self, target: Target, early: ByteStream | None = None) -> ByteStream:
        """A tunnel to ``target``, ready to relay.

        ``early`` is the local stream when its first bytes may go ahead: a
        dialer that opens the tunnel in-band may read one chunk of it while
        the server answers and send it behind the open; the stream it returns
        then says how many bytes in ``sent_ahead`` (read with a default of 0).
        Raises :class:`HandshakeError` when none can be had: the server
        refused (its status and reason) or wasn't reached (status 0).
        """
        ...


class TunnelHandshakeCounter(TunnelCounter, Protocol):
    """The metrics a tunnel reports to: its start and end, and refusals by status."""

    def handshake_failed(self, status: int) -> None: ...


class LocalEnd(abc.ABC):
    """One mode's end of a tunnel."""

    #: The local end in the tunnel's log line (``127.0.0.1:51000``, ``stdio``).
    peer: str
    #: Its name in relay error messages, and the far end's.
    name = "local"
    remote_name = "server"
    #: The tunnel's kind in its log line and metrics (``reverse`` for -R).
    kind = "forward"
    #: The stream whose first bytes may go to the server before its answer
    #: (``-L``: the application sent them to a plain TCP port); None: wait.
    early: ByteStream | None = None

    def refusal_note(self, error: HandshakeError) -> str:
        """Words added to the failure line (e.g. the SOCKS5 reply code sent)."""
        return ""

    def failure_line(self, target: Target, error: HandshakeError) -> str:
        """The line logged (rate-limited) when no tunnel could be had."""
        return f"tunnel to {target} {error.outcome}{self.refusal_note(error)}"

    @abc.abstractmethod
    async def refused(self, error: HandshakeError) -> None:
        """No tunnel: end the local side as this mode does (a reset, a reply code)."""

    @abc.abstractmethod
    async def opened(self, remote: ByteStream) -> ByteStream | None:
        """The tunnel is open: the stream to relay with ``remote``.

        None when the local end can't go on (it has dealt with ``remote``
        and logged why).
        """

    @abc.abstractmethod
    async def abandon(self) -> None:
        """Cancelled before relaying: end the local side at once."""


@dataclasses.dataclass(frozen=True)
class TunnelSettings:
    """How every tunnel of a client relays."""

    read_size: int
    idle_timeout: float | None
    #: The reason logged when a tunnel is cut by cancellation.
    cancel_reason: str = "client shutting down"


class Tunnel:
    """One tunnel: dial ``target`` for ``local``, relay, report.

    ``report`` is its log line's content, complete once :meth:`run` ends,
    also when it ends by cancellation.
    """

    def __init__(
        self,
        target: Target,
        local: LocalEnd,
        *,
        dialer: Dialer,
        settings: TunnelSettings,
        log_failure: Callable[[str], object],
        metrics: TunnelHandshakeCounter | None = None,
    ) -> None:
        self.target = target
        self.local = local
        self.report = TunnelReport(new_tunnel_id("c"), local.peer, str(target), kind=local.kind)
        self._dialer = dialer
        self._settings = settings
        self._log_failure = log_failure
        self._metrics = metrics

    async def run(self) -> TunnelReport:
        """Carry the tunnel to its end; nothing is raised but cancellation."""
        local, settings = self.local, self._settings
        try:
            remote = await self._dialer.dial(self.target, early=local.early)
        except HandshakeError as exc:
            await self._refused(exc)
            return self.report
        except asyncio.CancelledError:
            await local.abandon()
            raise
        except Exception as exc:  # a dialer that broke its promise still ends the tunnel
            await self._refused(HandshakeError(0, f"can't open a tunnel: {exc!r}"))
            return self.report
        self.report.remote = remote
        self.report.sent_ahead = getattr(remote, "sent_ahead", 0)
        try:
            stream = await local.opened(remote)
        except asyncio.CancelledError:
            await asyncio.gather(local.abandon(), remote.abort(settings.cancel_reason))
            raise
        if stream is not None:
            await relay_and_report(
                stream,
                remote,
                self.report,
                logger,
                read_size=settings.read_size,
                idle_timeout=settings.idle_timeout,
                names=(local.name, local.remote_name),
                cancel_reason=settings.cancel_reason,
                counter=self._metrics,
            )
        return self.report

    async def _refused(self, error: HandshakeError) -> None:
        if self._metrics is not None:
            self._metrics.handshake_failed(error.status)
        self._log_failure(self.local.failure_line(self.target, error))
        self.report.end, self.report.reason = TunnelEnd.REFUSED, str(error)
        logger.debug("%s", self.report.line())
        await self.local.refused(error)
