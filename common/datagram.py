"""UDP flows through a WebSocket (``wstun.udp.v1``): one datagram, one binary message.

A flow is one UDP peer (the client: one source address on a ``-L .../udp``
listener; the server: one connected socket to the target) and one
WebSocket. :class:`DatagramFlow` carries it both ways, the same on both
sides: datagrams from the local socket wait in a bounded queue (datagrams
and bytes) for the WebSocket, and past it they are dropped and counted, as
UDP does under overload, so one flow's flood never holds memory or delays
another flow; datagrams from the WebSocket go to the local socket at once
(dropped and counted when its buffer is full). Boundaries are kept exactly,
empty datagrams included. The flow ends after ``timeout`` seconds without a
datagram either way (both sides close, 1000), or when the WebSocket closes,
and leaves one log line (:class:`FlowReport`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from wstun.common.protocol import CLEAN_CLOSE_CODES, CloseCode
from wstun.common.streams.internals import (
    TunnelConnection,
    recv_waits_on_nothing,
    send_message,
    write_now,
)

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_QUEUE_DATAGRAMS",
    "DEFAULT_UDP_TIMEOUT",
    "LOCAL_BUFFER_LIMIT",
    "MAX_DATAGRAM",
    "REFUSED_HOLD",
    "DatagramFlow",
    "FlowEnd",
    "FlowListener",
    "FlowReport",
    "FlowSource",
    "UdpSocket",
    "bind_udp",
    "open_udp",
    "send_datagram",
    "udp_socket",
]

#: Seconds without a datagram either way after which a flow ends (``--udp-timeout``).
DEFAULT_UDP_TIMEOUT = 30.0
#: Each direction's queue toward the WebSocket: datagrams, and their bytes.
DEFAULT_QUEUE_DATAGRAMS = 512
DEFAULT_QUEUE_BYTES = 1 << 20
#: Largest UDP payload (IPv6; IPv4's is 65,507).
MAX_DATAGRAM = 65527
#: Bytes the local socket may hold unsent before datagrams for it are dropped.
LOCAL_BUFFER_LIMIT = 1 << 20
#: Seconds a source whose flow was refused has its datagrams dropped before trying again.
REFUSED_HOLD = 2.0
#: Datagrams from a connected socket's peer kept before its flow starts.
_EARLY_LIMIT = 64

#: A UDP socket address: ``(host, port)``, or IPv6's four-tuple.
Address = tuple[Any, ...]


def udp_socket(host: str) -> socket.socket:
    """A non-blocking UDP socket of ``host``'s family (``host``: an address). Each side
    keeps the socket itself beside its transport, for empty datagrams."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def send_datagram(
    transport: asyncio.DatagramTransport | None,
    sock: socket.socket | None,
    data: bytes,
    addr: Any = None,
) -> bool:
    """Send one datagram (to ``addr``, or on a connected socket); False when it is
    dropped: the transport is gone, or already holds over LOCAL_BUFFER_LIMIT bytes.

    An empty datagram goes through ``sock`` itself: asyncio's and uvloop's
    ``sendto()`` silently send nothing for ``b""``.
    """
    if transport is None or transport.is_closing():
        return False
    if transport.get_write_buffer_size() > LOCAL_BUFFER_LIMIT:  # type: ignore[attr-defined]
        return False  # full: dropped, as UDP does
    if not data:
        if sock is not None:
            with contextlib.suppress(OSError):  # would block, or an error: dropped
                if addr is None:
                    sock.send(b"")
                else:
                    sock.sendto(b"", addr)
        return True
    transport.sendto(data, addr)
    return True


class FlowEnd:
    """How a flow ended, as its log line says it."""

    TIMEOUT = "timeout"
    CLOSED = "closed"  # the far side closed cleanly, or this side stopped
    ERROR = "error"


@dataclasses.dataclass(eq=False)
class FlowReport:
    """One flow's counts: ``up`` is from the client's application toward the target."""

    id: str
    peer: str
    target: str
    started: float = dataclasses.field(default_factory=time.monotonic)
    up: int = 0
    down: int = 0
    datagrams_up: int = 0
    datagrams_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    #: ICMP port unreachable (or another error) from the local socket: counted, not fatal.
    unreachable: int = 0
    end: str = FlowEnd.CLOSED
    reason: str = ""
    kind: str = "forward"
    #: The server's user for this flow (``--users-file``); None: not said in the line.
    user: str | None = None

    def line(self) -> str:
        duration = time.monotonic() - self.started
        kind = " kind=reverse" if self.kind == "reverse" else ""
        kind += f" user={self.user}" if self.user is not None else ""
        text = (
            f"flow closed id={self.id} proto=udp{kind} peer={self.peer} target={self.target} "
            f"up={self.up} down={self.down} datagrams_up={self.datagrams_up} "
            f"datagrams_down={self.datagrams_down} dropped_up={self.dropped_up} "
            f"dropped_down={self.dropped_down} unreachable={self.unreachable} "
            f"duration={duration:.3f}s end={self.end}"
        )
        if self.reason:
            text += f' reason="{self.reason}"'
        return text


