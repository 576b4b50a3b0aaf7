"""The ByteStream contract as one reusable check, after trio's ``check_half_closeable_stream``.

:func:`check_byte_stream` takes a factory of connected pairs and runs every
promise of :class:`~wstun.common.streams.ByteStream` on fresh pairs, each
check in both orientations (``left`` is the factory's first stream, then its
second). A new kind of stream passes it before it carries a tunnel:

    await check_byte_stream(make_pair, StreamTraits(abort_is_error=False))

:class:`StreamTraits` says which optional promises the kind makes. Test
modules parametrize over :data:`CHECKS` (``only=``) so that each check shows
up, and fails, on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from wstun.common.errors import StreamBroken, StreamClosed
from wstun.common.streams import ByteStream

__all__ = [
    "CHECKS",
    "TIMEOUT",
    "MakePair",
    "StreamTraits",
    "bounded",
    "check_byte_stream",
    "pattern",
    "read_exactly",
    "read_to_eof",
]

T = TypeVar("T")

#: Bound on any single wait for something the peer does. Shorter than every
#: grace period of a stream's own (10 s), so a check can tell them apart.
TIMEOUT = 5.0

#: Makes a connected pair: (one end, the other end).
MakePair = Callable[[], Awaitable[tuple[ByteStream, ByteStream]]]

#: Makes ``left.close()`` unable to finish by itself soon (``(left, right)``);
#: may return a task of its own, which the check awaits at the end.
Stall = Callable[[ByteStream, ByteStream], Awaitable["asyncio.Future[object] | None"]]


@dataclasses.dataclass(frozen=True)
class StreamTraits:
    """The optional promises a kind of stream makes."""

    #: write_eof() ends one direction only (a plain WebSocket closes both).
    half_close: bool = True
    #: After abort() the peer's read fails (a pipe has no reset: it sees EOF).
    abort_is_error: bool = True
    #: set_sink()/try_write() are implemented (the relay's fast path).
    fast_path: bool = True
    #: How to make close() wait on this kind, for the abort-during-close check.
    stall_close: Stall | None = None


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


async def parked_read(stream: ByteStream) -> asyncio.Task[bytes]:
    """A read() that is waiting, with nothing buffered yet."""
    task = asyncio.ensure_future(stream.read(65536))
    await asyncio.sleep(0)  # one loop step: the read reaches its wait
    return task


Check = Callable[[ByteStream, ByteStream, StreamTraits], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class _Check:
    name: str
    run: Check
    #: Whether ``traits`` make this promise at all.
    applies: Callable[[StreamTraits], bool]


#: Every check of the contract, by name.
CHECKS: dict[str, _Check] = {}


def check(
    applies: Callable[[StreamTraits], bool] = lambda traits: True,
) -> Callable[[Check], Check]:
    def register(run: Check) -> Check:
        name = run.__name__.removeprefix("check_")
        CHECKS[name] = _Check(name, run, applies)
        return run

    return register


async def check_byte_stream(
    make_pair: MakePair, traits: StreamTraits = StreamTraits(), *, only: Sequence[str] = ()
) -> None:
    """Run every check that ``traits`` apply to (or those in ``only``) on fresh pairs.

    Each check runs twice, with each end of a new pair as ``left``. A failure
    names the check and the orientation.
    """
    for name in only or list(CHECKS):
        item = CHECKS[name]
        if not item.applies(traits):
            continue
        for swap in (False, True):
            first, second = await make_pair()
            left, right = (second, first) if swap else (first, second)
            try:
                await item.run(left, right, traits)
            except Exception as exc:
                where = "second end as left" if swap else "first end as left"
                raise AssertionError(f"{name} ({where}): {exc!r}") from exc


def applicable(traits: StreamTraits) -> list[str]:
    """The names of the checks ``traits`` apply to, for pytest parametrization."""
    return [name for name, item in CHECKS.items() if item.applies(traits)]


# ------------------------------------------------------------------ reading


@check()
async def check_read_returns_empty_only_at_eof(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """read returns the data, then b"" at EOF, and b"" again after that."""
    await right.write(b"hello")
    await right.write_eof()
    assert await read_exactly(left, 5) == b"hello"
    assert await bounded(left.read(100)) == b""
    assert await bounded(left.read(100)) == b""


@check()
async def check_pending_read_waits_for_data(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """a read started before any data arrives returns that data, not b""."""
    reading = asyncio.ensure_future(left.read(100))
    await right.write(b"late")
    assert await bounded(reading) == b"late"


@check()
async def check_read_rejects_non_positive_size(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """read(0) is a caller error, not an EOF."""
    with pytest.raises(ValueError, match="max_bytes"):
        await left.read(0)


@check()
async def check_small_reads_return_a_chunk_in_pieces(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """a read smaller than an incoming chunk returns it in pieces, nothing lost."""
    data = pattern(1024)
    await left.write(data)
    pieces = []
    while sum(map(len, pieces)) < len(data):
        piece = await bounded(right.read(100))
        assert 0 < len(piece) <= 100
        pieces.append(piece)
    assert b"".join(pieces) == data
    await left.write_eof()
    assert await bounded(right.read(100)) == b""


@check()
async def check_cancelled_read_loses_nothing(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """cancelling a waiting read is safe: the data is there for the next one."""
    waiting = await parked_read(left)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await right.write(b"kept")
    assert await read_exactly(left, 4) == b"kept"


# ------------------------------------------------------------------ writing


@check()
async def check_write_returns_payload_length(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """write returns exactly len(data) and the peer receives exactly those bytes."""
    for size in (1, 1000, 200_000):
        data = pattern(size)
        received, written = await bounded(
            asyncio.gather(read_exactly(right, size), left.write(data))
        )
        assert written == size
        assert received == data
    await left.write_eof()
    assert await bounded(right.read(65536)) == b""


@check()
async def check_write_empty_is_an_error(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """write(b"") raises ValueError and sends nothing (in particular no EOF)."""
    with pytest.raises(ValueError, match="non-empty"):
        await left.write(b"")
    await left.write(b"x")
    assert await bounded(right.read(100)) == b"x"


# ------------------------------------------------------- half-close and close


@check(lambda traits: traits.half_close)
async def check_write_eof_keeps_other_direction(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """after write_eof on one side, the other direction still carries data."""
    await left.write(b"ping")
    await left.write_eof()
    assert await read_exactly(right, 4) == b"ping"
    assert await bounded(right.read(100)) == b""
    await right.write(b"pong")
    assert await read_exactly(left, 4) == b"pong"
    await right.write_eof()
    assert await bounded(left.read(100)) == b""


@check()
async def check_write_eof_is_idempotent(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """a second write_eof is a no-op and the peer sees one clean EOF."""
    await left.write(b"data")
    await left.write_eof()
    await left.write_eof()
    assert await read_exactly(right, 4) == b"data"
    assert await bounded(right.read(100)) == b""


@check()
async def check_write_after_write_eof_raises_stream_closed(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """write after write_eof raises StreamClosed (local misuse)."""
    await left.write_eof()
    with pytest.raises(StreamClosed):
        await left.write(b"more")


@check()
async def check_close_is_graceful_and_idempotent(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """close twice is fine, and the peer reads a clean EOF, not an error."""
    await left.write(b"bye")
    await bounded(left.close())
    await bounded(left.close())
    assert await read_exactly(right, 3) == b"bye"
    assert await bounded(right.read(100)) == b""


@check()
async def check_use_after_close_raises_stream_closed(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """after close, read and write raise StreamClosed and write_eof is a no-op."""
    await bounded(left.close())
    with pytest.raises(StreamClosed):
        await left.read(100)
    with pytest.raises(StreamClosed):
        await left.write(b"x")
    await left.write_eof()  # a no-op on a closed stream


@check()
async def check_read_after_close_with_buffered_data_raises(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """read after close raises StreamClosed even when received data is still buffered."""
    await right.write(b"abcdef")
    assert await bounded(left.read(1)) == b"a"
    await bounded(left.close())
    with pytest.raises(StreamClosed):
        await left.read(100)


@check()
async def check_close_wakes_a_waiting_read(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """a read waiting when its own stream is closed ends with StreamClosed."""
    waiting = await parked_read(left)
    await bounded(left.close())
    with pytest.raises(StreamClosed):
        await bounded(waiting)


# -------------------------------------------------------------------- abort


@check(lambda traits: traits.abort_is_error)
async def check_abort_breaks_the_peer(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """abort makes the peer's read raise StreamBroken, never return b""."""
    await left.write(b"before")
    assert await read_exactly(right, 6) == b"before"
    await bounded(left.abort("test abort"))
    with pytest.raises(StreamBroken):
        await bounded(right.read(100))


