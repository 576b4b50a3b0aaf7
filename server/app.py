"""The server: a websockets endpoint that checks, dials the target, then relays.

Every check happens in ``process_request``, before the 101 answer: the
request's (:class:`RequestChecks`: path, token, target named), a slot
(:class:`ConnectionLimits`), and the target's (:class:`TargetDialer`:
policy, resolution, the dial itself). A refusal is a plain HTTP response
with a one-line reason; only a tunnel that can really work is upgraded.
After the 101, :meth:`TunnelServer.handler` relays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wstun.common import __version__
from wstun.common.datagram import DatagramFlow, FlowReport
from wstun.common.metrics import serve_metrics
from wstun.common.protocol import (
    CHECK_HEADER,
    SUBPROTOCOL,
    SUBPROTOCOL_REVERSE,
    SUBPROTOCOL_UDP,
    SUBPROTOCOL_V2,
    CloseCode,
    Failure,
    HandshakeRejection,
    Target,
    format_target,
    is_health_path,
    offers,
)
from wstun.common.report import TunnelReport, format_peer, new_tunnel_id, relay_and_report
from wstun.common.runtime import serve_until
from wstun.common.streams import (
    WS_OPTIONS,
    ByteStream,
    TcpStream,
    WebSocketStream,
)
from wstun.common.streams.internals import lost_waiter
from wstun.server.channel import ServerChannel
from wstun.server.config import ServerConfig
from wstun.server.connection import HandshakeConnection, connection_class
from wstun.server.forwarded import FORWARDED_FOR_HEADER, REAL_IP_HEADER
from wstun.server.handshake import RequestChecks
from wstun.server.limits import ConnectionLimits, client_host
from wstun.server.metrics import ServerMetrics
from wstun.server.reverse import ReverseService
from wstun.server.targets import Resolver, TargetDialer, resolve

__all__ = ["TunnelServer", "run_server"]

logger = logging.getLogger("wstun.server")

#: The answers to a client's startup check (protocol.CHECK_HEADER on the health path).
PROBE_OK = "ok: no token needed\n"
PROBE_OK_TOKEN = "ok: token accepted\n"

#: Seconds between two log lines about TLS handshakes from one source on a plain port.
TLS_HINT_INTERVAL = 60.0


class TunnelServer:
    """Accepts WebSocket upgrades and turns each into a relayed tunnel."""

    def __init__(self, config: ServerConfig, *, resolver: Resolver = resolve) -> None:
        self.config = config
        self._server: Server | None = None
        self._metrics_server: Server | None = None
        self.metrics = ServerMetrics()
        # Before the target: path, upgrade, request, query, token.
        self.checks = RequestChecks(config.path, config.token, config.default_target)
        # The target: policy, resolution, dial.
        self.targets = TargetDialer(
            config.policy,
            config.connect_timeout,
            resolver=resolver,
            observe_dial=self.metrics.dial_seconds.observe,
        )
        self.limits = ConnectionLimits(config.max_connections, config.max_per_client)
        # The wstun.v2 WebSockets open now (server/channel.py), and the UDP flows.
        self._channels: set[ServerChannel] = set()
        self._flows: set[DatagramFlow] = set()
        # Reverse tunnels' leases, listeners and data channels (server/reverse.py).
        self.reverse = ReverseService(
            policy=config.policy,
            grace=config.reverse_grace,
            max_leases=config.reverse_max_leases,
            max_pending=config.reverse_max_pending,
            connect_timeout=config.connect_timeout,
            read_size=config.read_size,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            relay=self._relay_reverse,
            carry_flow=self._carry_flow,
            udp_timeout=config.udp_timeout,
            refuse=self._refused,
            draining=lambda: self.draining,
            on_change=self.metrics.reverse_listeners.set,
            shared_port=config.reuse_port,
        )
        # When each source's TLS handshake on the plain port was last logged.
        self._tls_hints: dict[str, float] = {}
        # Set on SIGTERM: new tunnels get 503, /healthz says 503, open ones go on.
        self.draining = False

    # Handshake: every check, then the dial, before 101.

    def _client_peer(self, connection: HandshakeConnection, request: Request) -> str:
        """The real client's address as ``host:port``, for logs and limits.

        Everything that logs or limits by client address goes through here.
        Forwarding headers count only from ``--trusted-proxy`` peers
        (rules in ``server/forwarded.py``).
        """
        peer = connection.remote_address
        if not self.config.trusted_proxies or not isinstance(peer, tuple):
            self.metrics.client_address.labels("peer").inc()
            return format_peer(peer)
        client = self.config.trusted_proxies.client(
            str(peer[0]),
            int(peer[1]),
            request.headers.get_all(FORWARDED_FOR_HEADER),
            request.headers.get(REAL_IP_HEADER),
        )
        self.metrics.client_address.labels(client.source.value).inc()
        return str(client)

    def _tls_on_plain_port(self, connection: HandshakeConnection) -> None:
        """A TLS ClientHello on the plain port: say what to do, once per source a minute."""
        host = client_host(format_peer(connection.remote_address))
        now = time.monotonic()
        if now - self._tls_hints.get(host, -TLS_HINT_INTERVAL) < TLS_HINT_INTERVAL:
            return
        if len(self._tls_hints) > 1000:  # bounded: forget the oldest sources
            self._tls_hints = dict(sorted(self._tls_hints.items(), key=lambda i: i[1])[-500:])
        self._tls_hints[host] = now
        logger.warning(
            "TLS handshake from %s on this plain ws:// port (no answer sent): the client "
            "must use ws://, or give this server --tls-cert/--tls-key, or put a TLS proxy "
            "in front",
            host,
        )

    def _refused(self, connection: HandshakeConnection, rejection: HandshakeRejection) -> None:
        """Count and log a refusal, over HTTP or in-band alike."""
        self.metrics.handshake_failed(rejection.status)
        detail = f" ({rejection.detail})" if rejection.detail else ""
        logger.info(
            "rejected peer=%s status=%d reason=%s%s",
            connection.client_peer,
            rejection.status,
            rejection.reason,
            detail,
        )

    def _reject(self, connection: HandshakeConnection, rejection: HandshakeRejection) -> Response:
        self._refused(connection, rejection)
        response = connection.respond(rejection.status, rejection.body())
        if rejection.failure is Failure.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="wstun"'
        return response

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        assert isinstance(connection, HandshakeConnection)
        connection.client_peer = self._client_peer(connection, request)
        url = urlsplit(request.path)
        if is_health_path(url.path, self.config.path) and "Upgrade" not in request.headers:
            if self.draining:
                return connection.respond(503, "draining\n")
            if CHECK_HEADER in request.headers:
                return self._probe(connection, request)
            return connection.respond(200, "ok\n")
        if self.draining:
            return self._reject(
                connection, HandshakeRejection(Failure.UNAVAILABLE, "server is shutting down")
            )
        checked = self.checks.check(request)
        if isinstance(checked, HandshakeRejection):
            return self._reject(connection, checked)
        client = client_host(connection.client_peer)
        refused = self.limits.acquire(client)
        if refused is not None:
            return self._reject(connection, refused)
        lost_waiter(connection).add_done_callback(lambda _: self.limits.release(client))
        if checked is None:
            return None  # wstun.v2 without a target: tunnels will be opened in-band
        if offers(request.headers.get_all("Sec-WebSocket-Protocol"), SUBPROTOCOL_UDP):
            udp = await self.targets.dial_udp(checked)
            if isinstance(udp, HandshakeRejection):
                return self._reject(connection, udp)
            connection.udp_socket, connection.target = udp, checked
            return None
        dialled = await self.targets.dial(checked)
        if isinstance(dialled, HandshakeRejection):
            return self._reject(connection, dialled)
        connection.target_stream = dialled
        connection.target = checked
        return None

    def _probe(self, connection: HandshakeConnection, request: Request) -> Response:
        """A client's check at startup (the health path with CHECK_HEADER): 200 when
        the token is the server's (or none is needed), else the 401 a tunnel would get."""
        rejection = self.checks.check_token(request.headers)
        if rejection is not None:
            return self._reject(connection, rejection)
        logger.debug("probe peer=%s ok", connection.client_peer)
        return connection.respond(200, PROBE_OK_TOKEN if self.config.token else PROBE_OK)

    # After 101: the tunnel itself.

    async def handler(self, connection: ServerConnection) -> None:
        assert isinstance(connection, HandshakeConnection)
        target_stream, connection.target_stream = connection.target_stream, None
        target = connection.target
        first = (target_stream, target) if target_stream is not None and target else None
        if connection.subprotocol == SUBPROTOCOL_V2:
            await self._channel(connection, first)
        elif connection.subprotocol == SUBPROTOCOL_REVERSE:
            await self.reverse.serve(connection)
        elif connection.subprotocol == SUBPROTOCOL_UDP:
            await self._udp_flow(connection)
        elif first is not None:
            ws = WebSocketStream(
                connection,
                eof_markers=connection.subprotocol == SUBPROTOCOL,
                ping_interval=self.config.ping_interval,
                ping_timeout=self.config.ping_timeout,
            )
            await self._relay(connection, ws, *first)

    async def _channel(
        self, connection: HandshakeConnection, first: tuple[TcpStream, Target] | None
    ) -> None:
        """A wstun.v2 WebSocket: its tunnels, one after another (server/channel.py)."""
        channel = ServerChannel(
            connection,
            dial=self.targets.dial,
            relay=lambda ws, stream, target: self._relay(connection, ws, stream, target),
            refuse=self._refused,
            resolve_target=self.checks.target,
            draining=lambda: self.draining,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
        )
        self._channels.add(channel)
        try:
            await channel.run(first)
        finally:
            self._channels.discard(channel)

    async def _relay(
        self,
        connection: HandshakeConnection,
        ws: WebSocketStream,
        target_stream: TcpStream,
        target: Target,
    ) -> bool:
        """One tunnel and its log line; True when it ended cleanly and ``ws`` stays open."""
        report = TunnelReport(new_tunnel_id("s"), connection.client_peer, str(target))
        return await self._relayed(ws, target_stream, ws, report, ("client", "target"))

    async def _udp_flow(self, connection: HandshakeConnection) -> None:
        """A UDP flow: datagrams between the WebSocket and the target's socket."""
        udp, connection.udp_socket = connection.udp_socket, None
        if udp is None or connection.target is None:
            await connection.close(CloseCode.PROTOCOL_ERROR, "no UDP target")
            return
        report = FlowReport(new_tunnel_id("s"), connection.client_peer, f"{connection.target}/udp")
        flow = DatagramFlow(
            connection, udp.send, report, outbound="down", timeout=self.config.udp_timeout
        )
        udp.attach(flow)
        try:
            await self._carry_flow(flow)
        finally:
            udp.close()

    async def _carry_flow(self, flow: DatagramFlow) -> None:
        """A UDP flow (``-L .../udp``, or on a ``-R .../udp`` lease) until it ends:
        counted, logged, and ended at once on drain."""
        self.metrics.flow_opened(flow.report)
        self._flows.add(flow)
        if self.draining:
            flow.stop("server is shutting down")
        try:
            await flow.run(logger)
        finally:
            self._flows.discard(flow)
            self.metrics.flow_ended(flow.report)

    async def _relay_reverse(
        self, inbound: ByteStream, ws: WebSocketStream, report: TunnelReport
    ) -> bool:
        """One reverse tunnel: the connection on a lease's port, and the client's data
        channel; True when it ended cleanly and ``ws`` stays open."""
        return await self._relayed(inbound, ws, ws, report, ("application", "client"))

    async def _relayed(
        self,
        a: ByteStream,
        b: ByteStream,
        ws: WebSocketStream,
        report: TunnelReport,
        names: tuple[str, str],
    ) -> bool:
        """Relay ``a`` (the side ``up`` comes from) and ``b``, one of which is ``ws``."""
        logger.debug(
            "tunnel open id=%s kind=%s peer=%s target=%s",
            report.id,
            report.kind,
            report.peer,
            report.target,
        )
        await relay_and_report(
            a,
            b,
            report,
            logger,
            read_size=self.config.read_size,
            idle_timeout=self.config.idle_timeout,
            names=names,
            cancel_reason="server shutting down",
            counter=self.metrics,
        )
        return ws.reusable_now

    # Lifecycle.

    async def start(self) -> list[tuple[str, int]]:
        """Start listening; returns the bound addresses."""
        cfg = self.config
        self._server = await serve(
            self.handler,
            cfg.listen.host,
            cfg.listen.port,
            process_request=self.process_request,
            create_connection=connection_class(self._reject, self._tls_on_plain_port),
            select_subprotocol=_select_subprotocol,
            subprotocols=[
                Subprotocol(SUBPROTOCOL_V2),
                Subprotocol(SUBPROTOCOL_REVERSE),
                Subprotocol(SUBPROTOCOL_UDP),
                Subprotocol(SUBPROTOCOL),
            ],
            **{**WS_OPTIONS, "max_size": cfg.max_message_size},
            open_timeout=cfg.handshake_timeout,
            server_header=f"wstun/{__version__}",
            ssl=cfg.tls,
            reuse_port=cfg.reuse_port or None,
        )
        addresses = [sock.getsockname()[:2] for sock in self._server.sockets]
        tls = " tls=on" if cfg.tls else ""
        for host, port in addresses:
            logger.info("listening on %s path=%s%s", format_target(host, port), cfg.path, tls)
        for level, line in startup_notes(cfg):
            logger.log(level, "%s", line)
        if cfg.metrics_listen is not None:
            try:
                self._metrics_server = await serve_metrics(self.metrics, cfg.metrics_listen, logger)
            except BaseException:
                await self.stop()
                raise
        return addresses

    async def drain(self, grace: float) -> None:
        """Refuse new tunnels (503) but let open ones go on for up to ``grace`` seconds.

        The listening socket stays open meanwhile, so new upgrades and
        ``/healthz`` get a clear 503 rather than a refused connection. Then
        :meth:`stop` closes whatever is still open with 1001.
        """
        self.draining = True
        # Reverse listeners and control channels close at once; their tunnels go on.
        await self.reverse.shut_down()
        # UDP flows have no end of their own to wait for: they close at once (1001).
        for flow in list(self._flows):
            flow.stop("server is shutting down")
        # Idle reusable WebSockets go at once; their tunnels, when they carry one, go on.
        await asyncio.gather(
            *(channel.close_if_idle() for channel in list(self._channels)),
            return_exceptions=True,
        )
        if self.limits.total:
            logger.info("draining: %d tunnel(s) open, grace %gs", self.limits.total, grace)
            try:
                await asyncio.wait_for(self.limits.wait_empty(), grace)
            except TimeoutError:
                logger.info("grace period over: closing %d tunnel(s)", self.limits.total)
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and close open tunnels (1001: going away)."""
        self.reverse.stop()
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            metrics_server.close()
            await metrics_server.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def startup_notes(config: ServerConfig) -> list[tuple[int, str]]:
    """What an operator should know at startup: who may connect, what they may reach."""
    policy = config.policy
    if config.token:
        notes = [(logging.INFO, "token required: clients send it with --token-file or WSTUN_TOKEN")]
    else:
        notes = [(logging.WARNING, "no token: anyone who reaches this port may open tunnels")]
    allow, deny = len(policy.allow), len(policy.deny)
    default = f", default target {config.default_target}" if config.default_target else ""
    if not allow:
        notes.append(
            (logging.WARNING, "no --allow rule and no --to: every tunnel will be refused with 403")
        )
    else:
        notes.append(
            (logging.INFO, f"targets: {allow} allow rule(s), {deny} deny rule(s){default}")
        )
    if policy.allow_listen:
        rules = ", ".join(str(rule) for rule in policy.allow_listen)
        notes.append((logging.INFO, f"reverse tunnels may listen on: {rules}"))
    return notes


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """The newest wstun protocol offered; plain binary tunnels for everyone else."""
    for known in (SUBPROTOCOL_V2, SUBPROTOCOL_REVERSE, SUBPROTOCOL_UDP, SUBPROTOCOL):
        if known in offered:
            return Subprotocol(known)
    return None


async def run_server(config: ServerConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, drain for ``config.grace`` seconds, then end tunnels."""
    await serve_until(TunnelServer(config), stop, config.grace, logger)
