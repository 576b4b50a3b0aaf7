"""Reverse tunnels (``-R``): the server listens for a client, the client answers.

A client asks, over a ``wstun.reverse.v1`` WebSocket, for a listener
(``listen``); that WebSocket is the lease's control channel. The port
belongs to that lease alone (never SO_REUSEPORT: the kernel refuses a second
bind, also from another worker). The client opens data channels (``attach``)
that wait idle; each connection accepted on the port takes one, is
announced with ``open`` (its first bytes go right behind), and once the
client answers ``opened`` is relayed like any tunnel, after which the
channel waits again. When the control channel drops, the port is kept for
``--reverse-grace`` seconds for the same client process to take back with
its lease id; ``release`` frees it at once. A ``.../udp`` lease listens
for UDP instead: each source address on its port is one flow, announced on
a data channel like a connection, whose datagrams then go one per binary
message (as ``wstun.udp.v1``) until the flow times out. docs/design.md,
"Reverse tunnels", is the protocol.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import hmac
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed

from wstun.common.ahead import Ahead
from wstun.common.datagram import (
    Address,
    DatagramFlow,
    FlowListener,
    FlowReport,
    FlowSource,
    bind_udp,
)
from wstun.common.errors import describe_os_error
from wstun.common.protocol import (
    Attach,
    CloseCode,
    Control,
    ControlError,
    Demand,
    Failure,
    HandshakeRejection,
    Listen,
    Listening,
    Open,
    Opened,
    Refused,
    Release,
    Target,
    encode_control,
    parse_answer,
    parse_control,
)
from wstun.common.report import TunnelReport, format_peer, new_tunnel_id
from wstun.common.streams import (
    ByteStream,
    PrefixedStream,
    TcpStream,
    WebSocketStream,
    tcp_protocol_factory,
)
from wstun.common.streams.internals import send_message
from wstun.common.streams.keepalive import Keepalive, keepalive_for
from wstun.server.addresses import parse_ip
from wstun.server.connection import HandshakeConnection
from wstun.server.limits import client_host
from wstun.server.policy import Policy

__all__ = ["DEFAULT_REVERSE_GRACE", "Lease", "ReverseService"]

logger = logging.getLogger("wstun.server")

#: Seconds a lease's port is kept after its control channel drops (``--reverse-grace``).
DEFAULT_REVERSE_GRACE = 30.0
#: Leases one client address may hold at once (``--reverse-max-leases``).
DEFAULT_MAX_LEASES = 16
#: Inbound connections that may wait for a data channel, per lease (``--reverse-max-pending``).
DEFAULT_MAX_PENDING = 256
#: The listen backlog of a reverse port (nginx's default).
BACKLOG = 511
#: Idle data channels a lease keeps; more are refused (503).
MAX_IDLE_CHANNELS = 64
#: UDP flows open at once on one ``.../udp`` lease's port; datagrams from more
#: sources are dropped.
MAX_UDP_FLOWS = 1024
#: Ports tried for ``port 0`` within the allowed ranges before giving up.
_PORT_TRIES = 64

#: Relays one reverse tunnel: (inbound connection, data channel stream, report); True if clean.
RelayReverse = Callable[[ByteStream, WebSocketStream, TunnelReport], Awaitable[bool]]
#: Carries one reverse UDP flow until it ends (counted, logged, stopped on drain).
CarryFlow = Callable[[DatagramFlow], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Inbound:
    """A connection accepted on a lease's port, and where it came from."""

    stream: ByteStream
    peer: str

    async def abort(self, why: str) -> None:
        await self.stream.abort(why)


@dataclasses.dataclass(frozen=True, eq=False)
class InboundFlow:
    """A new source address on a ``.../udp`` lease's port: its datagrams so far."""

    source: FlowSource
    peer: str

    async def abort(self, why: str) -> None:
        """No channel for it: its datagrams are dropped; its next one tries again."""
        self.source.listener.forget(self.source)


def short_id(lease_id: str) -> str:
    """What logs show of a lease id: never the whole of it."""
    return lease_id[:6] + "..."


