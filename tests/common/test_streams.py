"""The ByteStream contract, checked against every adapter over real sockets.

In the spirit of ``trio.testing.check_half_closeable_stream``: the same cases
run against TcpStream, WebSocketStream with ``wstun.v1`` (EOF markers) and a
plain WebSocketStream (no subprotocol: EOF is a close), each in both
orientations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from websockets.exceptions import ConnectionClosedError

from wstun.common.errors import StreamBroken, StreamClosed
from wstun.common.protocol import CloseCode
from wstun.common.streams import ByteStream, WebSocketStream

from .conftest import MakePair, StreamPair

T = TypeVar("T")

# Bound on any single wait for something the peer does.
TIMEOUT = 5.0

# Keepalive settings small enough to see several rounds in a second.
PING_INTERVAL = 0.2
PING_TIMEOUT = 0.3


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def read_exactly(stream: ByteStream, size: int, max_bytes: int = 65536) -> bytes:
    """Read exactly ``size`` bytes; fail on a premature EOF."""
    received = bytearray()
    while len(received) < size:
        chunk = await bounded(stream.read(max_bytes))
        assert chunk, f"EOF after {len(received)} of {size} bytes"
        received += chunk
    assert len(received) == size
    return bytes(received)


async def read_to_eof(stream: ByteStream, max_bytes: int = 65536) -> bytes:
    received = bytearray()
    while chunk := await bounded(stream.read(max_bytes)):
        received += chunk
    return bytes(received)


def pattern(size: int) -> bytes:
    """Non-repeating-looking bytes, so a lost or reordered slice shows."""
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


# ------------------------------------------------------------------ reading


async def test_read_returns_empty_only_at_eof(pair: StreamPair) -> None:
    """read returns the data, then b"" at EOF, and b"" again after that."""
    await pair.right.write(b"hello")
    await pair.right.write_eof()
    assert await read_exactly(pair.left, 5) == b"hello"
    assert await bounded(pair.left.read(100)) == b""
    assert await bounded(pair.left.read(100)) == b""


async def test_pending_read_waits_for_data(pair: StreamPair) -> None:
    """a read started before any data arrives returns that data, not b""."""
    reading = asyncio.ensure_future(pair.left.read(100))
    await pair.right.write(b"late")
    assert await bounded(reading) == b"late"


async def test_read_rejects_non_positive_size(pair: StreamPair) -> None:
    """read(0) is a caller error, not an EOF."""
    with pytest.raises(ValueError, match="max_bytes"):
        await pair.left.read(0)


async def test_small_reads_return_a_chunk_in_pieces(pair: StreamPair) -> None:
    """a read smaller than an incoming chunk returns it in pieces, nothing lost."""
    data = pattern(1024)
    await pair.left.write(data)
    pieces = []
    while sum(map(len, pieces)) < len(data):
        piece = await bounded(pair.right.read(100))
        assert 0 < len(piece) <= 100
        pieces.append(piece)
    assert b"".join(pieces) == data
    await pair.left.write_eof()
    assert await bounded(pair.right.read(100)) == b""


# ------------------------------------------------------------------ writing


@pytest.mark.parametrize("size", [1, 1000, 200_000])
async def test_write_returns_payload_length(pair: StreamPair, size: int) -> None:
    """write returns exactly len(data) and the peer receives exactly those bytes."""
    data = pattern(size)
    received, written = await bounded(
        asyncio.gather(read_exactly(pair.right, size), pair.left.write(data))
    )
    assert written == size
    assert received == data
    await pair.left.write_eof()
    assert await bounded(pair.right.read(65536)) == b""


async def test_write_empty_is_an_error(pair: StreamPair) -> None:
    """write(b"") raises ValueError and sends nothing (in particular no EOF)."""
    with pytest.raises(ValueError, match="non-empty"):
        await pair.left.write(b"")
    await pair.left.write(b"x")
    assert await bounded(pair.right.read(100)) == b"x"


# ------------------------------------------------------- half-close and close


async def test_write_eof_keeps_other_direction(pair: StreamPair) -> None:
    """after write_eof on one side, the other direction still carries data."""
    if pair.kind == "ws-plain":
        pytest.skip("plain WebSocket has no half-close: write_eof is a close (next test)")
    await pair.left.write(b"ping")
    await pair.left.write_eof()
    assert await read_exactly(pair.right, 4) == b"ping"
    assert await bounded(pair.right.read(100)) == b""
    await pair.right.write(b"pong")
    assert await read_exactly(pair.left, 4) == b"pong"
    await pair.right.write_eof()
    assert await bounded(pair.left.read(100)) == b""


@pytest.mark.parametrize("swap", [False, True], ids=["client-eof", "server-eof"])
async def test_plain_websocket_write_eof_is_a_clean_close(make_pair: MakePair, swap: bool) -> None:
    """plain WebSocket: write_eof closes with 1000, so both ends read a clean EOF.

    Without wstun.v1 there is no in-band EOF marker; the documented behaviour is
    that EOF equals a close, so the other direction ends too.
    """
    made = await make_pair("ws-plain")
    pair = made.swapped() if swap else made
    await pair.left.write(b"last")
    await pair.left.write_eof()
    assert await read_exactly(pair.right, 4) == b"last"
    assert await bounded(pair.right.read(100)) == b""
    assert await bounded(pair.left.read(100)) == b""
    with pytest.raises(StreamBroken):
        await pair.right.write(b"too late")


async def test_write_eof_is_idempotent(pair: StreamPair) -> None:
    """a second write_eof is a no-op and the peer sees one clean EOF."""
    await pair.left.write(b"data")
    await pair.left.write_eof()
    await pair.left.write_eof()
    assert await read_exactly(pair.right, 4) == b"data"
    assert await bounded(pair.right.read(100)) == b""


async def test_write_after_write_eof_raises_stream_closed(pair: StreamPair) -> None:
    """write after write_eof raises StreamClosed (local misuse)."""
    await pair.left.write_eof()
    with pytest.raises(StreamClosed):
        await pair.left.write(b"more")


async def test_close_is_graceful_and_idempotent(pair: StreamPair) -> None:
    """close twice is fine, and the peer reads a clean EOF, not an error."""
    await pair.left.write(b"bye")
    await bounded(pair.left.close())
    await bounded(pair.left.close())
    assert await read_exactly(pair.right, 3) == b"bye"
    assert await bounded(pair.right.read(100)) == b""


async def test_use_after_close_raises_stream_closed(pair: StreamPair) -> None:
    """after close, read and write raise StreamClosed and write_eof is a no-op."""
    await bounded(pair.left.close())
    with pytest.raises(StreamClosed):
        await pair.left.read(100)
    with pytest.raises(StreamClosed):
        await pair.left.write(b"x")
    await pair.left.write_eof()  # a no-op on a closed stream


async def test_read_after_close_with_buffered_data_raises(pair: StreamPair) -> None:
    """read after close raises StreamClosed even when received data is still buffered."""
    await pair.right.write(b"abcdef")
    assert await bounded(pair.left.read(1)) == b"a"
    await bounded(pair.left.close())
    with pytest.raises(StreamClosed):
        await pair.left.read(100)


# -------------------------------------------------------------------- abort


async def test_abort_breaks_the_peer(pair: StreamPair) -> None:
    """abort makes the peer's read raise StreamBroken, never return b""."""
    await pair.left.write(b"before")
    assert await read_exactly(pair.right, 6) == b"before"
    await bounded(pair.left.abort("test abort"))
    with pytest.raises(StreamBroken):
        await bounded(pair.right.read(100))


