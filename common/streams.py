"""The byte-stream contract and its two adapters: TCP and WebSocket.

Every stream the relay touches keeps the promises of :class:`ByteStream`,
modelled on trio's ``HalfCloseableStream``:

- ``read(max_bytes)`` returns at most ``max_bytes``, and ``b""`` if, and only
  if, the peer has finished sending. Failures raise :class:`StreamBroken`.
- ``write(data)`` takes the whole non-empty chunk, waits for the transport
  to drain (backpressure) and returns ``len(data)``: payload bytes only.
- ``write_eof()`` ends this direction; the other keeps flowing. Idempotent.
- ``close()`` is graceful and idempotent and always ends with the resource
  closed; ``abort()`` is immediate and makes the far side see an error.

One task may read while another writes; two concurrent readers (or writers)
are a bug in the caller.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import secrets
import socket
import struct
import types
from collections.abc import Callable, Generator, Mapping
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, Protocol, Side, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from wstun.common.errors import StreamBroken, StreamClosed, describe_os_error
from wstun.common.protocol import CLEAN_CLOSE_CODES, EOF_MARKER, CloseCode, Target

__all__ = [
    "DEFAULT_READ_SIZE",
    "WS_MAX_QUEUE",
    "WS_MAX_SIZE",
    "WS_OPTIONS",
    "WS_WRITE_LIMIT",
    "ByteStream",
    "ChunkSink",
    "TcpStream",
    "TunnelClientConnection",
    "TunnelServerConnection",
    "WebSocketStream",
    "check_writable",
    "open_tcp",
    "tcp_protocol_factory",
]

#: Bytes asked for per read by the relay. One read becomes one message. As
#: large as the chunks uvloop hands over (256 KiB), so a chunk is never cut.
DEFAULT_READ_SIZE = 256 * 1024

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

# Bytes a TcpStream buffers from the socket before it pauses reading.
_TCP_READ_HIGH_WATER = 512 * 1024

# How long close() waits for buffered output to flush before aborting.
_CLOSE_TIMEOUT = 10.0

# How long abort() gives a WebSocket close frame before dropping the socket.
_ABORT_CLOSE_TIMEOUT = 2.0

# struct linger {int l_onoff; int l_linger;}: on, 0 s -> close() sends RST.
_LINGER_RST = struct.pack("ii", 1, 0)


class ByteStream(abc.ABC):
    """A bidirectional, half-closeable byte stream."""

    @abc.abstractmethod
    async def read(self, max_bytes: int) -> bytes:
        """Read up to ``max_bytes``; ``b""`` if, and only if, the peer sent EOF.

        Raises :class:`StreamBroken` when the peer or transport failed and
        :class:`StreamClosed` after ``close()``/``abort()`` on this side.
        Canceling ``read`` is safe: no data is lost.
        """

    @abc.abstractmethod
    async def write(self, data: bytes) -> int:
        """Send all of ``data`` and wait for the transport to drain.

        Returns ``len(data)``, the payload bytes accepted. ``write(b"")`` raises
        :class:`ValueError`; writing after ``write_eof()`` or ``close()`` raises
        :class:`StreamClosed`. Canceling ``write`` may leave ``data`` partly
        sent; the relay only cancels a write when it aborts the stream.
        """

    @abc.abstractmethod
    async def write_eof(self) -> None:
        """Signal that this side will send nothing more. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close gracefully; idempotent; the stream is closed even on failure."""

    @abc.abstractmethod
    async def abort(self, reason: str = "") -> None:
        """Close at once, so that the far side sees an error, not an EOF."""

    # Optional fast path for the relay. The defaults opt out; a stream that
    # implements them still keeps every promise above.

    def try_write(self, data: bytes) -> bool:
        """Write non-empty ``data`` now if that needs no waiting at all.

        True: all of ``data`` was accepted, exactly as ``write()`` would have
        done. False: nothing was written (the caller uses ``write()``).
        """
        return False

    def set_sink(self, sink: ChunkSink | None) -> None:
        """While a ``read()`` waits with nothing buffered, offer arriving chunks to ``sink``.

        A chunk the sink accepts (returns True) is consumed: ``read()`` will
        never return it. A refused chunk is buffered for ``read()`` as usual,
        and so is everything after it, so order is kept. EOF and errors
        always go to ``read()``. ``None`` removes the sink.
        """
        del sink  # this stream has no fast path: read() gets every chunk


#: Takes a chunk just received; True if it consumed it (see ByteStream.set_sink).
ChunkSink = Callable[[bytes], bool]


def check_writable(data: bytes, *, closed: bool, eof_sent: bool) -> None:
    """The part of the write() contract every stream checks the same way."""
    if not data:
        raise ValueError("write() needs a non-empty chunk; use write_eof() to end")
    if closed:
        raise StreamClosed("write to a closed stream")
    if eof_sent:
        raise StreamClosed("write after write_eof()")


# --------------------------------------------------------------------- TCP


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
        transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = TcpStream(transport)
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
        # Set by write_eof(); set by close()/abort().
        self._eof_sent = False
        self._closed = False
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
            if self._closed:
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
        check_writable(data, closed=self._closed, eof_sent=self._eof_sent)
        if self._connection_lost or self._transport.is_closing():
            raise self._broken() from self._error
        self._transport.write(data)
        while self._write_paused and not self._connection_lost:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._closed:
            raise StreamClosed("stream closed while the write waited to drain")
        if self._connection_lost and self._error is not None:
            raise self._broken() from self._error
        return len(data)

    def try_write(self, data: bytes) -> bool:
        if (
            self._closed
            or self._eof_sent
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
        if self._eof_sent or self._closed:
            return
        self._eof_sent = True
        if self._connection_lost:
            raise self._broken() from self._error
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost_waiter), _CLOSE_TIMEOUT)
        except TimeoutError:
            self._transport.abort()
        finally:
            self._wake_reader()

    async def abort(self, reason: str = "") -> None:
        if self._closed and self._connection_lost:
            return
        self._closed = True
        sock = self._transport.get_extra_info("socket")
        if sock is not None and not self._connection_lost:
            # If the socket is already gone, abort() below still closes it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self._transport.abort()
        self._wake_reader()

    def __repr__(self) -> str:
        return f"<TcpStream peer={self.peername!r}>"


# --------------------------------------------------------------- WebSocket


class _ChunkReader(StreamReader):
    """websockets' StreamReader, keeping received chunks instead of one buffer.

    The stock reader appends every chunk to a bytearray, slices each frame out
    of it and deletes the slice: three copies of every payload byte, a third
    of a receiving tunnel's CPU time in profiles. This one keeps the chunks as
    uvloop delivered them and copies a frame's bytes once, when it is taken
    (none when a frame is exactly a chunk). Same generator-based interface,
    same errors; the HTTP handshake methods simply merge the chunks first.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()
        # Bytes of _chunks[0] already consumed, and unread bytes in total.
        self._offset = 0
        self._size = 0
        #: Whole lines handed out (the handshake's), to tell a request line
        #: that is too long from a header line.
        self.lines_read = 0

    def _merge(self) -> bytes:
        """The unread bytes in one chunk, from ``_offset`` on (handshake only: it copies)."""
        if not self._chunks:
            return b""
        if len(self._chunks) > 1:
            merged = b"".join(
                [memoryview(self._chunks[0])[self._offset :], *list(self._chunks)[1:]]
            )
            self._chunks.clear()
            self._chunks.append(merged)
            self._offset = 0
        return self._chunks[0]

    def _take(self, n: int) -> bytes:
        """Remove and return the next ``n`` unread bytes (``n <= self._size``)."""
        self._size -= n
        first = self._chunks[0]
        start = self._offset
        if start + n <= len(first):
            if start == 0 and n == len(first):
                self._chunks.popleft()
                return first
            self._offset = start + n
            if self._offset == len(first):
                self._chunks.popleft()
                self._offset = 0
            return first[start : start + n]
        parts: list[memoryview] = []
        while n:
            chunk = self._chunks[0]
            piece = memoryview(chunk)[self._offset : self._offset + n]
            parts.append(piece)
            n -= len(piece)
            if self._offset + len(piece) == len(chunk):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset += len(piece)
        return b"".join(parts)

    def read_line(  # type: ignore[override]
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes]:
        p = 0
        while True:
            # _merge() copies only when more than one chunk waits, so a
            # request's lines are not copied once per line.
            first = self._merge()
            start = self._offset
            n = first.find(b"\n", start + p) + 1 - start
            if n > 0:
                break
            p = self._size
            if p > m:
                raise too_long_exc_type(f"read {p} bytes, expected no more than {m} bytes")
            if self.eof:
                raise EOFError(f"stream ends after {p} bytes, before end of line")
            yield
        if n > m:
            raise too_long_exc_type(f"read {n} bytes, expected no more than {m} bytes")
        self.lines_read += 1
        return self._take(n)

    def read_exact(self, n: int) -> Generator[None, None, bytes]:  # type: ignore[override]
        assert n >= 0
        while self._size < n:
            if self.eof:
                raise EOFError(f"stream ends after {self._size} bytes, expected {n} bytes")
            yield
        return self._take(n) if n else b""

    def read_to_eof(  # type: ignore[override]
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes]:
        while not self.eof:
            if self._size > m:
                raise too_long_exc_type(f"read {self._size} bytes, expected no more than {m} bytes")
            yield
        return self._take(self._size) if self._size else b""

    def at_eof(self) -> Generator[None, None, bool]:
        while True:
            if self._size:
                return False
            if self.eof:
                return True
            yield

    def feed_data(self, data: bytes | bytearray) -> None:
        if self.eof:
            raise EOFError("stream ended")
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    def discard(self) -> None:
        self._chunks.clear()
        self._offset = self._size = 0


