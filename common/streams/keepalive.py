"""wstun's own WebSocket keepalive: any byte from the peer is proof of life.

websockets' keepalive only believes pongs: when our side is slow to consume,
websockets stops reading the socket (its receive queue is full), the pong is
never read, and a healthy peer is killed. This one pings every ``interval``
seconds and takes the peer for dead only if *nothing at all* arrived within
``timeout`` after a ping **and** reading is not paused by our own backlog.

The first ping is a timer; the task that pings from then on exists only once
it fires, so a short tunnel never has one.
"""

from __future__ import annotations

import asyncio
import contextlib

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from wstun.common.streams.internals import TunnelConnection, drop, reading_paused

__all__ = ["Keepalive", "keepalive_for"]


def _connection_closed(connection: TunnelConnection) -> bool:
    # A function, not an inline test: the state changes while we await.
    return connection.state is State.CLOSED


class Keepalive:
    """Pings ``connection`` every ``interval`` seconds, from one interval after now.

    ``dead_reason`` is set, and the socket dropped, when the peer is found
    dead; the stream reports it as the reason of its read or write error.
    """

    def __init__(
        self, connection: TunnelConnection, interval: float, timeout: float | None
    ) -> None:
        self._ws = connection
        self._interval = interval
        self._timeout = timeout
        #: Why the peer was taken for dead; None while it is alive.
        self.dead_reason: str | None = None
        #: The pinging task, once the first timer fired.
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            interval, self._start
        )

    def _start(self) -> None:
        self._timer = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """Stop pinging (idempotent; safe from within the task itself)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.task = None

    async def _run(self) -> None:
        """Ping now, judge the answer, then every interval again."""
        ws, interval, timeout = self._ws, self._interval, self._timeout
        loop = asyncio.get_running_loop()
        waited = True  # the timer that started this task waited the first interval
        try:
            while not _connection_closed(ws):
                if not waited:
                    await asyncio.sleep(interval)
                waited = False
                sent_at = loop.time()
                # A ping stuck behind a full send buffer is judged below by
                # what we receive, not by whether it went out.
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    await asyncio.wait_for(ws.ping(), timeout or interval)
                if timeout is None:
                    continue
                deadline = sent_at + timeout
                while ws.last_received < sent_at and not _connection_closed(ws):
                    if reading_paused(ws):
                        break  # our own backlog: the peer was sending, we are slow
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        self.dead_reason = (
                            f"keepalive timeout: nothing received from the peer "
                            f"for {loop.time() - ws.last_received:.1f}s"
                        )
                        drop(ws)
                        return
                    await ws.wait_received(remaining)
        except ConnectionClosed:
            return


def keepalive_for(
    connection: TunnelConnection, interval: float | None, timeout: float | None
) -> Keepalive | None:
    """A Keepalive for ``connection`` every ``interval`` seconds; None when pings are off
    (``interval`` 0 or None). A ``timeout`` of 0 or None never takes the peer for dead."""
    return Keepalive(connection, interval, timeout or None) if interval else None