async def test_abort_breaks_a_pending_peer_read(pair: StreamPair) -> None:
    """a peer already blocked in read gets StreamBroken when this side aborts."""
    reading = asyncio.ensure_future(pair.right.read(100))
    await bounded(pair.left.abort("test abort"))
    with pytest.raises(StreamBroken):
        await bounded(reading)


async def test_abort_is_idempotent_and_closes(pair: StreamPair) -> None:
    """abort twice is fine, and afterwards this side's read raises StreamClosed."""
    await bounded(pair.left.abort("one"))
    await bounded(pair.left.abort("two"))
    with pytest.raises(StreamClosed):
        await pair.left.read(100)


# ------------------------------------------------------- WebSocket specifics

WS_CASES = [
    pytest.param(kind, swap, id=f"{kind}{'-swapped' if swap else ''}")
    for kind in ("ws-v1", "ws-plain")
    for swap in (False, True)
]


async def ws_pair(make_pair: MakePair, kind: str, swap: bool) -> StreamPair:
    made = await make_pair(kind)
    return made.swapped() if swap else made


@pytest.mark.parametrize(("kind", "swap"), WS_CASES)
async def test_text_message_breaks_the_stream(make_pair: MakePair, kind: str, swap: bool) -> None:
    """a text message makes read raise StreamBroken and the peer gets close 1003."""
    pair = await ws_pair(make_pair, kind, swap)
    assert pair.right_ws is not None
    await pair.right_ws.send("not bytes")
    with pytest.raises(StreamBroken, match="text"):
        await bounded(pair.left.read(100))
    with pytest.raises(ConnectionClosedError) as closed:
        await bounded(pair.right_ws.recv())
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CloseCode.UNSUPPORTED_DATA