class DatagramFlow:
    """Carries one flow between a local UDP peer and a WebSocket.

    ``send_local(data)`` hands a datagram to the local socket and returns True,
    or returns False without sending when the socket already holds more than
    LOCAL_BUFFER_LIMIT bytes unsent (the datagram is dropped and counted).
    ``outbound`` says which report counts are this side's sending direction:
    ``"up"`` on the client, ``"down"`` on the server.
    """

    def __init__(
        self,
        connection: Connection,
        send_local: Callable[[bytes], bool],
        report: FlowReport,
        *,
        outbound: str,
        timeout: float = DEFAULT_UDP_TIMEOUT,
        queue_datagrams: int = DEFAULT_QUEUE_DATAGRAMS,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.connection = connection
        self.report = report
        self._send_local = send_local
        self._outbound_up = outbound == "up"
        self.timeout = timeout
        self._max_datagrams = queue_datagrams
        self._max_bytes = queue_bytes
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        self._last = time.monotonic()
        self.done = asyncio.Event()
        # Set by stop(): this side ends the flow (a drain), with this reason.
        self._stopping = asyncio.Event()
        self._stop_reason = "shutting down"
        self._stop_code: int = CloseCode.GOING_AWAY
        # While run() carries the flow: datagrams may skip the queue and the pumps.
        self._running = False

    def stop(self, reason: str, code: int = CloseCode.GOING_AWAY) -> None:
        """End the flow now from this side (``code``, 1001 by default, with ``reason``):
        UDP has no end of its own to wait for."""
        self._stop_reason = reason
        self._stop_code = code
        self._stopping.set()

    # Counting, by direction.

    def count_sent(self, data: bytes) -> None:
        """``data`` went on the WebSocket (sent ahead, before this flow started)."""
        self._sent(data)

    def _sent(self, data: bytes) -> None:
        if self._outbound_up:
            self.report.up += len(data)
            self.report.datagrams_up += 1
        else:
            self.report.down += len(data)
            self.report.datagrams_down += 1

    def _received(self, data: bytes) -> None:
        if self._outbound_up:
            self.report.down += len(data)
            self.report.datagrams_down += 1
        else:
            self.report.up += len(data)
            self.report.datagrams_up += 1

    def _drop_outbound(self) -> None:
        if self._outbound_up:
            self.report.dropped_up += 1
        else:
            self.report.dropped_down += 1

    def _drop_inbound(self) -> None:
        if self._outbound_up:
            self.report.dropped_down += 1
        else:
            self.report.dropped_up += 1

    # The local side.

    def from_local(self, data: bytes) -> None:
        """A datagram from the local peer: on the WebSocket at once when nothing is
        queued and the connection takes it, else queued for it, or dropped."""
        self._last = time.monotonic()
        if (
            len(self._queue) >= self._max_datagrams
            or self._queued_bytes + len(data) > self._max_bytes
            or self.done.is_set()
        ):
            self._drop_outbound()
            return
        if self._running and not self._queue and write_now(self.connection, data):
            self._sent(data)
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._ready.set()

    def local_error(self, exc: Exception) -> None:
        """The local socket reported an error (ICMP port unreachable): counted only."""
        self.report.unreachable += 1

    # The WebSocket side.

    async def _pump_out(self) -> None:
        while True:
            await self._ready.wait()
            while self._queue:
                data = self._queue.popleft()
                self._queued_bytes -= len(data)
                await send_message(self.connection, data)
                self._sent(data)
            self._ready.clear()

    def _take_inbound(self, data: bytes) -> bool:
        """The hook for a datagram as its frame is parsed, while ``_pump_in`` waits
        with nothing queued before it: sent on at once, without waking the task."""
        if not recv_waits_on_nothing(self.connection):
            return False
        self._last = time.monotonic()
        if not self._send_local(data):
            self._drop_inbound()
        else:
            self._received(data)
        return True

    async def _pump_in(self) -> None:
        while True:
            message = await self.connection.recv()
            self._last = time.monotonic()
            if isinstance(message, str):
                raise _TextMessage
            if not self._send_local(message):
                self._drop_inbound()
                continue
            self._received(message)

    async def _watch_idle(self) -> None:
        while True:
            remaining = self._last + self.timeout - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    async def run(self, log: logging.Logger) -> FlowReport:
        """Carry the flow until it ends; close the WebSocket; log its line."""
        report = self.report
        connection = self.connection
        if isinstance(connection, TunnelConnection):
            connection.payload_sink = self._take_inbound
        self._running = True
        tasks = [
            asyncio.ensure_future(self._pump_out()),
            asyncio.ensure_future(self._pump_in()),
            asyncio.ensure_future(self._watch_idle()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        code: int = CloseCode.NORMAL
        reason = "udp flow timeout"
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finished = done.pop()
            if finished is tasks[2]:
                report.end = FlowEnd.TIMEOUT
            elif finished is tasks[3]:
                report.end, code, reason = FlowEnd.CLOSED, self._stop_code, self._stop_reason
                if code != CloseCode.GOING_AWAY:
                    report.end, report.reason = FlowEnd.ERROR, reason
            else:
                exc = finished.exception()
                if isinstance(exc, ConnectionClosed):
                    frame = exc.rcvd
                    if frame is not None and frame.code in CLEAN_CLOSE_CODES:
                        report.end, code, reason = FlowEnd.CLOSED, CloseCode.NORMAL, ""
                    elif frame is not None and frame.code == CloseCode.GOING_AWAY:
                        # The far side shut down: for a flow, an end like any other.
                        report.end, code, reason = FlowEnd.CLOSED, CloseCode.GOING_AWAY, ""
                        report.reason = f"peer is going away ({frame.reason})".replace(" ()", "")
                    else:
                        report.end = FlowEnd.ERROR
                        report.reason = (
                            f"peer closed the WebSocket with {frame.code} ({frame.reason})"
                            if frame is not None
                            else "WebSocket lost"
                        )
                elif isinstance(exc, _TextMessage):
                    report.end, report.reason = FlowEnd.ERROR, "text message on a UDP flow"
                    code, reason = CloseCode.UNSUPPORTED_DATA, "text message on a UDP flow"
                elif exc is not None:
                    report.end, report.reason = FlowEnd.ERROR, str(exc) or type(exc).__name__
                    code, reason = CloseCode.INTERNAL_ERROR, report.reason[:120]
        except asyncio.CancelledError:
            report.end, code, reason = FlowEnd.CLOSED, CloseCode.GOING_AWAY, "shutting down"
            raise
        finally:
            self._running = False
            if isinstance(connection, TunnelConnection):
                connection.payload_sink = None
            self.done.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(code, reason), 2.0)
            log.info("%s", report.line())
        return report


class _TextMessage(Exception):
    """A text message on a datagram WebSocket: not a datagram."""


class UdpSocket(asyncio.DatagramProtocol):
    """A connected UDP socket whose datagrams go to the flow it is given: the server's
    socket to a ``-L .../udp`` target, the client's to a ``-R .../udp`` service."""

    def __init__(self) -> None:
        self.endpoint: asyncio.DatagramTransport | None = None
        #: The socket itself: empty datagrams go through it (asyncio's and uvloop's
        #: sendto() silently drop them).
        self.sock: socket.socket | None = None
        self.flow: DatagramFlow | None = None
        self._early: collections.deque[bytes] = collections.deque(maxlen=_EARLY_LIMIT)
        self._early_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.endpoint = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.flow is not None:
            self.flow.from_local(data)
        else:
            self._early.append(data)

    def error_received(self, exc: Exception) -> None:
        if self.flow is not None:
            self.flow.local_error(exc)
        else:
            self._early_errors += 1

    def attach(self, flow: DatagramFlow) -> None:
        """From now on datagrams go to ``flow``; what came before goes first."""
        self.flow = flow
        while self._early:
            flow.from_local(self._early.popleft())
        for _ in range(self._early_errors):
            flow.local_error(ConnectionRefusedError())

    def send(self, data: bytes) -> bool:
        """Send one datagram to the peer; False if dropped (the socket's buffer is full)."""
        return send_datagram(self.endpoint, self.sock, data)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()


async def open_udp(address: str, port: int) -> UdpSocket:
    """A UDP socket connected to ``address``:``port`` (an address, never a name)."""
    loop = asyncio.get_running_loop()
    sock = udp_socket(address)
    try:
        sock.connect((address, port))
        _, protocol = await loop.create_datagram_endpoint(UdpSocket, sock=sock)
    except BaseException:
        sock.close()
        raise
    protocol.sock = sock
    return protocol


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host``:``port`` (an address; never
    SO_REUSEPORT)."""
    sock = udp_socket(host)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class FlowSource:
    """One source address on a listener of flows: its datagrams while its flow's
    WebSocket is on its way (a bounded queue), then the flow's."""

    def __init__(self, listener: FlowListener, source: Address, report: FlowReport) -> None:
        self.listener = listener
        self.source = source
        self.report = report
        self.flow: DatagramFlow | None = None
        #: Datagrams that came before the flow, oldest first.
        self.early: list[bytes] = []
        self._early_bytes = 0
        #: Set when refused: until then the source's datagrams are dropped.
        self.refused_until: float | None = None

    def from_local(self, data: bytes) -> None:
        if self.flow is not None:
            self.flow.from_local(data)
        elif self.refused_until is not None:
            self.report.dropped_up += 1
        elif (
            len(self.early) < DEFAULT_QUEUE_DATAGRAMS
            and self._early_bytes + len(data) <= DEFAULT_QUEUE_BYTES
        ):
            self.early.append(data)
            self._early_bytes += len(data)
        else:
            self.report.dropped_up += 1

    def local_error(self, exc: Exception) -> None:
        if self.flow is not None:
            self.flow.local_error(exc)

    def send_local(self, data: bytes) -> bool:
        """A datagram back to exactly this source."""
        return self.listener.send(data, self.source)

    def start(
        self, connection: Connection, *, outbound: str, timeout: float, sent_ahead: int = 0
    ) -> DatagramFlow:
        """The flow over ``connection``; the first ``sent_ahead`` early datagrams already
        went on it, the rest are queued."""
        flow = DatagramFlow(
            connection, self.send_local, self.report, outbound=outbound, timeout=timeout
        )
        for data in self.early[:sent_ahead]:
            flow.count_sent(data)
        for data in self.early[sent_ahead:]:
            flow.from_local(data)
        self.early.clear()
        self._early_bytes = 0
        self.flow = flow
        return flow

    async def hold_refused(self) -> None:
        """Refused: drop this source's datagrams for REFUSED_HOLD seconds, then forget it
        (its next datagram tries again)."""
        self.early.clear()
        self._early_bytes = 0
        self.refused_until = time.monotonic() + REFUSED_HOLD
        try:
            await asyncio.sleep(REFUSED_HOLD)
        finally:
            self.listener.forget(self)


class FlowListener(asyncio.DatagramProtocol):
    """A UDP listener of flows, one per source address; at most ``max_flows`` at once.

    ``new_source(listener, address)`` makes a source's :class:`FlowSource` and starts
    whatever opens its flow; ``name`` says which listener in ``log``'s lines.
    """

    def __init__(
        self,
        name: str,
        *,
        max_flows: int,
        new_source: Callable[[FlowListener, Address], FlowSource],
        log_failure: Callable[[str], object],
        log: logging.Logger,
    ) -> None:
        self.name = name
        self.log = log
        self.max_flows = max_flows
        self._new_source = new_source
        self.log_failure = log_failure
        self.endpoint: asyncio.DatagramTransport | None = None
        #: The socket itself, for empty datagrams (sendto() of b"" sends nothing).
        self.sock: socket.socket | None = None
        self.sources: dict[Address, FlowSource] = {}
        #: Datagrams dropped because ``max_flows`` flows were open.
        self.dropped_flows = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.endpoint = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        source = self.sources.get(addr)
        if source is None:
            if len(self.sources) >= self.max_flows:
                self.dropped_flows += 1
                self.log_failure(
                    f"{self.name}: {self.max_flows} UDP flows open, the limit; "
                    "dropping datagrams from new sources"
                )
                return
            source = self._new_source(self, addr)
            self.sources[addr] = source
        source.from_local(data)

    def error_received(self, exc: Exception) -> None:
        """An error on the listening socket (an ICMP for a reply we sent): counted by no
        one flow in particular; flows go on."""
        self.log.debug("%s: %s", self.name, exc)

    def send(self, data: bytes, addr: Address) -> bool:
        return send_datagram(self.endpoint, self.sock, data, addr)

    def forget(self, source: FlowSource) -> None:
        if self.sources.get(source.source) is source:
            del self.sources[source.source]

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
