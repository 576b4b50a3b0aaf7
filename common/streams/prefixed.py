"""A stream whose first bytes were read already: they come out of read() first.

A SOCKS5 client may send payload right behind its request, in the same
read as the request; those bytes belong to the tunnel, and the relay counts
them like any other.
"""

from __future__ import annotations

from wstun.common.streams.contract import ByteStream

__all__ = ["PrefixedStream"]


class PrefixedStream(ByteStream):
    """``stream``, with ``prefix`` (bytes already read from it) handed out first."""

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

    async def close(self) -> None:
        await self._stream.close()

    async def abort(self, reason: str = "") -> None:
        await self._stream.abort(reason)