def _use_chunk_reader(protocol: Protocol) -> None:
    """Give a fresh websockets protocol the chunk reader, before any byte arrives.

    The parser generator was started on the stock reader; it has consumed
    nothing yet, so it is simply started again on the new one.
    """
    if type(protocol.reader) is StreamReader and not protocol.reader.buffer:
        protocol.reader = _ChunkReader()
        protocol.parser = protocol.parse()
        next(protocol.parser)


class _TunnelConnection(Connection):
    """What wstun adds to websockets' connections, on both sides.

    - Liveness: every byte received is timestamped, so any frame counts as
      proof of life (``last_received``, ``wait_received``).
    - The chunk reader (:func:`_use_chunk_reader`), installed before any byte
      arrives.
    - ``frame_sink``: WebSocketStream's hook that takes a binary message as
      its frame is parsed, while its read() waits with nothing queued.

    A base placed before websockets' ServerConnection/ClientConnection, so
    its overrides wrap theirs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _use_chunk_reader(self.protocol)
        self.last_received = self.loop.time()
        self._rx_waiter: asyncio.Future[None] | None = None
        self.frame_sink: Callable[[Frame], bool] | None = None

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        super().data_received(data)

    def process_event(self, event: Event) -> None:
        sink = self.frame_sink
        if sink is not None and isinstance(event, Frame) and sink(event):
            return
        super().process_event(event)

    async def wait_received(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for any bytes from the peer."""
        self._rx_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._rx_waiter), timeout)
        except TimeoutError:
            pass
        finally:
            self._rx_waiter = None


