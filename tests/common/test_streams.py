"""The ByteStream contract on TcpStream and WebSocketStream, plus what only WebSockets do.

The contract itself is :mod:`tests.stream_contract`; here it runs against
TcpStream, WebSocketStream with ``wstun.v1`` (EOF markers) and a plain
WebSocketStream (no subprotocol: EOF is a close), over real sockets, each
check in both orientations, on both event loops.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.exceptions import ConnectionClosedError

from tests.stream_contract import (
    StreamTraits,
    applicable,
    bounded,
    check_byte_stream,
    read_exactly,
    read_to_eof,
)
from wstun.common.errors import StreamBroken
from wstun.common.protocol import CloseCode
from wstun.common.streams import ByteStream, TcpStream, WebSocketStream

from .conftest import KINDS, MakePair, StreamPair

# Keepalive settings small enough to see several rounds in a second.
PING_INTERVAL = 0.2
PING_TIMEOUT = 0.3


async def stall_tcp(left: ByteStream, right: ByteStream) -> None:
    """More output than the kernel buffers hold, to a peer that stopped reading."""
    assert isinstance(left, TcpStream)
    assert isinstance(right, TcpStream)
    right._transport.pause_reading()
    assert left.try_write(bytes(32 * 1024 * 1024))


async def stall_ws(left: ByteStream, right: ByteStream) -> None:
    """A peer that will never answer the closing handshake."""
    assert isinstance(right, WebSocketStream)
    right.connection.transport.pause_reading()


TRAITS = {
    "tcp": StreamTraits(stall_close=stall_tcp),
    "ws-v1": StreamTraits(stall_close=stall_ws),
    # Without wstun.v1 there is no in-band EOF: write_eof is a close (tested below).
    "ws-plain": StreamTraits(half_close=False, stall_close=stall_ws),
}


@pytest.mark.parametrize(
    ("kind", "check"), [(kind, name) for kind in KINDS for name in applicable(TRAITS[kind])]
)
async def test_contract(make_pair: MakePair, kind: str, check: str) -> None:
    """Each promise of the ByteStream contract, on each stream kind."""

    async def connected() -> tuple[ByteStream, ByteStream]:
        made = await make_pair(kind)
        return made.left, made.right

    await check_byte_stream(connected, TRAITS[kind], only=[check])


async def test_tcp_streams_have_nagle_off(make_pair: MakePair) -> None:
    """Dialled and accepted TCP streams send a small write at once (TCP_NODELAY),
    so a keystroke or a redis PING never waits for the previous ACK."""
    made = await make_pair("tcp")
    for stream in (made.left, made.right):
        assert isinstance(stream, TcpStream)
        sock = stream._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


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
