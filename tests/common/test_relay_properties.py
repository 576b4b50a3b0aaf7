"""Property tests of copy_bidirectional: random chunking, half-close order and failures.

The streams are scripted in-memory fakes: each delivers its chunks, then EOF
or a read failure, may fail writes past a byte threshold, and yields to the
loop a random number of times per call so the two directions interleave (and
half-close) in every order.
"""

from __future__ import annotations

import asyncio
import collections
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from wstun.common.errors import RelayError, StreamBroken, StreamClosed
from wstun.common.relay import copy_bidirectional
from wstun.common.streams import ByteStream


class ScriptedStream(ByteStream):
    """Reads its script; records writes; fails where told to."""

    def __init__(
        self, chunks: list[bytes], fail_read: bool, fail_write_after: int | None, yields: list[int]
    ) -> None:
        self.incoming = collections.deque(chunk for chunk in chunks if chunk)
        self.fail_read = fail_read
        self.fail_write_after = fail_write_after
        self._yields = itertools.cycle(yields or [0])
        self.written = bytearray()
        self.eofs_written = 0
        self.closed = False
        self.aborted = False

    async def _pause(self) -> None:
        for _ in range(next(self._yields)):
            await asyncio.sleep(0)

    async def read(self, max_bytes: int) -> bytes:
        await self._pause()
        if self.closed or self.aborted:
            raise StreamClosed("read after close")
        if self.incoming:
            chunk = self.incoming.popleft()
            if len(chunk) > max_bytes:
                self.incoming.appendleft(chunk[max_bytes:])
                chunk = chunk[:max_bytes]
            return chunk
        if self.fail_read:
            raise StreamBroken("injected read failure")
        return b""

    async def write(self, data: bytes) -> int:
        assert data, "the relay never writes an empty chunk"
        assert self.eofs_written == 0, "write after write_eof"
        await self._pause()
        if self.closed or self.aborted:
            raise StreamClosed("write after close")
        limit = self.fail_write_after
        if limit is not None and len(self.written) + len(data) > limit:
            raise StreamBroken("injected write failure")
        self.written += data
        return len(data)

    async def write_eof(self) -> None:
        self.eofs_written += 1

    async def close(self) -> None:
        self.closed = True

    async def abort(self, reason: str = "") -> None:
        self.aborted = True


chunks = st.lists(st.binary(min_size=0, max_size=300), max_size=12)
threshold = st.one_of(st.none(), st.integers(min_value=0, max_value=2000))
yields = st.lists(st.integers(min_value=0, max_value=3), max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    a_chunks=chunks,
    b_chunks=chunks,
    a_fails_read=st.booleans(),
    b_fails_read=st.booleans(),
    a_write_limit=threshold,
    b_write_limit=threshold,
    a_yields=yields,
    b_yields=yields,
    read_size=st.integers(min_value=1, max_value=512),
)
def test_relay_delivers_exactly_what_was_sent_up_to_the_failure(
    a_chunks: list[bytes],
    b_chunks: list[bytes],
    a_fails_read: bool,
    b_fails_read: bool,
    a_write_limit: int | None,
    b_write_limit: int | None,
    a_yields: list[int],
    b_yields: list[int],
    read_size: int,
) -> None:
    """Bytes delivered are a prefix of bytes sent, the counts equal them, errors abort both."""
    sent_a, sent_b = b"".join(a_chunks), b"".join(b_chunks)
    a = ScriptedStream(a_chunks, a_fails_read, a_write_limit, a_yields)
    b = ScriptedStream(b_chunks, b_fails_read, b_write_limit, b_yields)

    async def run() -> tuple[int, int] | RelayError:
        try:
            return await asyncio.wait_for(copy_bidirectional(a, b, read_size=read_size), 10)
        except RelayError as exc:
            return exc

    outcome = asyncio.run(run())
    write_fails_b = b_write_limit is not None and b_write_limit < len(sent_a)
    write_fails_a = a_write_limit is not None and a_write_limit < len(sent_b)
    failure_injected = a_fails_read or b_fails_read or write_fails_a or write_fails_b

    # Whatever happened, each destination got a prefix of what its source sent.
    assert bytes(b.written) == sent_a[: len(b.written)]
    assert bytes(a.written) == sent_b[: len(a.written)]

    if not failure_injected:
        assert outcome == (len(sent_a), len(sent_b))
        assert (bytes(b.written), bytes(a.written)) == (sent_a, sent_b)
        assert (a.eofs_written, b.eofs_written) == (1, 1)
        assert a.closed
        assert b.closed
        assert not (a.aborted)
        assert not (b.aborted)
        return

    assert isinstance(outcome, RelayError)
    assert (outcome.a_to_b, outcome.b_to_a) == (len(b.written), len(a.written))
    assert a.aborted
    assert b.aborted
    if b_write_limit is not None:
        assert len(b.written) <= b_write_limit
    if a_write_limit is not None:
        assert len(a.written) <= a_write_limit
    if a_fails_read and not (b_fails_read or write_fails_a or write_fails_b):
        # Only a's final read fails: everything a sent before it went through.
        assert bytes(b.written) == sent_a
        assert b.eofs_written == 0  # a failed read is not an EOF
