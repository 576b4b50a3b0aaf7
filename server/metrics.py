"""The server's metrics: the shared tunnel counters plus dial time and address source."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from wstun.common.datagram import FlowReport
from wstun.common.metrics import TunnelMetrics
from wstun.common.report import TunnelReport
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
    - ``wstun_server_config_reloads_total{result}``: reloads of the users and
      policy files (SIGHUP, ``--reload-interval``): ``ok`` or ``error``.
    - with ``--users-file``, ``wstun_server_user_tunnels_opened_total``,
      ``..._active``, ``..._ended_total`` and
      ``wstun_server_user_payload_bytes_total{direction}``, all labelled ``user``
      (bounded by the users in the file; ``-`` for the ``--token-file`` user).
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
            multiprocess_mode="livesum",
        )
        self.reloads = Counter(
            "wstun_server_config_reloads",
            "Reloads of the users and policy files, by result.",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.user_opened = Counter(
            "wstun_server_user_tunnels_opened",
            "Tunnels and UDP flows opened, by user.",
            ["user"],
            registry=self.registry,
        )
        self.user_active = Gauge(
            "wstun_server_user_tunnels_active",
            "Tunnels and UDP flows open now, by user.",
            ["user"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.user_ended = Counter(
            "wstun_server_user_tunnels_ended",
            "Tunnels and UDP flows ended, by user.",
            ["user"],
            registry=self.registry,
        )
        self.user_payload = Counter(
            "wstun_server_user_payload_bytes",
            "Payload bytes, by user and direction.",
            ["user", "direction"],
            registry=self.registry,
        )

    def tunnel_opened(self, report: TunnelReport) -> None:
        super().tunnel_opened(report)
        self._user_opened(report.user)

    def tunnel_ended(self, report: TunnelReport) -> None:
        super().tunnel_ended(report)
        self._user_ended(report.user, report.up, report.down)

    def flow_opened(self, report: FlowReport) -> None:
        super().flow_opened(report)
        self._user_opened(report.user)

    def flow_ended(self, report: FlowReport) -> None:
        super().flow_ended(report)
        self._user_ended(report.user, report.up, report.down)

    def _user_opened(self, user: str | None) -> None:
        if user is not None:
            self.user_opened.labels(user).inc()
            self.user_active.labels(user).inc()

    def _user_ended(self, user: str | None, up: int, down: int) -> None:
        if user is not None:
            self.user_active.labels(user).dec()
            self.user_ended.labels(user).inc()
            self.user_payload.labels(user, "up").inc(up)
            self.user_payload.labels(user, "down").inc(down)
