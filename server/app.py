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
from collections.abc import Sequence
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from common import __version__
from common.errors import describe_os_error
from common.protocol import (
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
from common.report import TunnelReport, format_peer, new_tunnel_id, relay_and_report
from common.streams import (
    DEFAULT_READ_SIZE,
    WS_OPTIONS,
    TcpStream,
    TunnelServerConnection,
    WebSocketStream,
    open_tcp,
)

from .policy import Policy

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
    #: Listen with SO_REUSEPORT, so --workers processes share the port.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_prefix(self.path))


class TunnelServer:
    """Accepts WebSocket upgrades and turns each into a relayed tunnel."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._token = config.token.encode() if config.token else None
        self._server: Server | None = None

    # Handshake: every check, then the dial, before 101.

    def _client_peer(self, connection: TunnelServerConnection, request: Request) -> str:
        """The real client's address as ``host:port``, for logs and limits.

        Everything that logs or limits by client address goes through here.
        """
        return format_peer(connection.remote_address)

    def _reject(
        self, connection: TunnelServerConnection, rejection: HandshakeRejection
    ) -> Response:
        peer = connection.client_peer
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
        """Path, upgrade, token, target and policy, in that order."""
        url = urlsplit(request.path)
        if not path_matches(url.path, self.config.path):
            return HandshakeRejection(Failure.NOT_FOUND, f"no tunnel endpoint at {url.path}")
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return HandshakeRejection(
                Failure.UPGRADE_REQUIRED, "this is a WebSocket tunnel endpoint; upgrade required"
            )
        rejection = self._check_token(request.headers)
        if rejection is not None:
            return rejection
        target = target_from_query(url.query, self.config.default_target)
        if isinstance(target, HandshakeRejection):
            return target
        if self.config.policy.allowing_rule(target) is None:
            return HandshakeRejection(Failure.FORBIDDEN, f"target not allowed: {target}")
        return target

    async def _dial(self, target: Target) -> TcpStream | HandshakeRejection:
        timeout = self.config.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                return await open_tcp(target.host, target.port)
        except TimeoutError:
            return HandshakeRejection(
                Failure.TARGET_TIMEOUT, f"target {target} did not answer within {timeout:g}s"
            )
        except OSError as exc:
            return HandshakeRejection(
                Failure.TARGET_UNREACHABLE, f"target {target}: {describe_os_error(exc)}"
            )

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        assert isinstance(connection, TunnelServerConnection)
        connection.client_peer = self._client_peer(connection, request)
        url = urlsplit(request.path)
        if is_health_path(url.path, self.config.path) and "Upgrade" not in request.headers:
            return connection.respond(200, "ok\n")
        checked = self._check(request)
        if isinstance(checked, HandshakeRejection):
            return self._reject(connection, checked)
        dialled = await self._dial(checked)
        if isinstance(dialled, HandshakeRejection):
            return self._reject(connection, dialled)
        connection.target_stream = dialled
        connection.target = checked
        return None

    # After 101: the tunnel itself.

    async def handler(self, connection: ServerConnection) -> None:
        assert isinstance(connection, TunnelServerConnection)
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
            create_connection=TunnelServerConnection,
            select_subprotocol=_select_subprotocol,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            **WS_OPTIONS,
            server_header=f"wstun/{__version__}",
            reuse_port=cfg.reuse_port or None,
        )
        addresses = [sock.getsockname()[:2] for sock in self._server.sockets]
        for host, port in addresses:
            logger.info("listening on %s path=%s", format_target(host, port), cfg.path)
        return addresses

    async def stop(self) -> None:
        """Stop listening and close open tunnels (1001: going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``wstun.v1`` when offered; plain binary tunnels for everyone else."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


async def run_server(config: ServerConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then stop listening and end tunnels."""
    server = TunnelServer(config)
    await server.start()
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await server.stop()
