"""UDP forwarding (``-L [BIND:]PORT:HOST:HOSTPORT/udp``): a listener of flows.

Each source address that sends to the listener is one flow, carried by a
WebSocket of its own (``wstun.udp.v1``, the target in the URL, checked by
the server under its ``/udp`` rules before the upgrade); replies go back to
exactly that source. Datagrams that arrive while the flow's WebSocket is
being opened wait in the flow's bounded queue. A flow ends after
``--udp-timeout`` seconds without a datagram either way; at most
``--max-udp-flows`` flows per listener are open at once, and datagrams from
further sources are dropped and counted. When the server refuses, the
failure is logged once per kind (FailureLog) and the source's datagrams are
dropped for a moment rather than opening a WebSocket for each one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from wstun.client.forward import Forward
from wstun.common.datagram import (
    DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_DATAGRAMS,
    DatagramFlow,
    FlowReport,
    send_datagram,
    udp_socket,
)
from wstun.common.errors import HandshakeError
from wstun.common.protocol import SUBPROTOCOL_UDP
from wstun.common.report import format_peer, new_tunnel_id

if TYPE_CHECKING:
    from wstun.client.dialer import WebSocketDialer
    from wstun.common.metrics import TunnelMetrics

__all__ = ["DEFAULT_MAX_UDP_FLOWS", "UdpListener"]

logger = logging.getLogger("wstun.client")

#: Flows open at once per UDP listener (``--max-udp-flows``).
DEFAULT_MAX_UDP_FLOWS = 1024
#: Seconds a source whose flow was refused has its datagrams dropped before trying again.
REFUSED_HOLD = 2.0

Address = tuple[Any, ...]


class _Flow:
    """One source address's flow: its WebSocket once open, its queue meanwhile."""

    def __init__(self, listener: UdpListener, source: Address) -> None:
        self.listener = listener
        self.source = source
        peer = format_peer(source)
        self.report = FlowReport(new_tunnel_id("c"), peer, f"{listener.forward.remote}/udp")
        self.flow: DatagramFlow | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        #: Set when refused: until then the source's datagrams are dropped.
        self.refused_until: float | None = None

    def from_local(self, data: bytes) -> None:
        if self.flow is not None:
            self.flow.from_local(data)
        elif self.refused_until is not None:
            self.report.dropped_up += 1
        elif (
            len(self._early) < DEFAULT_QUEUE_DATAGRAMS
            and self._early_bytes + len(data) <= DEFAULT_QUEUE_BYTES
        ):
            self._early.append(data)
            self._early_bytes += len(data)
        else:
            self.report.dropped_up += 1

    def local_error(self, exc: Exception) -> None:
        if self.flow is not None:
            self.flow.local_error(exc)

    async def run(self) -> None:
        listener = self.listener
        target = listener.forward.remote
        try:
            connection = await listener.dialer.connect(target, (SUBPROTOCOL_UDP,))
        except HandshakeError as exc:
            await self._refused(exc)
            return
        if connection.subprotocol != SUBPROTOCOL_UDP:
            await connection.close()
            await self._refused(
                HandshakeError(
                    0, f"the server does not support UDP (it did not select {SUBPROTOCOL_UDP})"
                )
            )
            return
        flow = DatagramFlow(
            connection,
            self._send_local,
            self.report,
            outbound="up",
            timeout=listener.timeout,
        )
        self.flow = flow
        for data in self._early:
            flow.from_local(data)
        self._early.clear()
        if listener.metrics is not None:
            listener.metrics.flow_opened(self.report)
        try:
            await flow.run(logger)
        finally:
            if listener.metrics is not None:
                listener.metrics.flow_ended(self.report)
            listener.forget(self)

    def _send_local(self, data: bytes) -> bool:
        return self.listener.send(data, self.source)

    async def _refused(self, error: HandshakeError) -> None:
        listener = self.listener
        if listener.metrics is not None:
            listener.metrics.handshake_failed(error.status)
        listener.log_failure(f"udp flow to {listener.forward.remote} {error.outcome}")
        self._early.clear()
        self.refused_until = time.monotonic() + REFUSED_HOLD
        await asyncio.sleep(REFUSED_HOLD)
        listener.forget(self)


class UdpListener(asyncio.DatagramProtocol):
    """A ``-L .../udp`` listener: one flow per source address."""

    def __init__(
        self,
        forward: Forward,
        *,
        dialer: WebSocketDialer,
        timeout: float,
        max_flows: int,
        log_failure: Callable[[str], object],
        start: Callable[[Callable[[], Coroutine[Any, Any, object]]], None],
        metrics: TunnelMetrics | None = None,
    ) -> None:
        self.forward = forward
        self.dialer = dialer
        self.timeout = timeout
        self.max_flows = max_flows
        self.log_failure = log_failure
        self.metrics = metrics
        self._start = start
        self.endpoint: asyncio.DatagramTransport | None = None
        #: The socket itself, for empty datagrams (sendto() of b"" sends nothing).
        self.sock: socket.socket | None = None
        self.flows: dict[Address, _Flow] = {}
        #: Datagrams dropped because ``max_flows`` flows were open.
        self.dropped_flows = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.endpoint = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.dropped_flows += 1
                self.log_failure(
                    f"-L {self.forward}: {self.max_flows} UDP flows open, the limit; "
                    "dropping datagrams from new sources"
                )
                return
            flow = _Flow(self, addr)
            self.flows[addr] = flow
            self._start(flow.run)
        flow.from_local(data)

    def error_received(self, exc: Exception) -> None:
        """An error on the listening socket (an ICMP for a reply we sent): counted by no
        one flow in particular; flows go on."""
        logger.debug("-L %s: %s", self.forward, exc)

    def send(self, data: bytes, addr: Address) -> bool:
        return send_datagram(self.endpoint, self.sock, data, addr)

    def forget(self, flow: _Flow) -> None:
        if self.flows.get(flow.source) is flow:
            del self.flows[flow.source]

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host``:``port`` (an address)."""
    sock = udp_socket(host)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
