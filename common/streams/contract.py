"""The byte-stream contract every stream the relay touches keeps.

Modelled on trio's ``HalfCloseableStream``:

- ``read(max_bytes)`` returns at most ``max_bytes``, and ``b""`` if, and only
  if, the peer has finished sending. Failures raise :class:`StreamBroken`.
- ``write(data)`` takes the whole non-empty chunk, waits for the transport
  to drain (backpressure) and returns ``len(data)``: payload bytes only.
- ``write_eof()`` ends this direction; the other keeps flowing. Idempotent.
- ``close()`` is graceful and idempotent and always ends with the resource
  closed; ``abort()`` is immediate and makes the far side see an error. An
  abort() during a close() that still waits cuts it short; after a finished
  close() it does nothing.

One task may read while another writes; two concurrent readers (or writers)
are a bug in the caller.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable

from wstun.common.errors import StreamClosed

__all__ = [
    "DEFAULT_READ_SIZE",
    "ByteStream",
    "ChunkSink",
    "StreamState",
    "check_writable",
]

#: Bytes asked for per read by the relay. One read becomes one message. As
#: large as the chunks uvloop hands over (256 KiB), so a chunk is never cut.
DEFAULT_READ_SIZE = 256 * 1024


class StreamState(enum.Enum):
    """This side's part of a stream's life; compared with ``is``.

    What the peer does (data, its EOF, a failure) is what ``read()`` returns
    or raises; this is only what we did with the stream.
    """

    #: Reading and writing.
    OPEN = "open"
    #: ``write_eof()`` was called: writing is over, reading goes on.
    EOF_SENT = "eof sent"
    #: ``close()`` or ``abort()`` was called: nothing more either way.
    CLOSED = "closed"


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
        """Close at once, so that the far side sees an error, not an EOF. Idempotent.

        After ``close()``: while close() still waits (for output to flush,
        or for the peer's closing handshake), abort() ends that wait at once
        and drops the resource, as if close() had run out of time; once
        close() has finished, abort() does nothing.
        """

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


def check_writable(data: bytes, state: StreamState) -> None:
    """The part of the write() contract every stream checks the same way."""
    if not data:
        raise ValueError("write() needs a non-empty chunk; use write_eof() to end")
    if state is StreamState.CLOSED:
        raise StreamClosed("write to a closed stream")
    if state is StreamState.EOF_SENT:
        raise StreamClosed("write after write_eof()")