class TunnelServerConnection(_TunnelConnection, ServerConnection):
    """websockets' server connection plus liveness stamps and the dialled target.

    ``target_stream`` holds the target connection dialled during the
    handshake until the tunnel handler takes it; if the handshake never
    completes, the connection aborts it when the socket goes away.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_stream: TcpStream | None = None
        # The target that target_stream is connected to.
        self.target: Target | None = None
        # The real client's address (host:port), set during the handshake.
        self.client_peer: str = "-"

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        stream, self.target_stream = self.target_stream, None
        if stream is not None:
            self.loop.create_task(stream.abort("handshake did not complete"))


class TunnelClientConnection(_TunnelConnection, ClientConnection):
    """websockets' client connection plus liveness stamps."""


_HEADER_SHORT = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _frame_header(length: int, mask_bit: int) -> bytes:
    """FIN + binary opcode, the mask bit and the payload length (RFC 6455 5.2)."""
    if length < 126:
        return _HEADER_SHORT.pack(0x82, mask_bit | length)
    if length < 65536:
        return _HEADER_16.pack(0x82, mask_bit | 126, length)
    return _HEADER_64.pack(0x82, mask_bit | 127, length)


def _connection_closed(connection: Connection) -> bool:
    # A function, not an inline test: the state changes while we await.
    return connection.state is State.CLOSED


