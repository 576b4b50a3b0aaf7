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
        answer = asyncio.ensure_future(connection.recv())
        source, self.source = self.source, None  # one chunk, on the first try only
        if source is None:
            return await answer
        reading = asyncio.ensure_future(source.read(self.size))
        try:
            await asyncio.wait((answer, reading), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()  # the chunk stays in the stream for the relay
            await asyncio.gather(reading, return_exceptions=True)
            if not reading.cancelled() and reading.exception() is None and reading.result():
                # After a refusal too: the far side drops it; after opened it is payload.
                self.data = reading.result()
                await send_message(connection, self.data)
            return await answer
        finally:
            for task in (answer, reading):
                task.cancel()