@check(lambda traits: traits.abort_is_error)
async def check_abort_breaks_a_pending_peer_read(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """a peer already blocked in read gets StreamBroken when this side aborts."""
    reading = asyncio.ensure_future(right.read(100))
    await bounded(left.abort("test abort"))
    with pytest.raises(StreamBroken):
        await bounded(reading)


@check()
async def check_abort_is_idempotent_and_closes(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """abort twice is fine, and afterwards this side's read raises StreamClosed."""
    await bounded(left.abort("one"))
    await bounded(left.abort("two"))
    with pytest.raises(StreamClosed):
        await left.read(100)


@check()
async def check_abort_after_close_changes_nothing(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """abort() once close() has finished does nothing: the peer keeps its clean EOF."""
    await left.write(b"bye")
    await bounded(left.close())
    await bounded(left.abort("too late"))
    assert await read_exactly(right, 3) == b"bye"
    assert await bounded(right.read(100)) == b""


@check(lambda traits: traits.stall_close is not None)
async def check_abort_cuts_a_waiting_close_short(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """abort() while close() waits (to flush, or for the peer) ends that wait at once."""
    assert traits.stall_close is not None
    own_task = await traits.stall_close(left, right)
    closing = asyncio.ensure_future(left.close())
    await asyncio.sleep(0)  # one loop step: close() starts, and can't finish
    assert not closing.done(), "precondition: close() is waiting"
    await bounded(left.abort("cut short"))
    await bounded(closing)  # TIMEOUT is shorter than close()'s own grace
    with pytest.raises(StreamClosed):
        await left.read(100)
    if own_task is not None:  # e.g. a write that can never finish
        own_task.cancel()
        await asyncio.gather(own_task, return_exceptions=True)


# ---------------------------------------------------------------- fast path


@check(lambda traits: traits.fast_path)
async def check_sink_takes_chunks_while_a_read_waits(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """Chunks a sink accepts never reach read(); after removing it, read() gets the next."""
    taken: list[bytes] = []
    arrived = asyncio.Event()

    def sink(chunk: bytes) -> bool:
        taken.append(chunk)
        arrived.set()
        return True

    left.set_sink(sink)
    reading = await parked_read(left)
    await right.write(b"taken by the sink")
    await bounded(arrived.wait())
    assert b"".join(taken) == b"taken by the sink"
    assert not reading.done()
    left.set_sink(None)
    await right.write(b"for read")
    assert await bounded(reading) == b"for read"


@check()
async def check_refused_chunks_reach_read_in_order(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """A sink that refuses leaves every byte to read(), in order, then EOF."""
    offered: list[bytes] = []
    left.set_sink(lambda chunk: offered.append(chunk) is not None)
    reading = await parked_read(left)
    payload = [bytes([i]) * (1000 + i) for i in range(20)]

    async def send() -> None:
        for piece in payload:
            await right.write(piece)
        await right.write_eof()

    sending = asyncio.ensure_future(send())
    received = [await bounded(reading)]
    while chunk := await bounded(left.read(65536)):
        received.append(chunk)
    await bounded(sending)
    assert b"".join(received) == b"".join(payload)
    if traits.fast_path:
        assert offered  # the sink was asked, and said no


@check()
async def check_eof_goes_to_read_even_with_a_sink(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """With an accepting sink in place, the peer's EOF still ends read() with b''."""
    left.set_sink(lambda chunk: True)
    reading = await parked_read(left)
    await right.write_eof()
    assert await bounded(reading) == b""


@check()
async def check_try_write_sends_or_declines(
    left: ByteStream, right: ByteStream, traits: StreamTraits
) -> None:
    """try_write() delivers like write() when it says True, and declines after write_eof()."""
    if left.try_write(b"fast"):
        assert await bounded(right.read(65536)) == b"fast"
    await left.write_eof()
    assert left.try_write(b"late") is False
