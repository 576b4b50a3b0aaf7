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

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from wstun.client.forward import Forward
from wstun.common.datagram import Address, FlowListener, FlowReport, FlowSource
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


class _Flow(FlowSource):
    """One source address's flow, over a WebSocket of its own to the server."""

    listener: UdpListener

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
        flow = self.start(connection, outbound="up", timeout=listener.timeout)
        if listener.metrics is not None:
            listener.metrics.flow_opened(self.report)
        try:
            await flow.run(logger)
        finally:
            if listener.metrics is not None:
                listener.metrics.flow_ended(self.report)
            listener.forget(self)

    async def _refused(self, error: HandshakeError) -> None:
        listener = self.listener
        if listener.metrics is not None:
            listener.metrics.handshake_failed(error.status)
        listener.log_failure(f"udp flow to {listener.forward.remote} {error.outcome}")
        await self.hold_refused()


class UdpListener(FlowListener):
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
        super().__init__(
            f"-L {forward}",
            max_flows=max_flows,
            new_source=self._source,
            log_failure=log_failure,
            log=logger,
        )
        self.forward = forward
        self.dialer = dialer
        self.timeout = timeout
        self.metrics = metrics
        self._start = start

    def _source(self, listener: FlowListener, address: Address) -> FlowSource:
        report = FlowReport(new_tunnel_id("c"), format_peer(address), f"{self.forward.remote}/udp")
        flow = _Flow(self, address, report)
        self._start(flow.run)
        return flow