def _describe_close(exc: ConnectionClosed) -> str:
    if exc.rcvd is not None:
        reason = f" ({exc.rcvd.reason})" if exc.rcvd.reason else ""
        return f"peer closed the WebSocket with {exc.rcvd.code}{reason}"
    if exc.sent is not None:
        return f"WebSocket closed by this side with {exc.sent.code}"
    return "WebSocket connection lost without a close frame"


class WebSocketStream(ByteStream):
    """A tunnel over one WebSocket connection.

    ``eof_markers`` is true when ``wstun.v1`` was negotiated: then an empty
    binary message is the EOF of one direction. Without it (websocat, a
    browser), ``write_eof()`` closes the WebSocket and a clean close is EOF.

    Keepalive: every ``ping_interval`` seconds a ping goes out; if nothing at
    all arrives from the peer within ``ping_timeout`` after it, the peer is
    taken for dead. Bytes of any frame count, and a socket whose reading is
    paused because *we* are slow to consume never counts as dead.
    """

    def __init__(
        self,
        connection: TunnelServerConnection | TunnelClientConnection,
        *,
        eof_markers: bool,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
    ) -> None:
        self._ws = connection
        self.eof_markers = eof_markers
        # Remainder of a message larger than the last read asked for.
        self._pending = b""
        self._eof_rcvd = False
        self._eof_sent = False
        self._closed = False
        # Why the keepalive gave up on the peer, for the read/write error.
        self._dead_reason: str | None = None
        self.keepalive_task: asyncio.Task[None] | None = None
        # The first ping is a timer that starts keepalive_task when it fires:
        # most tunnels end before it, and a timer costs less than a task.
        self._keepalive_timer: asyncio.TimerHandle | None = None
        if ping_interval:
            self._keepalive_timer = asyncio.get_running_loop().call_later(
                ping_interval, self._start_keepalive, ping_interval, ping_timeout or None
            )

    @property
    def connection(self) -> Connection:
        return self._ws

    def _broken(self, exc: ConnectionClosed) -> StreamBroken:
        return StreamBroken(self._dead_reason or _describe_close(exc))

    def _is_clean(self, exc: ConnectionClosed) -> bool:
        if exc.rcvd is not None and exc.rcvd.code in CLEAN_CLOSE_CODES:
            return True
        # Without EOF markers, our write_eof() is a close: the read side
        # ending because of it is the documented end of a plain tunnel.
        return not self.eof_markers and self._eof_sent and exc.sent is not None

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._closed:
            raise StreamClosed("read from a closed stream")
        while not self._pending:
            if self._eof_rcvd:
                return b""
            try:
                message = await self._ws.recv()
            except ConnectionClosed as exc:
                if self._is_clean(exc):
                    self._eof_rcvd = True
                    return b""
                if self._closed:
                    raise StreamClosed("read from a closed stream") from exc
                raise self._broken(exc) from exc
            if isinstance(message, str):
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
        check_writable(data, closed=self._closed, eof_sent=self._eof_sent)
        if self._can_write_directly():
            self._write_frame(data)
            if self._ws.paused:
                await self._drain()
            return len(data)
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise self._broken(exc) from exc
        return len(data)

    def try_write(self, data: bytes) -> bool:
        if self._closed or self._eof_sent or self._ws.paused or not self._can_write_directly():
            return False
        self._write_frame(data)
        return True

    def set_sink(self, sink: ChunkSink | None) -> None:
        if sink is None:
            self._ws.frame_sink = None
            return

        def take(frame: Frame) -> bool:
            # Only a whole, non-empty binary message that read() would return
            # next: nothing pending or queued before it, read() waiting.
            if (
                frame.opcode is not Opcode.BINARY
                or not frame.fin
                or not frame.data
                or self._pending
                or self._eof_rcvd
                or self._closed
            ):
                return False
            assembler = self._ws.recv_messages
            if not getattr(assembler, "get_in_progress", False) or len(assembler.frames):
                return False
            return sink(bytes(frame.data))

        self._ws.frame_sink = take

    def _can_write_directly(self) -> bool:
        """True when a binary frame may go straight to the transport.

        That is when websockets itself would only serialize it and write it:
        the connection is open, nothing of its own is waiting to be written
        (so frames stay in order) and no extension transforms frames.
        """
        protocol = self._ws.protocol
        return (
            protocol.state is State.OPEN
            and not protocol.writes
            and not protocol.expect_continuation_frame
            and not protocol.extensions
            and self._ws.send_in_progress is None
        )

    def _write_frame(self, data: bytes) -> None:
        """One unfragmented binary frame, header and payload in one vectored write.

        This is what websockets' send() does, minus its serialization into
        an intermediate buffer: the payload is not copied (servers) or copied
        once by the mask (clients, RFC 6455 section 5.3).
        """
        ws = self._ws
        if ws.protocol.side is Side.CLIENT:
            mask = secrets.token_bytes(4)
            ws.transport.writelines((_frame_header(len(data), 0x80), mask, apply_mask(data, mask)))
        else:
            ws.transport.writelines((_frame_header(len(data), 0), data))

    async def _drain(self) -> None:
        """Wait for the transport to drain; a lost connection is StreamBroken."""
        ws = self._ws
        try:
            await ws.drain()
        except Exception as exc:
            # The connection is going away: report it as send() would.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(ws.connection_lost_waiter), _ABORT_CLOSE_TIMEOUT
                )
            ws.transport.abort()
            raise StreamBroken(self._dead_reason or _describe_close(ws.close_exc)) from exc

    async def write_eof(self) -> None:
        if self._eof_sent or self._closed:
            return
        self._eof_sent = True
        if not self.eof_markers:
            await self._ws.close(CloseCode.NORMAL)
            return
        try:
            await self._ws.send(EOF_MARKER)
        except ConnectionClosed as exc:
            raise self._broken(exc) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_keepalive()
        try:
            await self._ws.close(CloseCode.NORMAL)
        finally:
            # close() gives up after its close_timeout; make sure the socket goes.
            if not self._ws.transport.is_closing():
                self._ws.transport.abort()

    async def abort(self, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_keepalive()
        await self._fail(CloseCode.INTERNAL_ERROR, reason)

    async def _fail(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` (briefly), then drop the socket."""
        try:
            await asyncio.wait_for(self._ws.close(code, reason[:120]), _ABORT_CLOSE_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            self._ws.transport.abort()

    def _start_keepalive(self, interval: float, timeout: float | None) -> None:
        self._keepalive_timer = None
        if not self._closed:
            self.keepalive_task = asyncio.get_running_loop().create_task(
                self._keepalive(interval, timeout)
            )

    def _stop_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        task = self.keepalive_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.keepalive_task = None

    async def _keepalive(self, interval: float, timeout: float | None) -> None:
        """Ping now, judge the answer, then every ``interval`` seconds again."""
        ws = self._ws
        loop = asyncio.get_running_loop()
        waited = True  # the timer that started this task waited the first interval
        try:
            while not _connection_closed(ws):
                if not waited:
                    await asyncio.sleep(interval)
                waited = False
                sent_at = loop.time()
                # A ping stuck behind a full send buffer is judged below by
                # what we receive, not by whether it went out.
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    await asyncio.wait_for(ws.ping(), timeout or interval)
                if timeout is None:
                    continue
                deadline = sent_at + timeout
                while ws.last_received < sent_at and not _connection_closed(ws):
                    if ws.recv_messages.paused:
                        break  # our own backlog: the peer was sending, we are slow
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        self._dead_reason = (
                            f"keepalive timeout: nothing received from the peer "
                            f"for {loop.time() - ws.last_received:.1f}s"
                        )
                        ws.transport.abort()
                        return
                    await ws.wait_received(remaining)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed:
            return
