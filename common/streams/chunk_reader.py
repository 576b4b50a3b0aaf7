"""A websockets ``StreamReader`` that keeps received chunks instead of one buffer.

It implements the reader's generator interface (``read_line``,
``read_exact``, ``read_to_eof``, ``at_eof``, ``feed_data``, ``feed_eof``,
``discard``); :mod:`wstun.common.streams.internals` installs it on every
connection before its first byte and lists what it relies on.
"""

from __future__ import annotations

import collections
from collections.abc import Generator

from websockets.streams import StreamReader

__all__ = ["ChunkReader"]


class ChunkReader(StreamReader):
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
        #: True while a parser waits in :meth:`at_eof` with nothing unread:
        #: websockets' frame parser asks it before each frame, so then the
        #: next byte received starts a frame.
        self.at_boundary = False

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
                self.at_boundary = False
                return False
            if self.eof:
                self.at_boundary = False
                return True
            self.at_boundary = True
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
