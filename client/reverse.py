"""Reverse tunnels (``-R``): the server listens, this client answers.

``-R [BIND:]PORT:HOST:HOSTPORT`` asks the server, over a ``wstun.reverse.v1``
control channel, to listen on BIND:PORT (BIND defaults to 127.0.0.1) and to
hand every connection it accepts to this client, which connects it to
HOST:HOSTPORT as the client sees it. The server answers with a lease id;
:class:`ReverseForward` keeps the control channel up, and after any loss
reconnects with the lease (backoff 1 s doubling to 30 s, jittered), so a
blip gets the same port back. Refusals that retrying can't fix (400, 401,
403, a server without reverse tunnels) stop the forward with one line.

Connections arrive on data channels, WebSockets kept open ahead of demand
(:class:`_Channels`): the server names the connection (``open``), and the
client runs the one tunnel flow (:class:`~wstun.client.tunnel.Tunnel`) whose
dialer is the local service (:class:`ServiceDialer`) and whose local end is
the channel (:class:`InboundConnection`). A channel whose tunnel ended
cleanly both ways waits for the next connection.

``-R .../udp`` asks for a UDP listener: each source address there is one
flow, announced on a data channel the same way; the client answers it from
a UDP socket of its own connected to HOST:HOSTPORT, and the channel carries
the flow's datagrams (one per binary message) until it times out.
docs/design.md, "Reverse tunnels", is the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from wstun.client.forward import parse_forward
from wstun.client.reuse import keep_idle
from wstun.client.tunnel import LocalEnd, Tunnel, TunnelHandshakeCounter, TunnelSettings
from wstun.common.datagram import DatagramFlow, FlowReport, UdpSocket, open_udp
from wstun.common.errors import HandshakeError, TargetError, describe_os_error
from wstun.common.protocol import (
    SUBPROTOCOL_REVERSE,
    Attach,
    CloseCode,
    ControlError,
    Demand,
    Listen,
    Listening,
    Open,
    Opened,
    Refused,
    Release,
    Target,
    encode_control,
    parse_control,
)
from wstun.common.report import new_tunnel_id
from wstun.common.streams import (
    ByteStream,
    TcpStream,
    TunnelClientConnection,
    WebSocketStream,
    open_tcp,
)
from wstun.common.streams.internals import close_or_drop, drop
from wstun.common.streams.keepalive import Keepalive, keepalive_for

if TYPE_CHECKING:
    from wstun.client.dialer import WebSocketDialer
    from wstun.common.metrics import TunnelMetrics

__all__ = [
    "InboundConnection",
    "Remote",
    "ReverseForward",
    "ServiceDialer",
    "parse_remote",
]

logger = logging.getLogger("wstun.client")

#: Backoff between reconnects: from 1 s, doubling, to 30 s.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: Data channels opened at once in answer to the server's demand.
MAX_OPENING = 16
#: Seconds after which idle data channels beyond twice ``--reverse-channels`` that
#: no tunnel wanted meanwhile are closed.
SURPLUS_IDLE = 30.0
#: Longest wait before opening a data channel again after opens failed.
MAX_CHANNEL_RETRY = 5.0
#: Data channels reopened at once after reaching the wrong ``--workers`` process (421),
#: in a row, before the usual backoff.
MAX_MISDIRECTED = 32


@dataclasses.dataclass(frozen=True)
class Remote:
    """``-R``: the server listens on ``bind``; each connection goes to ``local``."""

    bind: Target
    local: Target
    #: ``tcp``, or ``udp`` for ``.../udp``: the server listens for UDP flows.
    proto: str = "tcp"

    def __str__(self) -> str:
        suffix = "/udp" if self.proto == "udp" else ""
        return f"{self.bind}{suffix} -> {self.local}{suffix}"


def parse_remote(text: str) -> Remote:
    """``[BIND:]PORT:HOST:HOSTPORT[/udp]`` as ssh's ``-R``: BIND:PORT on the server (an
    address; ``localhost`` is 127.0.0.1), HOST:HOSTPORT as this client sees it."""
    forward = parse_forward(text)
    bind = forward.bind
    if bind.host == "localhost":
        bind = Target("127.0.0.1", bind.port)
    try:
        ipaddress.ip_address(bind.host)
    except ValueError:
        raise TargetError(
            f"the server binds an address: BIND must be an IP address (or localhost), "
            f"got {bind.host!r} in {text!r}"
        ) from None
    return Remote(bind, forward.remote, forward.proto)


class ServiceDialer:
    """The reverse tunnel's far end, from this client: the local service, over TCP."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def dial(self, target: Target, early: ByteStream | None = None) -> TcpStream:
        try:
            async with asyncio.timeout(self.timeout):
                return await open_tcp(target.host, target.port)
        except TimeoutError:
            raise HandshakeError(504, f"{target} did not answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise HandshakeError(502, f"{target}: {describe_os_error(exc)}") from None

    async def dial_udp(self, target: Target) -> UdpSocket:
        """A UDP socket connected to the service (its name resolved here, the first
        address taken: a UDP connect sends nothing, so it can't be refused)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
                )
                address = str(infos[0][4][0])
                return await open_udp(address, target.port)
        except TimeoutError:
            raise HandshakeError(
                504, f"{target}/udp did not resolve within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise HandshakeError(502, f"{target}/udp: {describe_os_error(exc)}") from None


class InboundConnection(LocalEnd):
    """A connection the server accepted on the lease's port, as its data channel brings it."""

    name = "server"
    remote_name = "service"
    kind = "reverse"

    def __init__(self, channel: _Channel, peer: str, forward: str) -> None:
        self.channel = channel
        self.peer = peer
        #: The forward's name in log lines (``reverse 127.0.0.1:9000``).
        self.forward = forward
        self.stream: WebSocketStream | None = None

    def failure_line(self, target: Target, error: HandshakeError) -> str:
        return f"{self.forward}: connection from {self.peer} reset: {error.reason}"

    async def refused(self, error: HandshakeError) -> None:
        """The service can't be reached: the server resets the connection."""
        status = error.status or 502
        await self.channel.answer(Refused(status, error.reason))
        self.channel.refused = True

    async def opened(self, remote: ByteStream) -> ByteStream | None:
        if not await self.channel.answer(Opened()):
            await remote.abort("server went away")
            return None
        self.stream = self.channel.stream()
        return self.stream

    async def abandon(self) -> None:
        await self.channel.close(CloseCode.GOING_AWAY, "client shutting down")


@dataclasses.dataclass(eq=False)
class _Channel:
    """One data channel: a WebSocket attached to the lease."""

    connection: TunnelClientConnection
    keepalive: Keepalive | None
    #: Since it refused a connection: payload sent ahead for it is dropped.
    refused: bool = False

    def stream(self) -> WebSocketStream:
        return WebSocketStream(
            self.connection, eof_markers=True, keepalive=self.keepalive, reusable=True
        )

    async def answer(self, message: Opened | Refused) -> bool:
        try:
            await self.connection.send(encode_control(message))
        except ConnectionClosed:
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        await close_or_drop(self.connection, code, reason)


class _Channels:
    """The data channels of one lease: ``size`` kept idle, more when the server asks."""

    def __init__(self, forward: ReverseForward, lease: str) -> None:
        self.forward = forward
        self.lease = lease
        self.idle: set[_Channel] = set()
        self.opening = 0
        self.closed = False
        # Failed opens in a row, and the timer of the next try after one failed.
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None
        # Data channels refused in a row for reaching a worker without the lease (421).
        self._misdirected = 0
        #: Channels carrying a tunnel now, and the most at once lately (how many
        #: idle ones are kept); the timer that trims the idle ones kept past 2N.
        self.busy = 0
        self.peak = 0
        self._trim_timer: asyncio.TimerHandle | None = None

    def top_up(self, wanted: int = 0) -> None:
        """Open channels until ``size`` (or ``wanted``, at most MAX_OPENING more) are idle
        or on their way."""
        if self.closed or self._retry is not None:
            return
        goal = max(self.forward.channels, min(wanted, MAX_OPENING))
        while len(self.idle) + self.opening < goal:
            self.opening += 1
            self.forward.start(self._open)

    async def _open(self) -> None:
        forward = self.forward
        try:
            connection = await forward.connect()
            await connection.send(encode_control(Attach(self.lease, forward.session)))
        except (HandshakeError, ConnectionClosed) as exc:
            self.opening -= 1
            self._failed(exc)
            return
        self.opening -= 1
        self._failures = 0
        config = forward.dialer.config
        keepalive = keepalive_for(connection, config.ping_interval, config.ping_timeout)
        channel = _Channel(connection, keepalive)
        if self.closed:
            await channel.close(CloseCode.NORMAL, "not needed")
            return
        self.idle.add(channel)
        try:
            await self._serve(channel)
        finally:
            self.idle.discard(channel)
            if keepalive is not None:
                keepalive.stop()

    def _failed(self, exc: Exception) -> None:
        """An open failed (a limit, the network): try again after a backoff, not at once."""
        if self.closed or self._retry is not None:
            return
        self._failures += 1
        # Connections may be waiting for it (within --connect-timeout): never long.
        delay = min(MAX_CHANNEL_RETRY, _delay(self._failures, None))
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        logger.log(
            level,
            "%s: can't open a data channel: %s; retrying in %.1fs",
            self.forward.name,
            exc,
            delay,
        )
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.top_up()

    async def _serve(self, channel: _Channel) -> None:
        """Wait for ``open``, carry its tunnel, wait again; until the channel closes."""
        forward = self.forward
        while True:
            try:
                message = await channel.connection.recv()
            except ConnectionClosed:
                return
            if isinstance(message, bytes):
                if channel.refused:
                    continue  # sent ahead for a connection we refused: never delivered
                await self._violation(channel, "payload while no tunnel is open")
                return
            try:
                control = parse_control(message)
                if isinstance(control, Refused):
                    self.idle.discard(channel)
                    self._refused(control)
                    return
                if not isinstance(control, Open):
                    raise ControlError(f"unexpected {type(control).__name__.lower()}")
            except ControlError as exc:
                await self._violation(channel, str(exc))
                return
            self.idle.discard(channel)
            self._misdirected = 0
            self.top_up()  # a replacement, so the next connection finds one
            channel.refused = False
            self.busy += 1
            self.peak = max(self.peak, self.busy)
            try:
                if forward.remote.proto == "udp":
                    if await forward.carry_flow(channel, control.peer or "-"):
                        return  # the flow closed its WebSocket when it ended
                    self.top_up()
                else:
                    local = InboundConnection(channel, control.peer or "-", forward.name)
                    await forward.tunnel(local).run()
                    self.top_up()  # in case a replacement failed while this one was busy
                    if channel.refused:
                        pass  # the channel is idle again; what went ahead is dropped
                    elif local.stream is None or not local.stream.reusable_now:
                        return
            finally:
                self.busy -= 1
            if self.closed or len(self.idle) >= self._keep():
                await channel.close(CloseCode.NORMAL, "not needed")
                return
            self.idle.add(channel)
            if len(self.idle) > 2 * forward.channels and self._trim_timer is None:
                loop = asyncio.get_running_loop()
                self._trim_timer = loop.call_later(SURPLUS_IDLE, self._trim)

    def _keep(self) -> int:
        """:func:`keep_idle` with ``--reverse-channels``; "lately" ends at each trim."""
        return keep_idle(self.forward.channels, self.peak, self.busy)

    def _trim(self) -> None:
        """Every SURPLUS_IDLE seconds while more than 2N are idle: close those beyond
        what the tunnels since the last trim needed; "lately" starts again."""
        self._trim_timer = None
        if self.closed:
            return
        keep = self._keep()
        while len(self.idle) > keep:
            self.forward.start(functools.partial(self.idle.pop().close, CloseCode.NORMAL, "idle"))
        self.peak = self.busy
        if len(self.idle) > 2 * self.forward.channels:
            self._trim_timer = asyncio.get_running_loop().call_later(SURPLUS_IDLE, self._trim)

    def _refused(self, refused: Refused) -> None:
        """The server refused a data channel: open another one, at once when it reached a
        ``--workers`` process that doesn't hold the lease (421), else after a backoff."""
        if refused.status == 421 and self._misdirected < MAX_MISDIRECTED:
            self._misdirected += 1
            logger.debug("%s: data channel reached another worker; again", self.forward.name)
            self.top_up()
            return
        logger.warning(
            "%s: data channel refused: %d %s", self.forward.name, refused.status, refused.reason
        )
        self._failed(HandshakeError(refused.status, refused.reason))

    async def _violation(self, channel: _Channel, reason: str) -> None:
        logger.warning("%s: the server broke the protocol: %s", self.forward.name, reason)
        await channel.close(CloseCode.PROTOCOL_ERROR, reason[:120])

    async def close(self, reason: str) -> None:
        """Close the idle channels; busy ones end with their tunnel."""
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        await asyncio.gather(
            *(channel.close(CloseCode.NORMAL, reason) for channel in list(self.idle)),
            return_exceptions=True,
        )


class _Unsupported(HandshakeError):
    """The server can't do reverse tunnels: retrying won't help."""


class _Refusal(HandshakeError):
    """The server's in-band refusal of ``listen``; ``retry_after`` when it said when."""

    def __init__(self, status: int, reason: str, retry_after: float | None) -> None:
        super().__init__(status, reason)
        self.retry_after = retry_after


class ReverseForward:
    """One ``-R`` forward: its lease held over a control channel, kept up for good."""

    def __init__(
        self,
        remote: Remote,
        *,
        dialer: WebSocketDialer,
        session: str,
        channels: int,
        settings: TunnelSettings,
        metrics: TunnelHandshakeCounter | None,
        log_failure: Callable[[str], object],
        start: Callable[[Callable[[], Coroutine[Any, Any, object]]], None],
        udp_timeout: float,
        flow_metrics: TunnelMetrics | None = None,
    ) -> None:
        self.remote = remote
        self.udp_timeout = udp_timeout
        self._flow_metrics = flow_metrics
        #: ``.../udp``: the flows running now (ended at once on release).
        self.flows: set[DatagramFlow] = set()
        self.dialer = dialer
        self.session = session
        self.channels = channels
        self.start = start
        self._settings = settings
        self._metrics = metrics
        self._log_failure = log_failure
        self._service = ServiceDialer(dialer.config.connect_timeout)
        #: The port the server gave (once it gave one) and the lease id.
        self.port: int | None = None
        self.lease: str | None = None
        self._channels: _Channels | None = None
        self._control: TunnelClientConnection | None = None
        self.stopping = False
        #: Set when the forward stopped for good on a refusal.
        self.failed: HandshakeError | None = None

    @property
    def name(self) -> str:
        """``reverse BIND:PORT[/udp]``, the port the server gave once it gave one."""
        return f"reverse {self._shown(self.port)}"

    def _shown(self, port: int | None) -> str:
        bound = Target(self.remote.bind.host, self.remote.bind.port if port is None else port)
        return f"{bound}/udp" if self.remote.proto == "udp" else str(bound)

    async def carry_flow(self, channel: _Channel, peer: str) -> bool:
        """A ``.../udp`` flow from ``peer`` announced on ``channel``: a socket to the
        service, ``opened``, then the datagrams until the flow ends; False if it was
        refused (the channel is idle again)."""
        target = self.remote.local
        try:
            udp = await self._service.dial_udp(target)
        except HandshakeError as exc:
            self._log_failure(f"{self.name}: flow from {peer} refused: {exc.reason}")
            await channel.answer(Refused(exc.status or 502, exc.reason))
            channel.refused = True
            return False
        try:
            if not await channel.answer(Opened()):
                return True
            report = FlowReport(new_tunnel_id("c"), peer, f"{target}/udp", kind="reverse")
            flow = DatagramFlow(
                channel.connection, udp.send, report, outbound="down", timeout=self.udp_timeout
            )
            udp.attach(flow)
            if self._flow_metrics is not None:
                self._flow_metrics.flow_opened(report)
            self.flows.add(flow)
            if self.stopping:
                flow.stop("client shutting down")
            try:
                await flow.run(logger)
            finally:
                self.flows.discard(flow)
                if self._flow_metrics is not None:
                    self._flow_metrics.flow_ended(report)
        finally:
            udp.close()
        return True

    def tunnel(self, local: InboundConnection) -> Tunnel:
        return Tunnel(
            self.remote.local,
            local,
            dialer=self._service,
            settings=self._settings,
            log_failure=self._log_failure,
            metrics=self._metrics,
        )

    async def connect(self) -> TunnelClientConnection:
        """A ``wstun.reverse.v1`` WebSocket to the server."""
        try:
            connection = await self.dialer.connect(None, (SUBPROTOCOL_REVERSE,))
        except HandshakeError as exc:
            if exc.status == 400 and exc.reason.startswith("no target"):
                raise _Unsupported(
                    0, f"the server does not support reverse tunnels (it answered: {exc})"
                ) from None
            raise
        if connection.subprotocol != SUBPROTOCOL_REVERSE:
            await connection.close()
            raise _Unsupported(
                0,
                "the server does not support reverse tunnels "
                f"(it did not select {SUBPROTOCOL_REVERSE})",
            )
        return connection

    async def run(self) -> None:
        """Hold the lease until stopped; reconnect after every loss."""
        attempts, lost = 0, None
        while not self.stopping:
            try:
                connection, listening = await self._listen()
            except HandshakeError as exc:
                if _fatal(exc):
                    self.failed = exc
                    logger.error("%s: %s; this forward stops", self.name, exc.outcome)
                    return
                if lost is None:
                    lost = exc.outcome
                    logger.warning("%s: can't listen: %s; retrying", self.name, exc.outcome)
                else:
                    logger.debug("%s: attempt %d: %s", self.name, attempts + 1, exc.outcome)
                attempts += 1
                retry = exc.retry_after if isinstance(exc, _Refusal) else None
                await asyncio.sleep(_delay(attempts, retry))
                continue
            self._up(listening, attempts, lost)
            attempts, lost = 0, None
            why = await self._hold(connection)
            if self.stopping:
                return
            lost = why
            logger.warning("%s lost: %s; retrying", self.name, why)

    def _up(self, listening: Listening, attempts: int, lost: str | None) -> None:
        if self._channels is None or self._channels.lease != listening.lease:
            if self._channels is not None:
                old = self._channels
                self.start(lambda: old.close("lease replaced"))
            self._channels = _Channels(self, listening.lease)
        first = self.port is None
        if first and self.remote.bind.port == 0:
            logger.info("%s: allocated port %d on the server", self.name, listening.port)
        self.port, self.lease = listening.port, listening.lease
        bound = self._shown(listening.port)
        if first:
            logger.info(
                "reverse %s on the server -> %s%s via %s",
                bound,
                self.remote.local,
                "/udp" if self.remote.proto == "udp" else "",
                self.dialer.config.url,
            )
        elif lost is not None:
            tries = f"after {attempts + 1} attempt{'s' if attempts else ''}"
            logger.info("%s back on %s %s", self.name, bound, tries)
        self._channels.top_up()

    async def _listen(self) -> tuple[TunnelClientConnection, Listening]:
        connection = await self.connect()
        port = self.port if self.port is not None else self.remote.bind.port
        proto = "udp" if self.remote.proto == "udp" else None
        listen = Listen(self.remote.bind.host, port, self.session, self.lease, proto)
        timeout = self.dialer.config.connect_timeout
        try:
            await connection.send(encode_control(listen))
            async with asyncio.timeout(timeout):
                answer = await connection.recv()
        except ConnectionClosed as closed:
            raise HandshakeError(0, f"the server closed the control channel ({closed})") from None
        except TimeoutError:
            drop(connection)
            raise HandshakeError(
                0, f"the server did not answer listen within {timeout:g}s"
            ) from None
        try:
            if not isinstance(answer, str):
                raise ControlError("payload instead of an answer to listen")
            control = parse_control(answer)
        except ControlError as exc:
            await close_or_drop(connection, CloseCode.PROTOCOL_ERROR, str(exc))
            raise _Unsupported(
                0, f"the server does not speak wstun's reverse protocol: {exc}"
            ) from None
        if isinstance(control, Refused):
            await close_or_drop(connection, CloseCode.NORMAL, "refused")
            raise _Refusal(control.status, control.reason, control.retry_after)
        if not isinstance(control, Listening):
            await close_or_drop(connection, CloseCode.PROTOCOL_ERROR, "expected listening")
            raise _Unsupported(
                0, f"the server does not speak wstun's reverse protocol (it sent {control})"
            )
        return connection, control

    async def _hold(self, connection: TunnelClientConnection) -> str:
        """Read the control channel until it closes; returns why it did."""
        self._control = connection
        config = self.dialer.config
        keepalive = keepalive_for(connection, config.ping_interval, config.ping_timeout)
        try:
            while True:
                message = await connection.recv()
                try:
                    if not isinstance(message, str):
                        raise ControlError("payload on the control channel")
                    control = parse_control(message)
                    if not isinstance(control, Demand):
                        raise ControlError(f"unexpected {type(control).__name__.lower()}")
                except ControlError as exc:
                    await close_or_drop(connection, CloseCode.PROTOCOL_ERROR, str(exc))
                    return f"the server broke the protocol: {exc}"
                if self._channels is not None:
                    self._channels.top_up(control.waiting)
        except ConnectionClosed as closed:
            if keepalive is not None and keepalive.dead_reason:
                return keepalive.dead_reason
            frame = closed.rcvd
            return f"{frame.code} {frame.reason}".rstrip() if frame else "connection lost"
        finally:
            self._control = None
            if keepalive is not None:
                keepalive.stop()

    async def release(self) -> None:
        """On purpose: free the lease on the server now, close the idle channels, end the
        UDP flows (they have no end of their own to wait for)."""
        self.stopping = True
        for flow in list(self.flows):
            flow.stop("client shutting down")
        control = self._control
        if control is not None:
            with contextlib.suppress(ConnectionClosed):
                await control.send(encode_control(Release()))
            await close_or_drop(control, CloseCode.NORMAL, "client shutting down")
        if self._channels is not None:
            await self._channels.close("client shutting down")


def _fatal(error: HandshakeError) -> bool:
    """Refusals that retrying can't fix: a bad request, no or a wrong token, not allowed."""
    return isinstance(error, _Unsupported) or (
        400 <= error.status < 500 and error.status not in (408, 409, 429)
    )


def _delay(attempt: int, retry_after: float | None) -> float:
    """Seconds before the next try: 1 s doubling to 30 s, jittered; sooner when the
    server said when the port frees up."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (attempt - 1))
    delay = base * random.uniform(0.75, 1.25)
    if retry_after is not None:
        delay = min(delay, retry_after + 0.1)
    return delay