class Lease:
    """A port held for one client process, and its data channels."""

    def __init__(
        self,
        service: ReverseService,
        bind: Target,
        proto: str,
        session: str,
        client: str,
        user: str | None = None,
    ) -> None:
        self.service = service
        self.id = secrets.token_urlsafe(24)  # 192 bits
        self.bind = bind
        #: ``tcp``, or ``udp``: a listener of flows (``udp``) rather than connections.
        self.proto = proto
        self.session = session
        #: The client's address (host), for the per-client lease limit.
        self.client = client
        self.client_peer = "-"
        #: The user whose token asked for it (``--users-file``), whose listen rules allow it.
        self.user = user
        self.listener: asyncio.Server | None = None
        self.udp: FlowListener | None = None
        #: The UDP flows running on this lease's data channels.
        self.flows: set[DatagramFlow] = set()
        self.control: HandshakeConnection | None = None
        self.idle: list[DataChannel] = []
        #: Every data channel's WebSocket, idle or busy.
        self.channels: set[HandshakeConnection] = set()
        self.waiting: collections.deque[asyncio.Future[DataChannel]] = collections.deque()
        self._expiry: asyncio.TimerHandle | None = None
        self.expires_at: float | None = None
        self.closed = False
        self._accepted: set[asyncio.Task[None]] = set()
        self._demand_task: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        return _shown(self.bind, self.proto)

    # The control channel.

    def take_control(self, connection: HandshakeConnection) -> HandshakeConnection | None:
        """``connection`` is now the control channel; returns the one it replaces."""
        old, self.control = self.control, connection
        self.client_peer = connection.client_peer
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = self.expires_at = None
        return old

    def control_lost(self, connection: HandshakeConnection, why: str) -> None:
        """The control channel went away without ``release``: keep the port a while."""
        if self.control is not connection or self.closed:
            return
        self.control = None
        grace = self.service.grace
        logger.info(
            "reverse %s: control channel of %s lost (%s); keeping the port for %gs",
            self,
            connection.client_peer,
            why,
            grace,
        )
        loop = asyncio.get_running_loop()
        self.expires_at = time.monotonic() + grace
        self._expiry = loop.call_later(grace, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if self.control is None and not self.closed:
            self.service.end(self, "lease expired: the client did not come back")

    def retry_after(self) -> float | None:
        """Seconds until a lease in its grace frees its port."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - time.monotonic())

    # Data channels and inbound connections.

    def channel_ready(self, channel: DataChannel) -> None:
        """A data channel waits for a connection: the oldest waiting one, else idle."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(channel)
                if self.waiting:  # still more than channels: keep the client opening
                    self._demanding()
                return
        self.idle.append(channel)

    def _demanding(self) -> None:
        if self._demand_task is None or self._demand_task.done():
            self._demand_task = asyncio.get_running_loop().create_task(self._demand())

    def channel_gone(self, channel: DataChannel) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(channel)

    def accepted(self, stream: TcpStream) -> None:
        """A connection on the lease's port."""
        self.queue(Inbound(stream, format_peer(stream.peername)))

    def new_source(self, listener: FlowListener, address: Address) -> FlowSource:
        """A new source address on a ``.../udp`` lease's port: a flow that waits for a
        data channel like a connection (its datagrams queue meanwhile)."""
        peer = format_peer(address)
        source = FlowSource(listener, address, FlowReport(new_tunnel_id("s"), peer, "-"))
        source.report.kind = "reverse"
        self.queue(InboundFlow(source, peer))
        return source

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` for this lease (kept until it is done)."""
        task = asyncio.get_running_loop().create_task(work)
        self._accepted.add(task)
        task.add_done_callback(self._accepted.discard)

    def queue(self, inbound: Inbound | InboundFlow) -> None:
        """A connection to hand to a data channel: a new one, or one whose channel was
        closed by the client before it answered (what was read from it comes first)."""
        self.start(self._inbound(inbound))

    async def _inbound(self, inbound: Inbound | InboundFlow) -> None:
        peer = inbound.peer
        what = "flow" if isinstance(inbound, InboundFlow) else "connection"
        if self.closed:
            await inbound.abort("the lease ended")
            return
        if self.idle:
            self.idle.pop(0).assign(inbound)
            return
        service = self.service
        if len(self.waiting) >= service.max_pending:
            service.failures(
                f"reverse {self}: {len(self.waiting)} connections wait for the client, "
                "the limit; resetting new ones"
            )
            await inbound.abort("too many connections waiting")
            return
        waiter: asyncio.Future[DataChannel] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self._demanding()
        try:
            channel = await asyncio.wait_for(waiter, service.connect_timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ValueError):
                self.waiting.remove(waiter)
            why = "the lease ended" if self.closed else "no data channel from the client"
            logger.info(
                "reverse %s: %s from %s %s: %s within %gs",
                self,
                what,
                peer,
                "dropped" if what == "flow" else "reset",
                why,
                service.connect_timeout,
            )
            await inbound.abort(why)
            if isinstance(exc, asyncio.CancelledError) and not self.closed:
                raise
            return
        channel.assign(inbound)

    async def _demand(self) -> None:
        """Tell the client how many connections wait (one message at a time)."""
        control = self.control
        if control is None or not self.waiting:
            return
        with contextlib.suppress(ConnectionClosed):
            await control.send(encode_control(Demand(len(self.waiting))))

    def close(self, why: str, code: int = CloseCode.GOING_AWAY) -> None:
        """Stop listening; waiting connections are reset, idle channels closed, UDP
        flows ended (they have no end of their own; with ``code``)."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.listener is not None:
            self.listener.close()
        if self.udp is not None:
            self.udp.close()
        for flow in self.flows:
            flow.stop(why, code)
        for waiter in self.waiting:
            waiter.cancel()
        self.waiting.clear()
        for channel in self.idle:
            channel.release()
        self.idle.clear()


class DataChannel:
    """One data channel of a lease: waits idle, carries an inbound connection, waits again."""

    def __init__(self, lease: Lease, connection: HandshakeConnection, keepalive: Keepalive | None):
        self.lease = lease
        self.connection = connection
        self.keepalive = keepalive
        self._assigned: asyncio.Future[Inbound | InboundFlow | None] | None = None

    def assign(self, inbound: Inbound | InboundFlow) -> None:
        assert self._assigned is not None
        if self._assigned.done():  # gone meanwhile: another channel or a wait
            self.lease.queue(inbound)
            return
        self._assigned.set_result(inbound)

    def release(self) -> None:
        """The lease ended: close this channel once it is idle."""
        if self._assigned is not None and not self._assigned.done():
            self._assigned.set_result(None)

    async def run(self) -> None:
        self.lease.channels.add(self.connection)
        try:
            while True:
                inbound = await self._wait()
                if inbound is None:
                    return
                if not await self._carry(inbound):
                    return
                if self.lease.closed or self.lease.service.draining():
                    await self._close(CloseCode.GOING_AWAY, self._ending())
                    return
        finally:
            self.lease.channels.discard(self.connection)
            self.lease.channel_gone(self)
            if self.keepalive is not None:
                self.keepalive.stop()

    def _ending(self) -> str:
        return "server is shutting down" if self.lease.service.draining() else "lease ended"

    async def _wait(self) -> Inbound | InboundFlow | None:
        """Idle until an inbound connection is assigned; None when this channel is done."""
        assigned: asyncio.Future[Inbound | InboundFlow | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._assigned = assigned
        self.lease.channel_ready(self)
        watch = asyncio.ensure_future(self.connection.recv())
        try:
            await asyncio.wait((watch, assigned), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not assigned.done():
                assigned.set_result(None)  # no connection goes to this channel from now
            self.lease.channel_gone(self)
            if not watch.done():
                watch.cancel()  # cancelling recv loses nothing
            await asyncio.gather(watch, return_exceptions=True)
        inbound = assigned.result()
        if not watch.cancelled():
            if inbound is not None:
                self.lease.queue(inbound)  # to another channel
            exc = watch.exception()
            if exc is None:
                await self.lease.service.violation(self.connection, "a message while idle")
            elif not isinstance(exc, ConnectionClosed):
                raise exc
            return None
        if inbound is None:
            await self._close(CloseCode.GOING_AWAY, self._ending())
        return inbound

    async def _carry(self, inbound: Inbound | InboundFlow) -> bool:
        """``open``, the client's answer, then the relay; True if the channel may go on."""
        if isinstance(inbound, InboundFlow):
            return await self._carry_flow(inbound)
        service, connection = self.lease.service, self.connection
        stream, peer = inbound.stream, inbound.peer
        ahead = Ahead(stream, service.read_size)

        def unseen() -> Inbound:
            # What was read of the connection goes to the next channel with it.
            return Inbound(PrefixedStream(stream, ahead.data), peer) if ahead.data else inbound

        control = await self._answer(
            inbound, wait=lambda: ahead.while_waiting(connection), unseen=unseen
        )
        if control is None:
            return False
        if isinstance(control, Refused):
            logger.info(
                "reverse %s: connection from %s reset: the client refused it: %d %s",
                self.lease,
                peer,
                control.status,
                control.reason,
            )
            await stream.abort(control.reason)
            return True  # the client drops what went ahead; the channel is idle again
        ws = WebSocketStream(connection, eof_markers=True, keepalive=self.keepalive, reusable=True)
        report = TunnelReport(new_tunnel_id("s"), peer, connection.client_peer, kind="reverse")
        report.user = self.lease.user
        report.sent_ahead = len(ahead.data)
        return await service.relay(stream, ws, report)

    async def _carry_flow(self, inbound: InboundFlow) -> bool:
        """``open`` and the flow's datagrams so far, the client's answer, then the flow
        until it ends (its WebSocket with it); True if the channel is idle again."""
        lease = self.lease
        service, connection = lease.service, self.connection
        source, peer = inbound.source, inbound.peer
        ahead = list(source.early)
        control = await self._answer(
            inbound, datagrams=ahead, wait=connection.recv, unseen=lambda: inbound
        )
        if control is None:
            return False
        if isinstance(control, Refused):
            service.failures(
                f"reverse {lease}: flow from {peer} dropped: the client refused it: "
                f"{control.status} {control.reason}"
            )
            lease.start(source.hold_refused())
            return True  # the client drops what went ahead; the channel is idle again
        source.report.target = connection.client_peer
        source.report.user = lease.user
        flow = source.start(
            connection, outbound="up", timeout=service.udp_timeout, sent_ahead=len(ahead)
        )
        lease.flows.add(flow)
        try:
            if lease.closed:
                flow.stop("lease ended")
            await service.carry_flow(flow)
        finally:
            lease.flows.discard(flow)
            source.listener.forget(source)
        return False

    async def _answer(
        self,
        inbound: Inbound | InboundFlow,
        *,
        wait: Callable[[], Awaitable[str | bytes]],
        unseen: Callable[[], Inbound | InboundFlow],
        datagrams: Sequence[bytes] = (),
    ) -> Opened | Refused | None:
        """Send ``open`` (then ``datagrams``, sent ahead) and ``wait`` for the client's
        answer, within --connect-timeout; None when this channel carries nothing more:
        the inbound went to another channel (``unseen()``) or was aborted."""
        lease = self.lease
        service, connection = lease.service, self.connection
        try:
            await send_message(connection, encode_control(Open(peer=inbound.peer)))
            for data in datagrams:
                await send_message(connection, data)
            async with asyncio.timeout(service.connect_timeout):
                answer = await wait()
        except ConnectionClosed:
            # The client closed this channel before it saw the open (an idle channel it
            # no longer wanted, say): another channel takes the inbound.
            lease.queue(unseen())
            return None
        except TimeoutError:
            logger.info("reverse %s: the client did not answer open for %s", lease, inbound.peer)
            await inbound.abort("client did not answer")
            await self._close(CloseCode.GOING_AWAY, "no answer to open")
            return None
        try:
            return parse_answer(answer, "a client")
        except ControlError as exc:
            await inbound.abort("client broke the protocol")
            await service.violation(connection, str(exc))
            return None

    async def _close(self, code: int, reason: str) -> None:
        await self.connection.close_within(code, reason)


class ReverseService:
    """The leases of one server: listen rules, ownership, grace, data channels."""

    def __init__(
        self,
        *,
        policy_for: Callable[[str | None], Policy],
        grace: float,
        max_leases: int,
        max_pending: int,
        connect_timeout: float,
        read_size: int,
        ping_interval: float | None,
        ping_timeout: float | None,
        relay: RelayReverse,
        carry_flow: CarryFlow,
        udp_timeout: float,
        refuse: Callable[[HandshakeConnection, HandshakeRejection], None],
        draining: Callable[[], bool],
        on_change: Callable[[int], None] = lambda active: None,
        shared_port: bool = False,
    ) -> None:
        #: Other processes (``--workers``) serve the same port and hold leases of their own.
        self.shared_port = shared_port
        #: The listen rules of a user (None: no users file), as they are now.
        self.policy_for = policy_for
        self.grace = grace
        self.max_leases = max_leases
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self.read_size = read_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.relay = relay
        self.carry_flow = carry_flow
        self.udp_timeout = udp_timeout
        self._refuse = refuse
        self.draining = draining
        self._on_change = on_change
        self._by_id: dict[str, Lease] = {}
        self._by_bind: dict[tuple[Target, str], Lease] = {}
        self._per_client: collections.Counter[str] = collections.Counter()
        self._failure_logged: dict[str, float] = {}

    @property
    def leases(self) -> list[Lease]:
        return list(self._by_id.values())

    def failures(self, line: str) -> None:
        """A line about a recurring condition: once per 10 s."""
        now = time.monotonic()
        if now - self._failure_logged.get(line, -10.0) >= 10.0:
            self._failure_logged[line] = now
            logger.warning("%s", line)

    def _keepalive(self, connection: HandshakeConnection) -> Keepalive | None:
        return keepalive_for(connection, self.ping_interval, self.ping_timeout)

    async def serve(self, connection: HandshakeConnection) -> None:
        """A ``wstun.reverse.v1`` WebSocket: its first message makes it a control
        channel (``listen``) or a data channel (``attach``)."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                first = await connection.recv()
        except (ConnectionClosed, TimeoutError):
            return
        try:
            if not isinstance(first, str):
                raise ControlError("payload before listen or attach")
            control = parse_control(first)
            if not isinstance(control, Listen | Attach):
                raise ControlError(f"unexpected {_name(control)} as the first message")
        except ControlError as exc:
            await self.violation(connection, str(exc))
            return
        if isinstance(control, Listen):
            await self._control(connection, control)
        else:
            await self._data(connection, control)

    async def violation(self, connection: HandshakeConnection, reason: str) -> None:
        """Close with 1002 and the reason; no traceback, nothing else affected."""
        logger.info("protocol error peer=%s: %s", connection.client_peer, reason)
        await connection.close_within(CloseCode.PROTOCOL_ERROR, reason)

    async def _refusal(
        self, connection: HandshakeConnection, rejection: HandshakeRejection, retry: float | None
    ) -> None:
        self._refuse(connection, rejection)
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await connection.send(
                encode_control(Refused(rejection.status, rejection.reason, retry))
            )
        await connection.close_within()

    # Control channels.

    async def _control(self, connection: HandshakeConnection, listen: Listen) -> None:
        got = await self._lease(connection, listen)
        if isinstance(got, tuple):
            await self._refusal(connection, *got)
            return
        lease = got
        replaced = lease.take_control(connection)
        if replaced is not None:
            logger.info("reverse %s: taken back by a new control channel", lease)
            await replaced.close_within(
                CloseCode.POLICY_VIOLATION, "lease taken by a newer connection"
            )
        keepalive = self._keepalive(connection)
        why = "closed"
        try:
            await connection.send(
                encode_control(Listening(lease.bind.host, lease.bind.port, lease.id, self.grace))
            )
            while True:
                message = await connection.recv()
                try:
                    if not isinstance(message, str):
                        raise ControlError("payload on a control channel")
                    control = parse_control(message)
                    if not isinstance(control, Release):
                        raise ControlError(f"unexpected {_name(control)} on a control channel")
                except ControlError as exc:
                    await self.violation(connection, str(exc))
                    why = f"protocol error: {exc}"
                    break
                self.end(lease, "released by the client")
                await connection.close_within()
                return
        except ConnectionClosed as closed:
            why = _why(closed, keepalive)
        finally:
            if keepalive is not None:
                keepalive.stop()
            lease.control_lost(connection, why)

    async def _lease(
        self, connection: HandshakeConnection, listen: Listen
    ) -> Lease | tuple[HandshakeRejection, float | None]:
        """The lease ``listen`` asks for, taken back or new; or the refusal."""
        if self.draining():
            return HandshakeRejection(Failure.UNAVAILABLE, "server is shutting down"), None
        address = parse_ip(listen.bind)
        if address is None:
            return HandshakeRejection(
                Failure.BAD_REQUEST, f"bind address must be an IP address, got {listen.bind!r}"
            ), None
        bind = Target(str(address), listen.port)
        proto = listen.proto or "tcp"
        if listen.lease is not None and (lease := self._by_id.get(listen.lease)) is not None:
            same = hmac.compare_digest(lease.session, listen.session)
            if (
                not same
                or lease.proto != proto
                or lease.bind.host != bind.host
                or bind.port not in (0, lease.bind.port)
            ):
                return HandshakeRejection(
                    Failure.FORBIDDEN, "lease not valid for this client and address"
                ), None
            return lease
        policy = self.policy_for(connection.user)
        if not policy.may_listen(bind.host, bind.port, proto):
            return HandshakeRejection(
                Failure.FORBIDDEN,
                f"listening not allowed: {_shown(bind, proto)}",
                f"listen rules: {', '.join(map(str, policy.allow_listen)) or '(none)'}",
            ), None
        client = client_host(connection.client_peer)
        if self._per_client[client] >= self.max_leases:
            return HandshakeRejection(
                Failure.UNAVAILABLE,
                f"too many reverse listeners from {client} (limit {self.max_leases} per client)",
            ), None
        held = self._by_bind.get((bind, proto))
        if held is not None:
            return HandshakeRejection(
                Failure.CONFLICT, f"{_shown(bind, proto)} is held by another client"
            ), held.retry_after()
        lease = Lease(self, bind, proto, listen.session, client, connection.user)
        # Counted before the bind's await, so asks that come meanwhile see it.
        self._per_client[client] += 1
        try:
            problem = await self._listen(lease, policy)
        except BaseException:
            self._uncount(client)
            raise
        if problem is not None:
            self._uncount(client)
            return problem, None
        self._by_id[lease.id] = lease
        self._by_bind[lease.bind, proto] = lease
        self._on_change(len(self._by_id))
        logger.info(
            "reverse %s: listening for %s (lease %s)",
            lease,
            connection.client_peer,
            short_id(lease.id),
        )
        return lease

    async def _listen(self, lease: Lease, policy: Policy) -> HandshakeRejection | None:
        """Bind the lease's listener (no SO_REUSEPORT); for port 0, a port ``policy``
        allows."""
        bind, shown = lease.bind, str(lease)
        for port in self._ports(bind, lease.proto, policy):
            try:
                bound = await self._bind(lease, port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    if bind.port == 0:
                        continue
                    return HandshakeRejection(
                        Failure.CONFLICT, f"can't listen on {shown}: address in use"
                    )
                return HandshakeRejection(
                    Failure.BAD_REQUEST, f"can't listen on {shown}: {describe_os_error(exc)}"
                )
            lease.bind = Target(bind.host, bound)
            return None
        return HandshakeRejection(
            Failure.CONFLICT, f"can't listen on {bind.host}: no free port the rules allow"
        )

    async def _bind(self, lease: Lease, port: int) -> int:
        """Listen on ``port`` of the lease's address (TCP or UDP); the port bound."""
        loop = asyncio.get_running_loop()
        host = lease.bind.host
        if lease.proto == "udp":
            sock = bind_udp(host, port)
            try:
                _, udp = await loop.create_datagram_endpoint(
                    lambda: FlowListener(
                        f"reverse {_shown(Target(host, sock.getsockname()[1]), 'udp')}",
                        max_flows=MAX_UDP_FLOWS,
                        new_source=lease.new_source,
                        log_failure=self.failures,
                        log=logger,
                    ),
                    sock=sock,
                )
            except BaseException:
                sock.close()
                raise
            udp.sock = sock
            lease.udp = udp
            return int(sock.getsockname()[1])
        server = await loop.create_server(
            tcp_protocol_factory(lease.accepted), host, port, reuse_port=False, backlog=BACKLOG
        )
        lease.listener = server
        return int(server.sockets[0].getsockname()[1])

    def _ports(self, bind: Target, proto: str, policy: Policy) -> list[int]:
        if bind.port:
            return [bind.port]
        rules = [rule for rule in policy.listen_rules(bind.host) if rule.proto == proto]
        if any(rule.low <= 1 and rule.high >= 65535 for rule in rules):
            return [0]  # any port: the kernel picks
        ports = {p for rule in rules for p in range(rule.low, rule.high + 1)}
        free = [p for p in ports if (Target(bind.host, p), proto) not in self._by_bind]
        random.shuffle(free)
        return free[:_PORT_TRIES]

    def _uncount(self, client: str) -> None:
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def end(self, lease: Lease, why: str, code: int = CloseCode.GOING_AWAY) -> None:
        """The lease is over: its port is free now."""
        if self._by_id.pop(lease.id, None) is None:
            return
        self._by_bind.pop((lease.bind, lease.proto), None)
        self._uncount(lease.client)
        lease.close(why, code)
        self._on_change(len(self._by_id))
        logger.info("reverse %s: port closed (%s)", lease, why)

    # Data channels.

    async def _data(self, connection: HandshakeConnection, attach: Attach) -> None:
        lease = self._by_id.get(attach.lease)
        if lease is None and self.shared_port:
            # With --workers N the kernel spreads WebSockets over the workers; the lease
            # may well be another worker's: the client tries again at once.
            rejection = HandshakeRejection(
                Failure.MISDIRECTED, "lease not held by this worker; try again"
            )
            await self._refusal(connection, rejection, 0.0)
            return
        if lease is None or not hmac.compare_digest(lease.session, attach.session):
            rejection = HandshakeRejection(Failure.FORBIDDEN, "no such lease for this client")
            await self._refusal(connection, rejection, None)
            return
        if self.draining():
            rejection = HandshakeRejection(Failure.UNAVAILABLE, "server is shutting down")
            await self._refusal(connection, rejection, None)
            return
        if len(lease.idle) >= MAX_IDLE_CHANNELS:
            rejection = HandshakeRejection(
                Failure.UNAVAILABLE, f"too many idle data channels (limit {MAX_IDLE_CHANNELS})"
            )
            await self._refusal(connection, rejection, None)
            return
        await DataChannel(lease, connection, self._keepalive(connection)).run()

    async def revoke(self, lease: Lease, why: str) -> None:
        """The rules no longer allow ``lease``: its port closes, and its control channel,
        its data channels (busy ones too: their tunnels are cut) and its UDP flows close
        with 1008 and ``why``; the client is told, and does not get the port back."""
        connections = [lease.control, *lease.channels]
        lease.control = None
        self.end(lease, why, CloseCode.POLICY_VIOLATION)
        await asyncio.gather(
            *(
                connection.close_within(CloseCode.POLICY_VIOLATION, why)
                for connection in connections
                if connection is not None
            )
        )

    # Drain and stop.

    async def shut_down(self) -> None:
        """On drain: close every listener and control channel now (1001); idle data channels
        close, busy ones after their tunnel."""
        controls = [lease.control for lease in self._by_id.values() if lease.control is not None]
        for lease in list(self._by_id.values()):
            self.end(lease, "server is shutting down")
        await asyncio.gather(
            *(
                control.close_within(CloseCode.GOING_AWAY, "server is shutting down")
                for control in controls
            ),
            return_exceptions=True,
        )

    def stop(self) -> None:
        """Close every listener that is left."""
        for lease in list(self._by_id.values()):
            self.end(lease, "server stopped")


def _why(closed: ConnectionClosed, keepalive: Keepalive | None) -> str:
    if keepalive is not None and keepalive.dead_reason:
        return keepalive.dead_reason
    frame = closed.rcvd or closed.sent
    if frame is None:
        return "connection lost"
    return f"{frame.code} {frame.reason}".rstrip()


def _name(control: Control) -> str:
    return type(control).__name__.lower()


def _shown(bind: Target, proto: str) -> str:
    return f"{bind}/udp" if proto == "udp" else str(bind)
