"""The server: a websockets endpoint that checks, dials the target, then relays.

Every check happens in ``process_request``, before the 101 answer: path,
token, target, policy, and the target dial itself. A refusal is a plain HTTP
response with a one-line reason; only a tunnel that can really work is
upgraded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import ssl
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wstun.common import __version__
from wstun.common.errors import describe_os_error
from wstun.common.metrics import serve_metrics
from wstun.common.protocol import (
    AUTHORIZATION_HEADER,
    SUBPROTOCOL,
    Failure,
    HandshakeRejection,
    Target,
    bearer_token,
    format_target,
    is_health_path,
    normalize_prefix,
    path_matches,
    target_from_query,
)
from wstun.common.report import TunnelReport, format_peer, new_tunnel_id, relay_and_report
from wstun.common.streams import (
    DEFAULT_READ_SIZE,
    WS_MAX_SIZE,
    WS_OPTIONS,
    TcpStream,
    WebSocketStream,
)
from wstun.common.streams.internals import lost_waiter
from wstun.server.badinput import NOT_ASCII, handshake_problem, query_problem
from wstun.server.connection import HandshakeConnection, connection_class
from wstun.server.forwarded import FORWARDED_FOR_HEADER, REAL_IP_HEADER, TrustedProxies
from wstun.server.limits import ConnectionLimits, client_host
from wstun.server.metrics import ServerMetrics
from wstun.server.policy import Policy
from wstun.server.targets import Resolver, dial_first, resolve

__all__ = ["ServerConfig", "TunnelServer", "run_server"]

logger = logging.getLogger("wstun.server")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``wstun-server`` is told on its command line."""

    listen: Target = dataclasses.field(default_factory=lambda: Target("127.0.0.1", 8080))
    path: str = "/"
    policy: Policy = dataclasses.field(default_factory=Policy)
    default_target: Target | None = None
    token: str | None = None
    connect_timeout: float = 10.0
    idle_timeout: float | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    read_size: int = DEFAULT_READ_SIZE
    # Peers allowed to state the client address in X-Forwarded-For/X-Real-IP.
    trusted_proxies: TrustedProxies = dataclasses.field(default_factory=TrustedProxies)
    # TLS in the server itself (None: plain ws://, e.g. behind a TLS proxy).
    tls: ssl.SSLContext | None = None
    # Where to serve /metrics (None: not served).
    metrics_listen: Target | None = None
    #: Seconds open tunnels may go on after SIGTERM before they are closed (1001).
    grace: float = 5.0
    #: Tunnels at once, in total and per client address (``None``: unlimited).
    max_connections: int | None = None
    max_per_client: int | None = None
    #: Seconds a client has to complete its opening handshake.
    handshake_timeout: float = 10.0
    #: Largest WebSocket message accepted (bigger ones close with 1009).
    max_message_size: int = WS_MAX_SIZE
    #: Listen with SO_REUSEPORT, so --workers processes share the port.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_prefix(self.path))


