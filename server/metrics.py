"""The server's metrics: the shared tunnel counters plus dial time and address source."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from wstun.common.metrics import TunnelMetrics
from wstun.server.forwarded import Source

__all__ = ["DIAL_BUCKETS", "ServerMetrics"]

#: Target dial times, seconds: loopback and LAN up to slow WAN and timeouts.
DIAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics(TunnelMetrics):
    """:class:`TunnelMetrics` for ``server``, plus

    - ``wstun_server_target_dial_seconds``: histogram of target dials,
      successful or not;
    - ``wstun_server_client_address_total{source}``: handshakes by where the
      client address came from: ``peer`` (the TCP peer itself),
      ``x-forwarded-for`` or ``x-real-ip`` (stated by a trusted proxy).
      Addresses themselves are in the logs, not in labels (unbounded).
    - ``wstun_server_reverse_listeners_active``: ports held for reverse tunnels
      (leases, in their grace too).
    """

    def __init__(self) -> None:
        super().__init__("server")
        self.dial_seconds = Histogram(
            "wstun_server_target_dial_seconds",
            "Time to connect to the target, successful or not.",
            buckets=DIAL_BUCKETS,
            registry=self.registry,
        )
        self.client_address = Counter(
            "wstun_server_client_address",
            "Handshakes by where the client address came from.",
            ["source"],
            registry=self.registry,
        )
        for source in Source:
            self.client_address.labels(source.value)
        self.reverse_listeners = Gauge(
            "wstun_server_reverse_listeners_active",
            "Ports held for reverse tunnels.",
            registry=self.registry,
        )
