"""PrefixedStream keeps the stream contract, fast path included, and hands its prefix out first."""

from __future__ import annotations

import pytest

from tests.stream_contract import StreamTraits, applicable, bounded, check_byte_stream, read_to_eof
from wstun.common.errors import StreamClosed
from wstun.common.streams import ByteStream, PrefixedStream

from .conftest import MakePair

TRAITS = StreamTraits()


@pytest.mark.parametrize("check", applicable(TRAITS))
async def test_contract(make_pair: MakePair, check: str) -> None:
    """Each promise of the contract, on both ends of a TCP pair wrapped (empty prefixes)."""

    async def connected() -> tuple[ByteStream, ByteStream]:
        left, right = await make_pair.tcp()
        return PrefixedStream(left, b""), PrefixedStream(right, b"")

    await check_byte_stream(connected, TRAITS, only=[check])


async def test_prefix_comes_first_in_order(make_pair: MakePair) -> None:
    """The prefix is read first, in pieces of at most max_bytes, then the stream itself."""
    left, right = await make_pair.tcp()
    stream = PrefixedStream(left, b"already read")
    await right.write(b", then the rest")
    await right.write_eof()
    assert await bounded(stream.read(7)) == b"already"
    assert await read_to_eof(stream) == b" read, then the rest"


async def test_closed_stream_hands_out_no_prefix(make_pair: MakePair) -> None:
    """After close(), read() is StreamClosed even while some prefix was never read."""
    left, _ = await make_pair.tcp()
    stream = PrefixedStream(left, b"unread")
    await bounded(stream.close())
    with pytest.raises(StreamClosed):
        await stream.read(100)
