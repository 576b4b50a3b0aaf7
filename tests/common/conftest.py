"""Connected stream pairs over real sockets on 127.0.0.1, for the stream and relay tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from wstun.common.protocol import SUBPROTOCOL
from wstun.common.streams import (
    WS_OPTIONS,
    ByteStream,
    TcpStream,
    TunnelClientConnection,
    TunnelServerConnection,
    WebSocketStream,
    open_tcp,
    tcp_protocol_factory,
)

__all__ = ["KINDS", "MakePair", "StreamPair"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async stream and relay test on asyncio's loop and on uvloop.

    The commands run on uvloop when it is installed, and its transports differ
    from asyncio's in the details the contract depends on (half-close, RST).
    """
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories


#: The three stream flavours the conformance suite runs against.
KINDS = ("tcp", "ws-v1", "ws-plain")

# Bound for every wait on a connection being set up.
_SETUP_TIMEOUT = 5.0


@dataclasses.dataclass
class StreamPair:
    """Two connected streams; ``left_ws``/``right_ws`` are the raw WebSocket ends."""

    kind: str
    left: ByteStream
    right: ByteStream
    left_ws: TunnelClientConnection | TunnelServerConnection | None = None
    right_ws: TunnelClientConnection | TunnelServerConnection | None = None

    def swapped(self) -> StreamPair:
        return StreamPair(self.kind, self.right, self.left, self.right_ws, self.left_ws)


class MakePair:
    """Builds connected pairs and tears down everything it built."""

    def __init__(self) -> None:
        self._streams: list[ByteStream] = []
        self._connections: list[TunnelClientConnection | TunnelServerConnection] = []
        self._cleanups: list[Callable[[], Awaitable[None]]] = []

    async def __call__(
        self,
        kind: str,
        *,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        ping_side: str = "left",
    ) -> StreamPair:
        """A pair of ``kind``; the left end is the connecting (client) side.

        ``ping_interval``/``ping_timeout`` give one end (``ping_side``) keepalive.
        """
        if kind == "tcp":
            return await self._tcp_pair()
        keepalive = {"ping_interval": ping_interval, "ping_timeout": ping_timeout}
        client, server = await self._ws_connections(offer_v1=kind == "ws-v1")
        eof_markers = kind == "ws-v1"
        assert (client.subprotocol == SUBPROTOCOL) is eof_markers
        left = WebSocketStream(
            client, eof_markers=eof_markers, **(keepalive if ping_side == "left" else {})
        )
        right = WebSocketStream(
            server, eof_markers=eof_markers, **(keepalive if ping_side == "right" else {})
        )
        self._streams += [left, right]
        return StreamPair(kind, left, right, client, server)

    async def tcp(self) -> tuple[TcpStream, TcpStream]:
        """A connected TcpStream pair: (connecting side, accepting side)."""
        pair = await self._tcp_pair()
        assert isinstance(pair.left, TcpStream)
        assert isinstance(pair.right, TcpStream)
        return pair.left, pair.right

    async def _tcp_pair(self) -> StreamPair:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[TcpStream] = loop.create_future()
        server = await loop.create_server(tcp_protocol_factory(accepted.set_result), "127.0.0.1", 0)
        self._cleanups.append(_closer(server))
        port = server.sockets[0].getsockname()[1]
        left = await open_tcp("127.0.0.1", port)
        self._streams.append(left)
        right = await asyncio.wait_for(accepted, _SETUP_TIMEOUT)
        self._streams.append(right)
        server.close()  # one connection per pair; accepted ones stay open
        return StreamPair("tcp", left, right)

    async def _ws_connections(
        self, *, offer_v1: bool
    ) -> tuple[TunnelClientConnection, TunnelServerConnection]:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[TunnelServerConnection] = loop.create_future()

        async def handler(connection: ServerConnection) -> None:
            assert isinstance(connection, TunnelServerConnection)
            accepted.set_result(connection)
            await connection.wait_closed()

        server = await serve(
            handler,
            "127.0.0.1",
            0,
            create_connection=TunnelServerConnection,
            select_subprotocol=_select_v1,
            **WS_OPTIONS,
        )

        async def stop_server() -> None:
            server.close()
            await asyncio.wait_for(server.wait_closed(), _SETUP_TIMEOUT)

        self._cleanups.append(stop_server)
        port = server.sockets[0].getsockname()[1]
        client = await connect(
            f"ws://127.0.0.1:{port}/",
            create_connection=TunnelClientConnection,
            subprotocols=[Subprotocol(SUBPROTOCOL)] if offer_v1 else None,
            **WS_OPTIONS,
            proxy=None,
        )
        assert isinstance(client, TunnelClientConnection)
        self._connections.append(client)
        server_side = await asyncio.wait_for(accepted, _SETUP_TIMEOUT)
        self._connections.append(server_side)
        return client, server_side

    async def aclose(self) -> None:
        # Drop raw sockets first so that no abort waits for a closing handshake
        # from a peer that a test froze.
        for connection in self._connections:
            connection.transport.abort()
        for stream in self._streams:
            with contextlib.suppress(Exception):
                await stream.abort("test over")
        for connection in self._connections:
            await asyncio.wait_for(connection.wait_closed(), _SETUP_TIMEOUT)
        for cleanup in reversed(self._cleanups):
            await cleanup()


def _select_v1(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def _closer(server: asyncio.Server) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        server.close()
        await asyncio.wait_for(server.wait_closed(), _SETUP_TIMEOUT)

    return close


@pytest.fixture
async def make_pair() -> AsyncIterator[MakePair]:
    """A factory of connected pairs; everything it made is torn down afterwards."""
    factory = MakePair()
    try:
        yield factory
    finally:
        await factory.aclose()