class TunnelServer:
    """Accepts WebSocket upgrades and turns each into a relayed tunnel."""

    def __init__(self, config: ServerConfig, *, resolver: Resolver = resolve) -> None:
        self.config = config
        # Turns a target's name into addresses for the policy to check.
        self._resolve = resolver
        self._token = config.token.encode() if config.token else None
        self._server: Server | None = None
        self._metrics_server: Server | None = None
        self.metrics = ServerMetrics()
        self.limits = ConnectionLimits(config.max_connections, config.max_per_client)
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

    def _reject(self, connection: HandshakeConnection, rejection: HandshakeRejection) -> Response:
        peer = connection.client_peer
        self.metrics.handshake_failed(rejection.status)
        logger.info(
            "rejected peer=%s status=%d reason=%s", peer, rejection.status, rejection.reason
        )
        response = connection.respond(rejection.status, rejection.body())
        if rejection.failure is Failure.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="wstun"'
        return response

    def _check_token(self, headers: Headers) -> HandshakeRejection | None:
        if self._token is None:
            return None
        token = bearer_token(headers.get(AUTHORIZATION_HEADER))
        if token is None:
            return HandshakeRejection(Failure.UNAUTHORIZED, "missing bearer token")
        if not hmac.compare_digest(token.encode(), self._token):
            return HandshakeRejection(Failure.UNAUTHORIZED, "invalid token")
        return None

    def _check(self, request: Request) -> Target | HandshakeRejection:
        """Path, upgrade, query, token and target, in that order (the policy comes next)."""
        if not request.path.isascii():
            return NOT_ASCII  # websockets < 17 lets it through; no answer may quote it
        url = urlsplit(request.path)
        if not path_matches(url.path, self.config.path):
            return HandshakeRejection(Failure.NOT_FOUND, f"no tunnel endpoint at {url.path}")
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return HandshakeRejection(
                Failure.UPGRADE_REQUIRED, "this is a WebSocket tunnel endpoint; upgrade required"
            )
        rejection = (
            handshake_problem(request)
            or query_problem(url.query, self._token)
            or self._check_token(request.headers)
        )
        if rejection is not None:
            return rejection
        return target_from_query(url.query, self.config.default_target)

    async def _addresses(self, target: Target) -> Sequence[str] | HandshakeRejection:
        """Resolve ``target`` and keep the addresses the policy allows (403 if none)."""
        policy = self.config.policy
        if not policy.may_allow(target):
            return HandshakeRejection(Failure.FORBIDDEN, f"target not allowed: {target}")
        try:
            resolved = await self._resolve(target.host, target.port)
        except OSError as exc:
            return HandshakeRejection(
                Failure.TARGET_UNREACHABLE,
                f"target {target}: name does not resolve ({describe_os_error(exc)})",
            )
        decision = policy.decide(target, resolved)
        if not decision.allowed:
            return HandshakeRejection(Failure.FORBIDDEN, decision.reason)
        return decision.addresses

    async def _dial(self, target: Target) -> TcpStream | HandshakeRejection:
        """Resolve, check and dial ``target`` within the connect timeout."""
        timeout = self.config.connect_timeout
        started: float | None = None
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._addresses(target)
                if isinstance(addresses, HandshakeRejection):
                    return addresses
                started = time.monotonic()
                return await dial_first(addresses, target.port)
        except TimeoutError:
            return HandshakeRejection(
                Failure.TARGET_TIMEOUT, f"target {target} did not answer within {timeout:g}s"
            )
        except OSError as exc:
            return HandshakeRejection(
                Failure.TARGET_UNREACHABLE, f"target {target}: {describe_os_error(exc)}"
            )
        finally:
            if started is not None:  # a dial happened (policy refusals are not dials)
                self.metrics.dial_seconds.observe(time.monotonic() - started)

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        assert isinstance(connection, HandshakeConnection)
        connection.client_peer = self._client_peer(connection, request)
        url = urlsplit(request.path)
        if is_health_path(url.path, self.config.path) and "Upgrade" not in request.headers:
            if self.draining:
                return connection.respond(503, "draining\n")
            return connection.respond(200, "ok\n")
        if self.draining:
            return self._reject(
                connection, HandshakeRejection(Failure.UNAVAILABLE, "server is shutting down")
            )
        checked = self._check(request)
        if isinstance(checked, HandshakeRejection):
            return self._reject(connection, checked)
        client = client_host(connection.client_peer)
        refused = self.limits.acquire(client)
        if refused is not None:
            return self._reject(connection, refused)
        lost_waiter(connection).add_done_callback(lambda _: self.limits.release(client))
        dialled = await self._dial(checked)
        if isinstance(dialled, HandshakeRejection):
            return self._reject(connection, dialled)
        connection.target_stream = dialled
        connection.target = checked
        return None

    # After 101: the tunnel itself.

    async def handler(self, connection: ServerConnection) -> None:
        assert isinstance(connection, HandshakeConnection)
        target_stream, connection.target_stream = connection.target_stream, None
        if target_stream is None:  # the handshake was refused after all
            return
        target = connection.target
        report = TunnelReport(new_tunnel_id("s"), connection.client_peer, str(target))
        ws = WebSocketStream(
            connection,
            eof_markers=connection.subprotocol == SUBPROTOCOL,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
        )
        logger.debug("tunnel open id=%s peer=%s target=%s", report.id, report.peer, target)
        await relay_and_report(
            ws,
            target_stream,
            report,
            logger,
            read_size=self.config.read_size,
            idle_timeout=self.config.idle_timeout,
            names=("client", "target"),
            cancel_reason="server shutting down",
            counter=self.metrics,
        )

    # Lifecycle.

    async def start(self) -> list[tuple[str, int]]:
        """Start listening; returns the bound addresses."""
        cfg = self.config
        self._server = await serve(
            self.handler,
            cfg.listen.host,
            cfg.listen.port,
            process_request=self.process_request,
            create_connection=connection_class(self._reject),
            select_subprotocol=_select_subprotocol,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
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
        if self.limits.total:
            logger.info("draining: %d tunnel(s) open, grace %gs", self.limits.total, grace)
            try:
                await asyncio.wait_for(self.limits.wait_empty(), grace)
            except TimeoutError:
                logger.info("grace period over: closing %d tunnel(s)", self.limits.total)
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and close open tunnels (1001: going away)."""
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            metrics_server.close()
            await metrics_server.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``wstun.v1`` when offered; plain binary tunnels for everyone else."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


async def run_server(config: ServerConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, drain for ``config.grace`` seconds, then end tunnels."""
    server = TunnelServer(config)
    await server.start()
    try:
        await stop.wait()
        logger.info("shutting down")
        await server.drain(config.grace)
    finally:
        await server.stop()