@pytest.mark.parametrize("swap", [False, True], ids=["client", "server"])
async def test_empty_message_is_eof_under_v1(make_pair: MakePair, swap: bool) -> None:
    """under wstun.v1 an empty binary message from the peer reads as EOF."""
    pair = await ws_pair(make_pair, "ws-v1", swap)
    assert pair.right_ws is not None
    await pair.right_ws.send(b"data")
    await pair.right_ws.send(b"")
    assert await read_exactly(pair.left, 4) == b"data"
    assert await bounded(pair.left.read(100)) == b""


@pytest.mark.parametrize("swap", [False, True], ids=["client", "server"])
async def test_empty_message_is_ignored_in_plain_mode(make_pair: MakePair, swap: bool) -> None:
    """without wstun.v1 an empty binary message carries nothing and is not EOF."""
    pair = await ws_pair(make_pair, "ws-plain", swap)
    assert pair.right_ws is not None
    await pair.right_ws.send(b"")
    await pair.right_ws.send(b"data")
    assert await read_exactly(pair.left, 4) == b"data"


# ---------------------------------------------------------------- keepalive

SIDES = pytest.mark.parametrize("side", ["left", "right"], ids=["client", "server"])


async def keepalive_pair(make_pair: MakePair, side: str) -> StreamPair:
    """A v1 pair whose ``left`` end (after swapping) runs a fast keepalive."""
    made = await make_pair(
        "ws-v1", ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT, ping_side=side
    )
    return made if side == "left" else made.swapped()


@SIDES
async def test_keepalive_detects_frozen_peer(make_pair: MakePair, side: str) -> None:
    """keepalive breaks the stream when the peer's socket silently stops answering."""
    pair = await keepalive_pair(make_pair, side)
    assert pair.right_ws is not None
    pair.right_ws.transport.pause_reading()  # no pong will ever be produced
    with pytest.raises(StreamBroken, match="keepalive"):
        await bounded(pair.left.read(100))


@SIDES
async def test_keepalive_spares_a_quiet_peer(make_pair: MakePair, side: str) -> None:
    """a peer that answers pings but sends no data stays up over several intervals."""
    pair = await keepalive_pair(make_pair, side)
    reading = asyncio.ensure_future(pair.left.read(100))
    try:
        # Legitimately wait out several ping intervals: the point is that nothing happens.
        done, _ = await asyncio.wait([reading], timeout=5 * PING_INTERVAL)
        assert not done, "read ended although the peer answered every ping"
        await pair.right.write(b"still here")
        assert await bounded(reading) == b"still here"
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


@SIDES
async def test_keepalive_spares_a_slow_reader(make_pair: MakePair, side: str) -> None:
    """a stream whose own reader lags (reading paused by backpressure) is not declared dead."""
    pair = await keepalive_pair(make_pair, side)
    assert isinstance(pair.left, WebSocketStream)
    chunk_size = 64 * 1024
    stop = asyncio.Event()
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while not stop.is_set():
            await pair.right.write(sent.to_bytes(8, "big") * (chunk_size // 8))
            sent += 1
        await pair.right.write_eof()

    flooder = asyncio.ensure_future(flood())
    try:
        # Legitimately wait out several ping intervals without reading.
        done, _ = await asyncio.wait([flooder], timeout=5 * PING_INTERVAL)
        assert not done, "the flood ended although nobody read (was the reader declared dead?)"
        assert pair.left.connection.recv_messages.paused, "precondition: our reading is paused"
        assert pair.left.keepalive_task is not None
        assert not pair.left.keepalive_task.done()
        stop.set()
        data = await read_to_eof(pair.left)
        await bounded(flooder)
    finally:
        flooder.cancel()
        await asyncio.gather(flooder, return_exceptions=True)
    assert len(data) == sent * chunk_size
    for index in range(sent):
        assert data[index * chunk_size : index * chunk_size + 8] == index.to_bytes(8, "big")
