"""The server's side of a ``wstun.v2`` WebSocket: tunnels opened in-band, one after another.

A v2 WebSocket starts with the tunnel its upgrade named (checked and dialled
before the 101, as in v1) or idle. While idle it waits for the client's
``open``, runs the same target checks and dial as a target in the URL
(``TargetDialer``), and answers ``opened`` or ``refused`` with the status
and reason an HTTP refusal carries. A tunnel that ends cleanly both ways
leaves the WebSocket idle again; any failure closes it (1011, as in v1), and
a message that breaks the protocol closes it with 1002 (docs/design.md,
"Wire protocol v2").
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable

from websockets.exceptions import ConnectionClosed

from wstun.common.protocol import (
    CloseCode,
    Control,
    ControlError,
    Failure,
    HandshakeRejection,
    Open,
    Opened,
    Refused,
    Target,
    encode_control,
    parse_control,
)
from wstun.common.streams import TcpStream, WebSocketStream
from wstun.common.streams.internals import send_message
from wstun.common.streams.keepalive import keepalive_for
from wstun.server.connection import HandshakeConnection

__all__ = ["ChannelState", "ServerChannel"]

logger = logging.getLogger("wstun.server")

#: How a v2 WebSocket gets a target dialled: the checks and the dial of the server.
DialTarget = Callable[[Target], Awaitable[TcpStream | HandshakeRejection]]
#: Relays one tunnel (the server's relay_and_report); True when it ended cleanly.
RelayTunnel = Callable[[WebSocketStream, TcpStream, Target], Awaitable[bool]]


class ChannelState(enum.Enum):
    """Where a v2 WebSocket is, as the server sees it."""

    TUNNEL = "tunnel"
    IDLE = "idle"
    OPENING = "opening"
    #: After a refusal: payload the client sent before it saw it is dropped.
    REFUSED = "refused"
    CLOSED = "closed"


class ServerChannel:
    """Carries the tunnels of one v2 WebSocket until it closes.

    ``dial`` checks and dials a target; ``relay`` runs one tunnel; ``refuse``
    logs and counts a refusal as the HTTP path does; ``resolve_target``
    turns an ``open``'s target into a Target (or the refusal for a bad one);
    ``draining`` says whether new tunnels are refused (503).
    """

    def __init__(
        self,
        connection: HandshakeConnection,
        *,
        dial: DialTarget,
        relay: RelayTunnel,
        refuse: Callable[[HandshakeConnection, HandshakeRejection], None],
        resolve_target: Callable[[str | None], Target | HandshakeRejection],
        draining: Callable[[], bool],
        ping_interval: float | None,
        ping_timeout: float | None,
    ) -> None:
        self.connection = connection
        self._dial = dial
        self._relay = relay
        self._refuse = refuse
        self._resolve_target = resolve_target
        self._draining = draining
        self.state = ChannelState.IDLE
        #: One keepalive for the connection, idle or carrying a tunnel.
        self.keepalive = keepalive_for(connection, ping_interval, ping_timeout)

    def stream(self) -> WebSocketStream:
        """The stream of the next tunnel on this WebSocket."""
        return WebSocketStream(
            self.connection, eof_markers=True, keepalive=self.keepalive, reusable=True
        )

    async def run(self, first: tuple[TcpStream, Target] | None) -> None:
        """Carry the upgrade's tunnel, if any, then every tunnel opened in-band."""
        try:
            if first is not None and not await self._tunnel(*first):
                return
            while not self._draining() and (target := await self._next_open()) is not None:
                if not await self._tunnel(*target):
                    return
            if self._draining():  # the tunnel that ended was the last one here
                await self.close_if_idle()
        finally:
            self.state = ChannelState.CLOSED
            if self.keepalive is not None:
                self.keepalive.stop()

    async def _tunnel(self, target_stream: TcpStream, target: Target) -> bool:
        self.state = ChannelState.TUNNEL
        clean = await self._relay(self.stream(), target_stream, target)
        self.state = ChannelState.IDLE
        return clean

    async def _next_open(self) -> tuple[TcpStream, Target] | None:
        """Wait for an ``open`` and dial its target; None once the WebSocket is done."""
        while True:
            try:
                message = await self.connection.recv()
            except ConnectionClosed:
                return None
            if isinstance(message, bytes):
                if self.state is ChannelState.REFUSED:
                    continue  # payload for the refused target: never sent on
                await self._violation("payload while no tunnel is open")
                return None
            try:
                control = parse_control(message)
            except ControlError as exc:
                await self._violation(str(exc))
                return None
            if not isinstance(control, Open):
                await self._violation(f"unexpected {_name(control)} from a client")
                return None
            opened = await self._open(control)
            if opened is not None:
                return opened

    async def _open(self, request: Open) -> tuple[TcpStream, Target] | None:
        self.state = ChannelState.OPENING
        target = self._resolve_target(request.target)
        if self._draining():
            target = HandshakeRejection(Failure.UNAVAILABLE, "server is shutting down")
        dialled = target if isinstance(target, HandshakeRejection) else await self._dial(target)
        try:
            if isinstance(dialled, HandshakeRejection):
                self._refuse(self.connection, dialled)
                refused = Refused(dialled.status, dialled.reason)
                await send_message(self.connection, encode_control(refused))
                self.state = ChannelState.REFUSED
                return None
            await send_message(self.connection, encode_control(Opened()))
        except ConnectionClosed:
            if not isinstance(dialled, HandshakeRejection):
                await dialled.abort("client went away")
            self.state = ChannelState.CLOSED
            return None
        assert not isinstance(target, HandshakeRejection)
        return dialled, target

    async def _violation(self, reason: str) -> None:
        """Close with 1002 and the reason; the connection is done."""
        logger.info("protocol error peer=%s: %s", self.connection.client_peer, reason)
        self.state = ChannelState.CLOSED
        await self.connection.close_within(CloseCode.PROTOCOL_ERROR, reason)

    async def close_if_idle(self) -> None:
        """On drain: close an idle WebSocket at once (1001); a tunnel goes on."""
        if self.state in (ChannelState.IDLE, ChannelState.REFUSED):
            self.state = ChannelState.CLOSED
            await self.connection.close_within(CloseCode.GOING_AWAY, "server is shutting down")


def _name(control: Control) -> str:
    return type(control).__name__.lower()
