"""Warm, reusable WebSockets (``--pool N``): a new local connection skips the upgrade.

:class:`PooledDialer` is a :class:`~wstun.client.tunnel.Dialer` that keeps up
to ``size`` idle ``wstun.v2`` WebSockets to the server, opened ahead of
demand and refilled in the background. A tunnel takes one and opens its
target in-band (``open``, then ``opened`` or ``refused`` with the HTTP
refusal's status and reason); a WebSocket whose tunnel ended cleanly both
ways comes back for the next tunnel, to any target. One whose tunnel failed
is closed, never reused.

The pool learns that the server speaks ``wstun.v2`` from an ordinary tunnel
(the target in the URL, offering ``wstun.v1, wstun.v2``): a v1 server keeps
getting one WebSocket per tunnel, exactly as without a pool. Idle WebSockets
have their keepalive, an idle limit and a lifetime; they are closed in the
background, never while a connection waits for one. One cut while idle (a
proxy's timeout, a server's drain) is replaced without a failed connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from wstun.client.config import DEFAULT_IDLE, DEFAULT_LIFETIME, DEFAULT_POOL
from wstun.client.dialer import WebSocketDialer
from wstun.client.reuse import keep_idle
from wstun.common.ahead import Ahead
from wstun.common.errors import HandshakeError
from wstun.common.protocol import (
    SUBPROTOCOL,
    SUBPROTOCOL_V2,
    CloseCode,
    ControlError,
    Failure,
    Open,
    Refused,
    Target,
    encode_control,
    parse_answer,
)
from wstun.common.streams import ByteStream, TunnelClientConnection, WebSocketStream
from wstun.common.streams.internals import (
    close_exception,
    close_or_drop,
    lost_waiter,
    send_message,
)
from wstun.common.streams.keepalive import Keepalive, keepalive_for

__all__ = ["PooledDialer"]

logger = logging.getLogger("wstun.client")

#: Seconds between two tries to refill after a refill failed.
_REFILL_BACKOFF = 5.0


class _Lost(Exception):
    """An idle WebSocket turned out to be gone when a tunnel took it."""


class _Unavailable(Exception):
    """The server refused an ``open`` with 503: it is draining or at a limit."""


@dataclasses.dataclass(eq=False)
class _Channel:
    """One v2 WebSocket of the pool."""

    connection: TunnelClientConnection
    keepalive: Keepalive | None
    born: float
    #: While idle: when the idle limit closes it.
    idle_timer: asyncio.TimerHandle | None = None
    #: Carrying a tunnel.
    busy: bool = False


class PooledDialer:
    """Tunnels over warm v2 WebSockets when the server speaks v2, else fresh ones."""

    def __init__(
        self,
        dialer: WebSocketDialer,
        size: int = DEFAULT_POOL,
        *,
        idle: float = DEFAULT_IDLE,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.dialer = dialer
        self.size = size
        self.idle_limit = idle
        self.lifetime = lifetime
        self._idle: collections.deque[_Channel] = collections.deque()
        #: Whether the server speaks wstun.v2 (None: not known yet).
        self.server_v2: bool | None = None
        self._refilling: asyncio.Task[None] | None = None
        self._refill_failed_at: float | None = None
        self._closed = False
        # Closing handshakes under way in the background.
        self._closing: set[asyncio.Task[None]] = set()
        #: WebSockets carrying a tunnel now, and the most at once since an idle
        #: one last reached the idle limit (how many the pool takes back).
        self.busy = 0
        self.peak = 0

    async def probe(self) -> str:
        """The server check of the dialer underneath (it opens no tunnel)."""
        return await self.dialer.probe()

    # The Dialer seam.

    async def dial(self, target: Target, early: ByteStream | None = None) -> WebSocketStream:
        """A tunnel to ``target``: on an idle WebSocket if one is ready, else a fresh one.

        With ``early``, its first chunk goes behind the ``open`` if it comes before
        the answer, so a request costs one round trip; the stream's ``sent_ahead``
        counts it. A chunk read for a WebSocket found cut goes on the next one.
        """
        ahead = Ahead(early, self.dialer.config.read_size)
        while self._idle:
            channel = self._take()
            if channel is None:
                continue  # cut while it waited: the next one, or a fresh WebSocket
            logger.debug("pool: open %s on a warm WebSocket", target)
            try:
                stream = await self._open(channel, target, ahead)
            except _Lost:
                continue
            except _Unavailable as exc:
                # This server can't take it now (draining, or at a limit): a fresh
                # upgrade, which a proxy in front may send to another replica (and
                # which gets the same 503 over HTTP if there is none).
                logger.debug(
                    "pool: %s refused on a warm WebSocket (%s); upgrading afresh", target, exc
                )
                break
            self.refill()
            return stream
        stream = await self._fresh(target)
        self.refill()
        if ahead.data:  # read for a warm WebSocket that turned out cut
            await stream.write(ahead.data)
            stream.sent_ahead = len(ahead.data)
        return stream

    async def _fresh(self, target: Target) -> WebSocketStream:
        # v1 first: a peer that blindly picks the first offer (websocat does) gets
        # the v1 it always got; a wstun server picks v2 wherever it is in the list.
        connection = await self.dialer.connect(target, (SUBPROTOCOL, SUBPROTOCOL_V2))
        if connection.subprotocol != SUBPROTOCOL_V2:
            self.server_v2 = False
            return self.dialer.stream(connection)
        self.server_v2 = True
        channel = self._channel(connection)
        self._carry(channel)
        return self._stream(channel)

    def _channel(self, connection: TunnelClientConnection) -> _Channel:
        config = self.dialer.config
        keepalive = keepalive_for(connection, config.ping_interval, config.ping_timeout)
        channel = _Channel(connection, keepalive, time.monotonic())
        lost_waiter(connection).add_done_callback(lambda _: self._lost(channel))
        return channel

    def _stream(self, channel: _Channel) -> WebSocketStream:
        return WebSocketStream(
            channel.connection,
            eof_markers=True,
            keepalive=channel.keepalive,
            reusable=True,
            on_reuse=lambda _: self._release(channel),
        )

    async def _open(self, channel: _Channel, target: Target, ahead: Ahead) -> WebSocketStream:
        """``open`` on an idle WebSocket (and what goes ahead), then its answer;
        HandshakeError if refused."""
        connection = channel.connection
        timeout = self.dialer.config.connect_timeout
        try:
            await send_message(connection, encode_control(Open(str(target))))
            if ahead.data:
                await send_message(connection, ahead.data)
            async with asyncio.timeout(timeout):
                answer = await ahead.while_waiting(connection)
        except ConnectionClosed:
            self._forget(channel)
            raise _Lost from None
        except TimeoutError:
            await self._close(channel, CloseCode.GOING_AWAY, "no answer to open")
            raise HandshakeError(0, f"server did not answer the open within {timeout:g}s") from None
        try:
            control = parse_answer(answer, "the server")
        except ControlError as exc:
            await self._close(channel, CloseCode.PROTOCOL_ERROR, str(exc))
            raise HandshakeError(0, f"bad answer from server: {exc}") from None
        if isinstance(control, Refused):
            # A refusal leaves the WebSocket idle; the server drops what went ahead.
            self._release(channel)
            if control.status == Failure.UNAVAILABLE.value:
                raise _Unavailable(f"{control.status} {control.reason}")
            raise HandshakeError(control.status, control.reason)
        self._carry(channel)
        stream = self._stream(channel)
        stream.sent_ahead = len(ahead.data)
        return stream

    def _carry(self, channel: _Channel) -> None:
        channel.busy = True
        self.busy += 1
        self.peak = max(self.peak, self.busy)

    def _done(self, channel: _Channel) -> None:
        if channel.busy:
            channel.busy = False
            self.busy -= 1

    # The idle WebSockets.

    def _take(self) -> _Channel | None:
        """The oldest idle WebSocket, no longer watched; None if it turned out gone."""
        channel = self._idle.popleft()
        self._unwatch(channel)
        if channel.connection.state is not State.OPEN:
            self._forget(channel)
            return None
        if time.monotonic() - channel.born >= self.lifetime:
            self._close_soon(channel, CloseCode.NORMAL, "lifetime over")
            return None
        return channel

    def _release(self, channel: _Channel) -> None:
        """A WebSocket is free again: idle in the pool, or closed when not wanted.

        The pool refills to ``size`` idle WebSockets but takes back more
        (:meth:`_keep`): a tunnel's WebSocket coming back just after the refill
        replaced it is kept, not closed (which would cost an upgrade per
        tunnel); the extra ones go after the idle limit.
        """
        self._done(channel)
        if (
            self._closed
            or len(self._idle) >= self._keep()
            or time.monotonic() - channel.born >= self.lifetime
            or channel.connection.state is not State.OPEN
        ):
            self._close_soon(channel, CloseCode.NORMAL, "not needed")
            return
        self._watch(channel)
        self._idle.append(channel)

    def _keep(self) -> int:
        """:func:`keep_idle`; "lately" ends when an idle one reaches the idle limit."""
        return keep_idle(self.size, self.peak, self.busy)

    def _watch(self, channel: _Channel) -> None:
        """While idle the server may only close it (:meth:`_lost`); after the idle
        limit, we do; a message from the server breaks the protocol."""
        loop = asyncio.get_running_loop()
        channel.idle_timer = loop.call_later(self.idle_limit, self._idle_over, channel)
        channel.connection.idle_hook = lambda kind: self._spoke_while_idle(channel, kind)

    def _unwatch(self, channel: _Channel) -> None:
        if channel.idle_timer is not None:
            channel.idle_timer.cancel()
            channel.idle_timer = None
        channel.connection.idle_hook = None

    def _drop_idle(self, channel: _Channel) -> bool:
        """Take ``channel`` out of the idle ones; False if it wasn't there."""
        self._unwatch(channel)
        try:
            self._idle.remove(channel)
        except ValueError:
            return False
        return True

    def _idle_over(self, channel: _Channel) -> None:
        if self._drop_idle(channel):
            self.peak = self.busy  # no tunnel wanted it for the idle limit: demand fell
            logger.debug("pool: a WebSocket was idle for %gs; closing it", self.idle_limit)
            self._close_soon(channel, CloseCode.NORMAL, "idle")

    def _spoke_while_idle(self, channel: _Channel, kind: str) -> None:
        if not self._drop_idle(channel):
            return
        logger.warning("pool: the server sent %s on an idle WebSocket; closing it", kind)
        self._close_soon(channel, CloseCode.PROTOCOL_ERROR, f"{kind} while idle")
        self.refill()

    def _lost(self, channel: _Channel) -> None:
        """The TCP connection is gone; if it was idle (the server's drain, a proxy's
        idle timeout, a dead peer), another is opened."""
        self._forget(channel)
        if self._drop_idle(channel):
            why = _why(close_exception(channel.connection))
            logger.debug("pool: an idle WebSocket was closed (%s); replacing it", why)
            self.refill()

    def refill(self) -> None:
        """Open idle WebSockets, in the background, up to the pool's size."""
        if self._closed or not self.server_v2 or self.size <= 0:
            return
        if self._refilling is not None and not self._refilling.done():
            return
        failed = self._refill_failed_at
        if failed is not None and time.monotonic() - failed < _REFILL_BACKOFF:
            return
        self._refilling = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while not self._closed and len(self._idle) < self.size:
            try:
                connection = await self.dialer.connect(None, (SUBPROTOCOL_V2,))
            except HandshakeError as exc:
                # Tunnels still work, on fresh WebSockets; say why once in a while.
                self._refill_failed_at = time.monotonic()
                logger.debug("pool: can't open an idle WebSocket: %s", exc.outcome)
                return
            if connection.subprotocol != SUBPROTOCOL_V2:
                self.server_v2 = False
                await connection.close()
                return
            self._refill_failed_at = None
            self._release(self._channel(connection))
        if not self._closed and len(self._idle) >= self.size:
            logger.debug("pool: ready, %d idle WebSocket(s)", len(self._idle))

    # Closing.

    def _forget(self, channel: _Channel) -> None:
        """A channel that is closed or closing: its keepalive stops."""
        self._done(channel)
        if channel.keepalive is not None:
            channel.keepalive.stop()

    def _close_soon(self, channel: _Channel, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._close(channel, code, reason))
        self._closing.add(task)  # close() waits for it: no socket outlives the pool
        task.add_done_callback(self._closing.discard)

    async def _close(self, channel: _Channel, code: int, reason: str) -> None:
        """The closing handshake, 2 s at most; then, or if cancelled, the socket is cut."""
        self._forget(channel)
        await close_or_drop(channel.connection, code, reason)

    async def close_idle(self, reason: str = "not needed") -> None:
        """Close the idle WebSockets now (1001); the next tunnel refills the pool."""
        if self._refilling is not None:
            self._refilling.cancel()
            await asyncio.gather(self._refilling, return_exceptions=True)
        idle = [self._take() for _ in range(len(self._idle))]
        await asyncio.gather(
            *(
                self._close(channel, CloseCode.GOING_AWAY, reason)
                for channel in idle
                if channel is not None
            ),
            return_exceptions=True,
        )

    async def close(self) -> None:
        """Close the idle WebSockets and stop refilling; tunnels end by themselves, and
        the WebSockets they give back are closed. Call it again once they have
        ended: it waits for those closes too."""
        self._closed = True
        await self.close_idle("client shutting down")
        await asyncio.gather(*self._closing, return_exceptions=True)


def _why(closed: ConnectionClosed) -> str:
    frame = closed.rcvd or closed.sent
    if frame is None:
        return "no close frame"
    return f"{frame.code} {frame.reason}".rstrip()
