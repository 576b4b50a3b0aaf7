"""The relay's fast path on every stream kind: set_sink() and try_write().

A sink only sees chunks while a read() waits with nothing buffered; what it
takes never reaches read(), what it refuses does, in order; EOF always goes
to read().
"""

from __future__ import annotations

import asyncio

from wstun.common.streams import ByteStream

from .conftest import StreamPair

TIMEOUT = 10.0


async def parked_read(stream: ByteStream) -> asyncio.Task[bytes]:
    """A read() that is waiting (the sink only acts then)."""
    task = asyncio.ensure_future(stream.read(65536))
    await asyncio.sleep(0)  # let it reach its wait; nothing is buffered yet
    return task


async def test_sink_takes_chunks_while_a_read_waits(pair: StreamPair) -> None:
    """Chunks a sink accepts never reach read(); after removing it, read() gets the next."""
    taken: list[bytes] = []
    arrived = asyncio.Event()

    def sink(chunk: bytes) -> bool:
        taken.append(chunk)
        arrived.set()
        return True

    pair.left.set_sink(sink)
    reading = await parked_read(pair.left)
    await pair.right.write(b"taken by the sink")
    await asyncio.wait_for(arrived.wait(), TIMEOUT)
    assert b"".join(taken) == b"taken by the sink"
    assert not reading.done()
    pair.left.set_sink(None)
    await pair.right.write(b"for read")
    assert await asyncio.wait_for(reading, TIMEOUT) == b"for read"


async def test_refused_chunks_reach_read_in_order(pair: StreamPair) -> None:
    """A sink that refuses leaves every byte to read(), in order, then EOF."""
    offered: list[bytes] = []
    pair.left.set_sink(lambda chunk: offered.append(chunk) is not None)
    reading = await parked_read(pair.left)
    payload = [bytes([i]) * (1000 + i) for i in range(20)]

    async def send() -> None:
        for piece in payload:
            await pair.right.write(piece)
        await pair.right.write_eof()

    sending = asyncio.ensure_future(send())
    received = [await asyncio.wait_for(reading, TIMEOUT)]
    while chunk := await asyncio.wait_for(pair.left.read(65536), TIMEOUT):
        received.append(chunk)
    await asyncio.wait_for(sending, TIMEOUT)
    assert b"".join(received) == b"".join(payload)
    assert offered  # the sink was asked, and said no


async def test_eof_goes_to_read_even_with_a_sink(pair: StreamPair) -> None:
    """With an accepting sink in place, the peer's EOF still ends read() with b''."""
    pair.left.set_sink(lambda chunk: True)
    reading = await parked_read(pair.left)
    await pair.right.write_eof()
    assert await asyncio.wait_for(reading, TIMEOUT) == b""


async def test_try_write_sends_or_declines(pair: StreamPair) -> None:
    """try_write() delivers like write() when it says True, and declines after write_eof()."""
    if pair.left.try_write(b"fast"):
        assert await asyncio.wait_for(pair.right.read(65536), TIMEOUT) == b"fast"
    await pair.left.write_eof()
    assert pair.left.try_write(b"late") is False
