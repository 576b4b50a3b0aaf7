"""Local port forwarding (``-L``): listen locally, open one WebSocket per connection.

Each accepted connection dials the server with ``?to=HOST:PORT`` and the
``wstun.v1`` subprotocol, then runs the shared relay. A refused handshake
closes the local connection with a reset and is logged with the server's
status and reason, once per distinct failure per interval, so a client
whose every connection fails doesn't flood its log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Literal

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server
from websockets.exceptions import InvalidHandshake, InvalidStatus, ProxyError
from websockets.typing import Subprotocol

from wstun.client.socks import SocksProxy, serve_socks_connection
from wstun.client.tls import describe_tls_error
from wstun.common import __version__
from wstun.common.errors import HandshakeError, TargetError, describe_os_error
from wstun.common.metrics import TunnelMetrics, serve_metrics
from wstun.common.protocol import (
    AUTHORIZATION_HEADER,
    SUBPROTOCOL,
    Target,
    build_tunnel_url,
    format_target,
    parse_listen,
    parse_port,
    parse_target,
)
from wstun.common.report import (
    TunnelEnd,
    TunnelReport,
    format_peer,
    new_tunnel_id,
    relay_and_report,
)
from wstun.common.streams import (
    DEFAULT_READ_SIZE,
    WS_OPTIONS,
    TcpStream,
    TunnelClientConnection,
    WebSocketStream,
    tcp_protocol_factory,
)

__all__ = [
    "ClientConfig",
    "FailureLog",
    "Forward",
    "TunnelClient",
    "open_tunnel",
    "parse_forward",
    "run_client",
]

logger = logging.getLogger("wstun.client")


@dataclasses.dataclass(frozen=True)
class Forward:
    """``-L``: listen on ``bind``, tunnel each connection to ``remote``."""

    bind: Target
    remote: Target

    def __str__(self) -> str:
        return f"{self.bind} -> {self.remote}"


def _split_colons(text: str) -> list[str]:
    """Split on ':' outside square brackets, keeping the brackets."""
    parts, current, depth = [], "", 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise TargetError(f"unbalanced ']' in {text!r}")
        if ch == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise TargetError(f"missing ']' in {text!r}")
    parts.append(current)
    return parts


def parse_forward(text: str, *, default_bind: str = "127.0.0.1") -> Forward:
    """Parse ``[BIND:]PORT:HOST:HOSTPORT`` (IPv6 in brackets), as ssh's ``-L``."""
    parts = _split_colons(text)
    if len(parts) == 3:
        bind_host = default_bind
        port, host, host_port = parts
    elif len(parts) == 4:
        bind_host, port, host, host_port = parts
        if bind_host.startswith("[") and bind_host.endswith("]"):
            bind_host = bind_host[1:-1]
        bind_host = bind_host or default_bind
    else:
        raise TargetError(f"expected [BIND:]PORT:HOST:HOSTPORT, got {text!r}")
    bind_port = parse_port(port, what=f"listen port in {text!r}", allow_zero=True)
    bind = parse_listen(format_target(bind_host, bind_port))
    return Forward(bind, parse_target(f"{host}:{host_port}"))


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Everything ``wstun-client`` is told on its command line."""

    url: str
    forwards: tuple[Forward, ...] = ()
    socks: tuple[SocksProxy, ...] = ()
    token: str | None = None
    connect_timeout: float = 10.0
    idle_timeout: float | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    read_size: int = DEFAULT_READ_SIZE
    # Extra handshake headers (--header), e.g. for an access gateway.
    headers: tuple[tuple[str, str], ...] = ()
    # HTTP CONNECT proxy URL; True: from HTTPS_PROXY/HTTP_PROXY/NO_PROXY; None: direct.
    proxy: str | Literal[True] | None = True
    # TLS settings for wss:// (None: system CAs, verification on).
    tls: ssl.SSLContext | None = None
    # Where to serve /metrics (None: not served).
    metrics_listen: Target | None = None
    # TCP destination instead of the URL's host and port (--connect-to); the
    # URL's name still goes in Host, SNI and the certificate check.
    connect_to: Target | None = None
    # Name for SNI and the certificate check instead of the URL's (--tls-server-name).
    tls_server_name: str | None = None
    #: Seconds open tunnels may go on after SIGTERM before they are cut.
    grace: float = 5.0
    #: Tunnels open at once per -L listener (``None``: unlimited).
    max_tunnels: int | None = None


def _first_line(body: bytes, fallback: str) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text.splitlines()[0][:300] if text else fallback


async def open_tunnel(config: ClientConfig, target: Target | None) -> WebSocketStream:
    """Open one WebSocket to the server for ``target``; raise HandshakeError if refused."""
    url = build_tunnel_url(config.url, target)
    headers = list(config.headers)
    if config.token:
        headers.append((AUTHORIZATION_HEADER, f"Bearer {config.token}"))
    tls: dict[str, Any] = {}
    if url.startswith("wss:"):
        if config.tls is not None:
            tls["ssl"] = config.tls
        if config.tls_server_name is not None:
            tls["server_hostname"] = config.tls_server_name
    destination: dict[str, Any] = {}
    proxy = config.proxy
    if config.connect_to is not None:
        # A fixed address is dialled directly: no proxy from the environment.
        destination = {"host": config.connect_to.host, "port": config.connect_to.port}
        proxy = None
    try:
        connection = await connect(
            url,
            additional_headers=headers,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            create_connection=TunnelClientConnection,
            **WS_OPTIONS,
            open_timeout=config.connect_timeout,
            user_agent_header=f"wstun/{__version__}",
            proxy=proxy,
            **tls,
            **destination,
        )
    except InvalidStatus as exc:
        response = exc.response
        reason = _first_line(bytes(response.body or b""), response.reason_phrase)
        raise HandshakeError(response.status_code, reason) from exc
    except ProxyError as exc:
        raise HandshakeError(0, f"proxy failed: {exc}") from exc
    except InvalidHandshake as exc:
        raise HandshakeError(0, f"bad handshake from server: {exc}") from exc
    except ssl.SSLError as exc:
        raise HandshakeError(0, describe_tls_error(exc)) from exc
    except TimeoutError as exc:
        raise HandshakeError(
            0, f"server did not complete the handshake within {config.connect_timeout:g}s"
        ) from exc
    except OSError as exc:
        raise HandshakeError(0, f"can't reach server: {describe_os_error(exc)}") from exc
    assert isinstance(connection, TunnelClientConnection)
    return WebSocketStream(
        connection,
        eof_markers=connection.subprotocol == SUBPROTOCOL,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
    )


class FailureLog:
    """Logs each distinct failure once per ``interval`` and counts the rest."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        # failure text -> (when it was last logged, repeats since then)
        self._seen: dict[str, tuple[float, int]] = {}

    def log(self, text: str) -> bool:
        """Log ``text`` unless logged within the interval; True if it was logged."""
        now = self._clock()
        last, repeats = self._seen.get(text, (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[text] = (last, repeats + 1)
            return False
        suffix = f" ({repeats} more like this since the last report)" if repeats else ""
        logger.warning("%s%s", text, suffix)
        self._seen[text] = (now, 0)
        return True


class TunnelClient:
    """Runs the ``-L`` and ``-D`` listeners and the tunnels they accept."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.failures = FailureLog()
        self._servers: list[asyncio.Server] = []
        self._tunnels: set[asyncio.Task[None]] = set()
        self._metrics_server: Server | None = None
        self.metrics = TunnelMetrics("client")
        # Open tunnels per forward, for the max_tunnels cap.
        self._open: dict[Forward, int] = {}

    async def start(self) -> list[tuple[Forward | SocksProxy, tuple[str, int]]]:
        """Bind every ``-L`` and ``-D`` listener; returns each with its bound address."""
        bound: list[tuple[Forward | SocksProxy, tuple[str, int]]] = []
        try:
            for forward in self.config.forwards:
                on_accept = functools.partial(self._accepted, forward=forward)
                for address in await self._listen(f"-L {forward}", forward.bind, on_accept):
                    bound.append((forward, address))
                    logger.info(
                        "forwarding %s -> %s via %s",
                        format_peer(address),
                        forward.remote,
                        self.config.url,
                    )
            for proxy in self.config.socks:
                on_accept = functools.partial(self._accepted_socks, proxy=proxy)
                for address in await self._listen(f"-D {proxy.bind}", proxy.bind, on_accept):
                    bound.append((proxy, address))
                    logger.info("SOCKS5 proxy on %s via %s", format_peer(address), self.config.url)
            if self.config.metrics_listen is not None:
                self._metrics_server = await serve_metrics(
                    self.metrics, self.config.metrics_listen, logger
                )
        except BaseException:
            await self.stop()
            raise
        return bound

    async def _listen(
        self, what: str, bind: Target, on_accept: Callable[[TcpStream], None]
    ) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(tcp_protocol_factory(on_accept), bind.host, bind.port)
        except OSError as exc:
            raise OSError(
                exc.errno, f"{what}: can't listen on {bind}: {describe_os_error(exc)}"
            ) from exc
        self._servers.append(server)
        return [sock.getsockname()[:2] for sock in server.sockets]

    def _accepted(self, local: TcpStream, forward: Forward) -> None:
        loop = asyncio.get_running_loop()
        cap = self.config.max_tunnels
        if cap is not None and self._open.get(forward, 0) >= cap:
            self.failures.log(f"-L {forward}: {cap} tunnels open, the limit; resetting new ones")
            refusal = loop.create_task(local.abort())
            self._tunnels.add(refusal)
            refusal.add_done_callback(self._tunnels.discard)
            return
        self._open[forward] = self._open.get(forward, 0) + 1
        task = loop.create_task(self._tunnel(local, forward))
        self._tunnels.add(task)
        task.add_done_callback(functools.partial(self._tunnel_done, forward=forward))

    def _tunnel_done(self, task: asyncio.Task[None], forward: Forward) -> None:
        self._tunnels.discard(task)
        self._open[forward] -= 1

    def _accepted_socks(self, local: TcpStream, proxy: SocksProxy) -> None:
        session = serve_socks_connection(
            local,
            format_peer(local.peername),
            proxy,
            dial=functools.partial(open_tunnel, self.config),
            log_failure=self.failures.log,
            read_size=self.config.read_size,
            idle_timeout=self.config.idle_timeout,
            metrics=self.metrics,
        )
        task = asyncio.get_running_loop().create_task(session)
        self._tunnels.add(task)
        task.add_done_callback(self._tunnels.discard)

    async def _tunnel(self, local: TcpStream, forward: Forward) -> None:
        report = TunnelReport(new_tunnel_id("c"), format_peer(local.peername), str(forward.remote))
        try:
            ws = await open_tunnel(self.config, forward.remote)
        except HandshakeError as exc:
            self.metrics.handshake_failed(exc.status)
            await local.abort()
            self.failures.log(f"tunnel to {forward.remote} {exc.outcome}")
            report.end, report.reason = TunnelEnd.REFUSED, str(exc)
            logger.debug("%s", report.line())
            return
        except asyncio.CancelledError:
            await local.abort()
            raise
        await relay_and_report(
            local,
            ws,
            report,
            logger,
            read_size=self.config.read_size,
            idle_timeout=self.config.idle_timeout,
            names=("local", "server"),
            cancel_reason="client shutting down",
            counter=self.metrics,
        )

    async def drain(self, grace: float) -> None:
        """Stop listening, give open tunnels up to ``grace`` seconds, then :meth:`stop`."""
        for server in self._servers:
            server.close()
        if self._tunnels:
            logger.info("draining: %d tunnel(s) open, grace %gs", len(self._tunnels), grace)
            _, pending = await asyncio.wait(set(self._tunnels), timeout=grace)
            if pending:
                logger.info("grace period over: closing %d tunnel(s)", len(pending))
        await self.stop()

    async def stop(self) -> None:
        """Stop listening, then end the tunnels still open."""
        for server in self._servers:
            server.close()
        tunnels = list(self._tunnels)
        for task in tunnels:
            task.cancel()
        await asyncio.gather(*tunnels, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None


async def run_client(config: ClientConfig, stop: asyncio.Event) -> None:
    """Forward until ``stop`` is set, drain for ``config.grace`` seconds, then end tunnels."""
    client = TunnelClient(config)
    await client.start()
    try:
        await stop.wait()
        logger.info("shutting down")
        await client.drain(config.grace)
    finally:
        await client.stop()
