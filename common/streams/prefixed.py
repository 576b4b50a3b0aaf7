"""A stream whose first bytes were read already: they come out of read() first.

A SOCKS5 client may send payload right behind its request, in the same
read as the request; those bytes belong to the tunnel, and the relay counts
them like any other.
"""

from __future__ import annotations

from wstun.common.streams.contract import ByteStream, ChunkSink

__all__ = ["PrefixedStream"]


class PrefixedStream(ByteStream):
    """``stream``, with ``prefix`` (bytes already read from it) handed out first.

    The relay's fast path goes through to ``stream``: its sink is only
    offered chunks while ``stream.read()`` waits, which happens only once the
    prefix is used up, so order is kept.
    """

    def __init__(self, stream: ByteStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if not self._prefix:
            return await self._stream.read(max_bytes)
        chunk, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
        return chunk

    async def write(self, data: bytes) -> int:
        return await self._stream.write(data)

    async def write_eof(self) -> None:
        await self._stream.write_eof()

    def try_write(self, data: bytes) -> bool:
        return self._stream.try_write(data)

    def set_sink(self, sink: ChunkSink | None) -> None:
        self._stream.set_sink(sink)

    async def close(self) -> None:
        self._prefix = b""  # read() after close() is StreamClosed, as for any stream
        await self._stream.close()

    async def abort(self, reason: str = "") -> None:
        self._prefix = b""
        await self._stream.abort(reason)
