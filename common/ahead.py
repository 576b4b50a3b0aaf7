"""The first chunk of a local stream, sent behind an in-band open while the far side answers.

Whoever opens a tunnel in-band (the client's ``open`` on a pooled
WebSocket, the server's ``open`` of a reverse tunnel's inbound connection)
need not wait for the answer before the application's first bytes move:
:class:`Ahead` reads at most one chunk while the answer is on its way and
sends it as payload. The far side reads it only once its end is connected,
and drops it after a refusal, so it never reaches another target.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.connection import Connection
from websockets.typing import Data

from wstun.common.streams import ByteStream
from wstun.common.streams.internals import send_message

__all__ = ["Ahead"]


class Ahead:
    """At most one chunk of ``source`` (``size`` bytes) read while an answer comes."""

    def __init__(self, source: ByteStream | None, size: int) -> None:
        self.source = source
        self.size = size
        #: What was read (and sent behind the open); kept for a retry elsewhere.
        self.data = b""

    async def while_waiting(self, connection: Connection) -> Data:
        """The far side's answer; meanwhile at most one chunk of the source is sent."""
        source, self.source = self.source, None  # one chunk, on the first try only
        if source is None:
            return await connection.recv()
        # One task reads and sends the chunk while this one waits for the answer
        # (not a task for each and asyncio.wait(): every pooled tunnel opens here).
        ahead = asyncio.ensure_future(self._send_ahead(source, connection))
        try:
            answer = await connection.recv()
        except asyncio.CancelledError:
            ahead.cancel()
            raise
        except BaseException:
            await self._settle(ahead)
            raise
        await self._settle(ahead)
        return answer

    async def _send_ahead(self, source: ByteStream, connection: Connection) -> None:
        try:
            chunk = await source.read(self.size)
        except Exception:  # the relay meets the error and reports it
            return
        if chunk:
            # After a refusal too: the far side drops it; after opened it is payload.
            self.data = chunk
            await send_message(connection, chunk)

    async def _settle(self, ahead: asyncio.Task[None]) -> None:
        """The chunk's task ended: cancelled while it still reads (the chunk stays
        in the stream for the relay), else once what it read is sent."""
        if not self.data:
            ahead.cancel()
        if not ahead.done():
            # The relay must not read the source before this read has unwound.
            await asyncio.wait((ahead,))
        if not ahead.cancelled() and (exc := ahead.exception()) is not None:
            raise exc
