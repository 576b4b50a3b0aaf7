"""TCP as a ByteStream: half-close through ``shutdown(SHUT_WR)``, abort by RST.

:class:`TcpStream` is its own small ``asyncio.Protocol`` rather than asyncio
streams: received chunks go into a deque and are handed out as they came,
so a read no larger than the chunk costs no copy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from wstun.common.errors import StreamBroken, StreamClosed, describe_os_error
from wstun.common.streams.contract import ByteStream, ChunkSink, StreamState, check_writable

__all__ = ["TcpStream", "open_tcp", "tcp_protocol_factory"]

# Bytes a TcpStream buffers from the socket before it pauses reading.
_TCP_READ_HIGH_WATER = 512 * 1024

# How long close() waits for buffered output to flush before aborting.
_CLOSE_TIMEOUT = 10.0

# struct linger {int l_onoff; int l_linger;}: on, 0 s -> close() sends RST.
_LINGER_RST = struct.pack("ii", 1, 0)


class _TcpProtocol(asyncio.Protocol):
    """Receives into a queue of chunks; a TcpStream reads from that queue.

    Chunks are handed out as the transport delivered them, so the common case
    (a chunk no larger than the read size) costs no copy.
    """

    def __init__(self, on_connected: Callable[[TcpStream], None] | None = None) -> None:
        self._on_connected = on_connected
        self.stream: TcpStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        # Nagle is already off: asyncio and uvloop set TCP_NODELAY on every TCP
        # transport they make (a test holds them to it), so no setsockopt here.
        self.stream = TcpStream(cast(asyncio.Transport, transport))
        if self._on_connected is not None:
            self._on_connected(self.stream)

    def data_received(self, data: bytes) -> None:
        assert self.stream is not None
        self.stream._feed(data)

    def eof_received(self) -> bool:
        assert self.stream is not None
        self.stream._feed_eof()
        return True  # keep the transport open: our write side goes on (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream._lost(exc)

    def pause_writing(self) -> None:
        assert self.stream is not None
        self.stream._write_paused = True

    def resume_writing(self) -> None:
        assert self.stream is not None
        self.stream._resume_writing()


def tcp_protocol_factory(
    on_connected: Callable[[TcpStream], None],
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` handing out TcpStreams."""
    return lambda: _TcpProtocol(on_connected)


async def open_tcp(host: str, port: int) -> TcpStream:
    """Connect to ``host:port``. OS errors propagate unchanged (callers map them)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_TcpProtocol, host, port)
    assert isinstance(protocol, _TcpProtocol)
    assert protocol.stream is not None
    return protocol.stream


class TcpStream(ByteStream):
    """A TCP connection: half-close through ``shutdown(SHUT_WR)``, abort by RST."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        # Received chunks not yet read, and their total size.
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        # Set when the peer sent FIN.
        self._eof_rcvd = False
        # Set when the transport is gone; _error holds why, if it failed.
        self._connection_lost = False
        self._error: Exception | None = None
        # What this side did: write_eof(), then close() or abort().
        self._state = StreamState.OPEN
        # Woken when data, EOF or connection loss arrives.
        self._read_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        # Flow control on the write side, driven by the transport.
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_waiter: asyncio.Future[None] = self._loop.create_future()
        # Takes chunks straight from data_received while a read() waits.
        self._sink: ChunkSink | None = None
        self.peername: tuple[Any, ...] | None = transport.get_extra_info("peername")
        self.sockname: tuple[Any, ...] | None = transport.get_extra_info("sockname")

    # Callbacks from _TcpProtocol.

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and self._read_waiter is not None and not self._chunks and sink(data):
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _TCP_READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def _feed_eof(self) -> None:
        self._eof_rcvd = True
        self._wake_reader()

    def _lost(self, exc: Exception | None) -> None:
        self._connection_lost = True
        self._error = exc
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._lost_waiter.done():
            self._lost_waiter.set_result(None)

    def _resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The ByteStream contract.

    def _broken(self) -> StreamBroken:
        if self._error is not None:
            return StreamBroken(describe_os_error(self._error))
        return StreamBroken("connection lost")

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        while True:
            # Checked on every wake-up too: close() may come while we wait.
            if self._state is StreamState.CLOSED:
                raise StreamClosed("read from a closed stream")
            if self._chunks:
                break
            if self._error is not None:
                raise self._broken() from self._error
            if self._eof_rcvd:
                return b""
            if self._connection_lost:
                raise self._broken()
            self._read_waiter = self._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        chunk = self._chunks[0]
        if len(chunk) <= max_bytes:
            self._chunks.popleft()
        else:
            self._chunks[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _TCP_READ_HIGH_WATER // 4:
            self._reading_paused = False
            if not self._connection_lost:
                self._transport.resume_reading()
        return chunk

    async def write(self, data: bytes) -> int:
        check_writable(data, self._state)
        if self._connection_lost or self._transport.is_closing():
            raise self._broken() from self._error
        self._transport.write(data)
        while self._write_paused and not self._connection_lost:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._state is StreamState.CLOSED:
            raise StreamClosed("stream closed while the write waited to drain")
        if self._connection_lost and self._error is not None:
            raise self._broken() from self._error
        return len(data)

    def try_write(self, data: bytes) -> bool:
        if (
            self._state is not StreamState.OPEN
            or self._write_paused
            or self._connection_lost
            or self._transport.is_closing()
        ):
            return False
        self._transport.write(data)
        return True

    def set_sink(self, sink: ChunkSink | None) -> None:
        self._sink = sink

    async def write_eof(self) -> None:
        if self._state is not StreamState.OPEN:
            return
        self._state = StreamState.EOF_SENT
        if self._connection_lost:
            raise self._broken() from self._error
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def close(self) -> None:
        if self._state is StreamState.CLOSED:
            return
        self._state = StreamState.CLOSED
        self._transport.close()
        try:
            if not self._lost_waiter.done():
                # A timer rather than wait_for(): every tunnel ends with a close.
                # The abort makes the transport lost, which ends the wait.
                timer = self._loop.call_later(_CLOSE_TIMEOUT, self._transport.abort)
                try:
                    await asyncio.shield(self._lost_waiter)
                finally:
                    timer.cancel()
        finally:
            self._wake_reader()

    async def abort(self, reason: str = "") -> None:
        if self._state is StreamState.CLOSED and self._connection_lost:
            return
        self._state = StreamState.CLOSED
        sock = self._transport.get_extra_info("socket")
        if sock is not None and not self._connection_lost:
            # If the socket is already gone, abort() below still closes it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self._transport.abort()
        self._wake_reader()

    def __repr__(self) -> str:
        return f"<TcpStream peer={self.peername!r}>"
