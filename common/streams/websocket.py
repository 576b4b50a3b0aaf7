"""A tunnel over one WebSocket connection, as a ByteStream.

Payload travels as binary messages, one per write. Under ``wstun.v1`` an
empty binary message is the EOF of one direction; without it (websocat, a
browser), ``write_eof()`` closes the WebSocket and a clean close is EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from wstun.common.errors import StreamBroken, StreamClosed
from wstun.common.protocol import CLEAN_CLOSE_CODES, EOF_MARKER, CloseCode
from wstun.common.streams.contract import ByteStream, ChunkSink, StreamState, check_writable
from wstun.common.streams.internals import (
    TunnelClientConnection,
    TunnelServerConnection,
    close_exception,
    drain,
    drop,
    lost_waiter,
    recv_waits_on_nothing,
    send_message,
    transport_closing,
    write_frame_now,
    write_now,
    write_paused,
)
from wstun.common.streams.keepalive import Keepalive, keepalive_for

__all__ = [
    "WS_MAX_QUEUE",
    "WS_MAX_SIZE",
    "WS_OPTIONS",
    "WS_WRITE_LIMIT",
    "WebSocketStream",
]

#: Largest WebSocket message accepted. Our peers send at most one read.
WS_MAX_SIZE = 1024 * 1024

#: Frames queued before websockets stops reading the socket (backpressure).
WS_MAX_QUEUE = 8

#: Outgoing bytes buffered before ``write()`` waits for the transport. At
#: least one message, so a bulk transfer doesn't wait for a drain per message.
WS_WRITE_LIMIT = 256 * 1024

#: Options every wstun WebSocket is opened with, by ``serve`` and ``connect``
#: alike. websockets' keepalive is off: WebSocketStream runs its own, which
#: counts any frame as life. No permessage-deflate: tunnels carry TLS and
#: compressed data.
WS_OPTIONS: Mapping[str, Any] = types.MappingProxyType(
    {
        "compression": None,
        "ping_interval": None,
        "max_size": WS_MAX_SIZE,
        "max_queue": WS_MAX_QUEUE,
        "write_limit": WS_WRITE_LIMIT,
    }
)

# How long abort() gives a WebSocket close frame before dropping the socket.
_ABORT_CLOSE_TIMEOUT = 2.0


def _describe_close(exc: ConnectionClosed) -> str:
    if exc.sent is not None and (exc.rcvd is None or exc.rcvd_then_sent is False):
        # This side closed first (a drain, a reload's revocation): the peer only echoed.
        reason = f" ({exc.sent.reason})" if exc.sent.reason else ""
        return f"WebSocket closed by this side with {exc.sent.code}{reason}"
    if exc.rcvd is not None:
        reason = f" ({exc.rcvd.reason})" if exc.rcvd.reason else ""
        return f"peer closed the WebSocket with {exc.rcvd.code}{reason}"
    return "WebSocket connection lost without a close frame"


class WebSocketStream(ByteStream):
    """A tunnel over one WebSocket connection.

    ``eof_markers`` is true when ``wstun.v1`` was negotiated: then an empty
    binary message is the EOF of one direction. Without it (websocat, a
    browser), ``write_eof()`` closes the WebSocket and a clean close is EOF.

    Keepalive (:class:`Keepalive`): every ``ping_interval`` seconds a ping
    goes out; if nothing at all arrives from the peer within ``ping_timeout``
    after it, the peer is taken for dead. ``keepalive`` instead is the
    connection's own, shared by the tunnels a reusable WebSocket carries.

    ``reusable`` (``wstun.v2``): one of the tunnels the connection carries
    one after another. When both directions have ended cleanly, ``close()``
    ends this tunnel and leaves the WebSocket open (:attr:`reusable_now`
    says so, and ``on_reuse`` is told); any other close, and ``abort()``,
    close the WebSocket. A text message is a control message, which no
    tunnel takes: 1002.
    """

    def __init__(
        self,
        connection: TunnelServerConnection | TunnelClientConnection,
        *,
        eof_markers: bool,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        keepalive: Keepalive | None = None,
        reusable: bool = False,
        on_reuse: Callable[[WebSocketStream], None] | None = None,
    ) -> None:
        self._ws = connection
        self.eof_markers = eof_markers
        # Remainder of a message larger than the last read asked for.
        self._pending = b""
        # Set when the peer's EOF (marker or clean close) was read.
        self._eof_rcvd = False
        # What this side did: write_eof(), then close() or abort().
        self._state = StreamState.OPEN
        self._owns_keepalive = keepalive is None
        self._keepalive = keepalive or (keepalive_for(connection, ping_interval, ping_timeout))
        self.reusable = reusable
        #: Set by close() when this tunnel ended cleanly and the WebSocket stays open.
        self.reusable_now = False
        # Told, by close(), when the WebSocket is free for the next tunnel.
        self._on_reuse = on_reuse
        #: Payload its dialer sent before the tunnel was open (client/pool.py).
        self.sent_ahead = 0

    @property
    def connection(self) -> Connection:
        return self._ws

    @property
    def latency(self) -> float:
        """The last ping's round trip in seconds (0 before any was answered)."""
        return float(self._ws.latency)

    @property
    def keepalive_task(self) -> asyncio.Task[None] | None:
        """The keepalive's pinging task, once its first ping was due."""
        return self._keepalive.task if self._keepalive is not None else None

    def _dead_reason(self) -> str | None:
        return self._keepalive.dead_reason if self._keepalive is not None else None

    def _closed(self) -> bool:
        # A method, not an inline test: the state changes while we await.
        return self._state is StreamState.CLOSED

    def _broken(self, exc: ConnectionClosed) -> StreamBroken:
        return StreamBroken(self._dead_reason() or _describe_close(exc))

    def _is_clean(self, exc: ConnectionClosed) -> bool:
        if exc.rcvd is not None and exc.rcvd.code in CLEAN_CLOSE_CODES:
            return True
        # Without EOF markers, our write_eof() is a close: the read side
        # ending because of it is the documented end of a plain tunnel.
        return not self.eof_markers and self._state is StreamState.EOF_SENT and exc.sent is not None

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._state is StreamState.CLOSED:
            raise StreamClosed("read from a closed stream")
        while not self._pending:
            if self._eof_rcvd:
                return b""
            try:
                message = await self._ws.recv()
            except ConnectionClosed as exc:
                if self._closed():  # close() or abort() came while recv() waited
                    raise StreamClosed("read from a closed stream") from exc
                if self._is_clean(exc):
                    self._eof_rcvd = True
                    return b""
                raise self._broken(exc) from exc
            if isinstance(message, str):
                if self.reusable:
                    await self._fail(CloseCode.PROTOCOL_ERROR, "control message during a tunnel")
                    raise StreamBroken("peer sent a control message during a tunnel")
                await self._fail(CloseCode.UNSUPPORTED_DATA, "text messages are not supported")
                raise StreamBroken("peer sent a text message; only binary is allowed")
            if message == EOF_MARKER:
                if self.eof_markers:
                    self._eof_rcvd = True
                    return b""
                continue  # an empty message carries nothing in plain mode
            self._pending = message
        chunk = self._pending
        if len(chunk) <= max_bytes:
            self._pending = b""
            return chunk
        self._pending = chunk[max_bytes:]
        return chunk[:max_bytes]

    async def write(self, data: bytes) -> int:
        check_writable(data, self._state)
        if write_frame_now(self._ws, data):
            if write_paused(self._ws):
                await self._drain()
            return len(data)
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise self._broken(exc) from exc
        return len(data)

    def try_write(self, data: bytes) -> bool:
        return self._state is StreamState.OPEN and write_now(self._ws, data)

    def set_sink(self, sink: ChunkSink | None) -> None:
        if sink is None:
            self._ws.payload_sink = None
            return

        def take(chunk: bytes) -> bool:
            # Only the message read() would return next: nothing pending or
            # queued before it, read() waiting.
            if (
                self._pending
                or self._eof_rcvd
                or self._state is StreamState.CLOSED
                or not recv_waits_on_nothing(self._ws)
            ):
                return False
            return sink(chunk)

        self._ws.payload_sink = take

    async def _drain(self) -> None:
        """Wait for the transport to drain; a lost connection is StreamBroken."""
        ws = self._ws
        try:
            await drain(ws)
        except Exception as exc:
            # The connection is going away: report it as send() would.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lost_waiter(ws)), _ABORT_CLOSE_TIMEOUT)
            drop(ws)
            raise StreamBroken(self._dead_reason() or _describe_close(close_exception(ws))) from exc

    async def write_eof(self) -> None:
        if self._state is not StreamState.OPEN:
            return
        self._state = StreamState.EOF_SENT
        if not self.eof_markers:
            await self._ws.close(CloseCode.NORMAL)
            return
        try:
            await send_message(self._ws, EOF_MARKER)
        except ConnectionClosed as exc:
            raise self._broken(exc) from exc

    async def close(self) -> None:
        if self._state is StreamState.CLOSED:
            return
        clean = self._state is StreamState.EOF_SENT and self._eof_rcvd and not self._pending
        self._state = StreamState.CLOSED
        if self.reusable and clean and self._ws.state is State.OPEN:
            self.reusable_now = True  # this tunnel is over; the WebSocket carries the next
            if self._on_reuse is not None:
                self._on_reuse(self)
            return
        self._stop_keepalive()
        try:
            await self._ws.close(CloseCode.NORMAL)
        finally:
            # close() gives up after its close_timeout; make sure the socket goes.
            if not transport_closing(self._ws):
                drop(self._ws)

    async def abort(self, reason: str = "") -> None:
        if self._state is StreamState.CLOSED:
            # A close() (or an abort) that still waits for the peer ends now.
            if not lost_waiter(self._ws).done():
                drop(self._ws)
            return
        self._state = StreamState.CLOSED
        self._stop_keepalive()
        await self._fail(CloseCode.INTERNAL_ERROR, reason)

    async def _fail(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` (briefly), then drop the socket."""
        try:
            await asyncio.wait_for(self._ws.close(code, reason[:120]), _ABORT_CLOSE_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            drop(self._ws)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._owns_keepalive:
            self._keepalive.stop()
