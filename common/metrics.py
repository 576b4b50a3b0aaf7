"""Prometheus metrics for either side, and the small HTTP endpoint serving them.

Each :class:`TunnelMetrics` owns its own ``CollectorRegistry`` (never the
process-global one), so several servers or clients in one process, and
tests, never see each other's numbers. Byte counters take the payload
counts from the tunnel's :class:`~common.report.TunnelReport`, the same
numbers the per-tunnel log line shows: WebSocket framing and EOF markers
are never counted.

With ``wstun-server --workers N`` the workers' metrics are prometheus-client's
multiprocess kind (:func:`share_between_processes`, before the fork): each
worker writes its values to files of its own, and the one worker that serves
``/metrics`` adds up all of them (``MultiProcessCollector``); gauges are
``livesum``, the sum over the workers alive.

Metrics are served on their own listener (``--metrics-listen``), not on
the tunnel port: the tunnel port faces the proxy and the internet, the
metrics port stays on a private address for the scraper.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, values
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from wstun.common.datagram import FlowEnd, FlowReport
from wstun.common.protocol import Target, format_target
from wstun.common.report import TunnelEnd, TunnelReport

__all__ = ["METRICS_PATH", "TunnelMetrics", "serve_metrics", "share_between_processes"]

METRICS_PATH = "/metrics"

#: The ``kind`` label of tunnel metrics: -L, -D and -W tunnels, and -R's.
KINDS = ("forward", "reverse")


def share_between_processes(path: str) -> None:
    """Metrics made from now on, here and in the processes forked from here, keep
    their values in files under ``path``, one set per process, for
    :meth:`TunnelMetrics.expose_all_processes` to add up."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class TunnelMetrics:
    """Counters for one side (``side`` is ``server`` or ``client``).

    - ``wstun_<side>_tunnels_opened_total{kind,proto}``: tunnels (``proto="tcp"``)
      and UDP flows (``"udp"``) that started relaying
    - ``wstun_<side>_tunnels_active{kind,proto}``: relaying right now
    - ``wstun_<side>_tunnels_ended_total{kind,proto,end}``: ``eof``, ``error``,
      ``idle-timeout`` (TCP); ``timeout``, ``closed``, ``error`` (UDP)
    - ``wstun_<side>_datagrams_total{proto,direction}``,
      ``wstun_<side>_datagrams_dropped_total{proto,direction}``: UDP datagrams
      relayed, and dropped under overload
    - ``wstun_<side>_payload_bytes_total{kind,proto,direction}``: ``up`` (the application
      that opened the connection to the far end: client application to target
      for ``forward``, the application on the server's port to the client's
      service for ``reverse``) and ``down``, payload only
    - ``wstun_<side>_handshake_failures_total{status}``: refused handshakes by
      HTTP status (on the client, ``0`` when no HTTP answer came)

    The server adds its own (``server/metrics.py``).
    """

    def __init__(self, side: str) -> None:
        self.side = side
        self.registry = CollectorRegistry(auto_describe=True)
        # What /metrics shows: this registry, or every process's (expose_all_processes).
        self._exposed = self.registry
        prefix = f"wstun_{side}"
        reg = self.registry
        labels = ["kind", "proto"]
        self.opened = Counter(
            f"{prefix}_tunnels_opened", "Tunnels (and UDP flows) opened.", labels, registry=reg
        )
        self.active = Gauge(
            f"{prefix}_tunnels_active",
            "Tunnels open now.",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.ended = Counter(
            f"{prefix}_tunnels_ended", "Tunnels ended, by how.", [*labels, "end"], registry=reg
        )
        self.payload = Counter(
            f"{prefix}_payload_bytes",
            "Payload bytes relayed (framing excluded); up = from the application that "
            "opened the connection.",
            [*labels, "direction"],
            registry=reg,
        )
        self.datagrams = Counter(
            f"{prefix}_datagrams",
            "UDP datagrams relayed; up = from the client's application.",
            ["proto", "direction"],
            registry=reg,
        )
        self.dropped = Counter(
            f"{prefix}_datagrams_dropped",
            "UDP datagrams dropped because a queue was full.",
            ["proto", "direction"],
            registry=reg,
        )
        self.handshake_failures = Counter(
            f"{prefix}_handshake_failures",
            "Refused tunnel handshakes, by HTTP status (0: no HTTP answer).",
            ["status"],
            registry=reg,
        )
        ends = {
            "tcp": [end.value for end in (TunnelEnd.EOF, TunnelEnd.ERROR, TunnelEnd.IDLE_TIMEOUT)],
            "udp": [FlowEnd.TIMEOUT, FlowEnd.CLOSED, FlowEnd.ERROR],
        }
        for kind in KINDS:
            for proto in ("tcp", "udp"):
                self.opened.labels(kind, proto)
                self.active.labels(kind, proto)
                for direction in ("up", "down"):
                    self.payload.labels(kind, proto, direction)
                for end in ends[proto]:
                    self.ended.labels(kind, proto, end)
        for direction in ("up", "down"):
            self.datagrams.labels("udp", direction)
            self.dropped.labels("udp", direction)
        # A TCP tunnel's series, looked up once rather than by label on every
        # tunnel: (opened, active, ended by end, up, down) for each kind.
        self._tcp = {
            kind: (
                self.opened.labels(kind, "tcp"),
                self.active.labels(kind, "tcp"),
                {end: self.ended.labels(kind, "tcp", end) for end in ends["tcp"]},
                self.payload.labels(kind, "tcp", "up"),
                self.payload.labels(kind, "tcp", "down"),
            )
            for kind in KINDS
        }

    def tunnel_opened(self, report: TunnelReport) -> None:
        opened, active, _, _, _ = self._tcp[report.kind]
        opened.inc()
        active.inc()

    def tunnel_ended(self, report: TunnelReport) -> None:
        """Count a finished tunnel: its end and its exact payload counts."""
        _, active, ended, up, down = self._tcp[report.kind]
        active.dec()
        end = report.end.value
        (ended[end] if end in ended else self.ended.labels(report.kind, "tcp", end)).inc()
        up.inc(report.up)
        down.inc(report.down)

    def flow_opened(self, report: FlowReport) -> None:
        self.opened.labels(report.kind, "udp").inc()
        self.active.labels(report.kind, "udp").inc()

    def flow_ended(self, report: FlowReport) -> None:
        """Count a finished UDP flow: its end, payload, datagrams and drops each way."""
        self.active.labels(report.kind, "udp").dec()
        self.ended.labels(report.kind, "udp", report.end).inc()
        self.payload.labels(report.kind, "udp", "up").inc(report.up)
        self.payload.labels(report.kind, "udp", "down").inc(report.down)
        self.datagrams.labels("udp", "up").inc(report.datagrams_up)
        self.datagrams.labels("udp", "down").inc(report.datagrams_down)
        self.dropped.labels("udp", "up").inc(report.dropped_up)
        self.dropped.labels("udp", "down").inc(report.dropped_down)

    def handshake_failed(self, status: int) -> None:
        self.handshake_failures.labels(str(status)).inc()

    def expose_all_processes(self, path: str) -> None:
        """Serve the sum of every process's metrics under ``path`` (see
        :func:`share_between_processes`) rather than this process's alone."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        self._exposed = registry

    def render(self) -> bytes:
        """The text exposition format, as served on ``/metrics``."""
        return generate_latest(self._exposed)


def _metrics_response(metrics: TunnelMetrics, request: Request) -> Response:
    if request.path.split("?", 1)[0] != METRICS_PATH:
        body = f"not found; metrics are at {METRICS_PATH}\n".encode()
        status, reason, content_type = 404, "Not Found", "text/plain; charset=utf-8"
    else:
        body = metrics.render()
        status, reason, content_type = 200, "OK", CONTENT_TYPE_LATEST
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status, reason, headers, body)


async def serve_metrics(metrics: TunnelMetrics, listen: Target, log: logging.Logger) -> Server:
    """Serve ``GET /metrics`` on ``listen``; logs ``metrics on http://HOST:PORT/metrics``."""

    def process_request(connection: ServerConnection, request: Request) -> Response:
        return _metrics_response(metrics, request)

    async def never_upgraded(connection: ServerConnection) -> None:  # pragma: no cover
        await connection.close()

    server = await serve(
        never_upgraded,
        listen.host,
        listen.port,
        process_request=process_request,
        server_header=None,
    )
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        log.info("metrics on http://%s%s", format_target(host, port), METRICS_PATH)
    return server
