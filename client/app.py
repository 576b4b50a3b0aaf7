"""The running client: its -L and -D listeners, its -R forwards, their tunnels, metrics, drain.

Every accepted connection becomes a :class:`~wstun.client.tunnel.Tunnel`
whose local end is the mode's (:class:`ForwardedConnection` for ``-L``,
:class:`SocksConnection` for ``-D``) and whose dialer is the one the client
was given (:class:`WebSocketDialer` unless a test or a future mode passes
another).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.server import Server

from wstun.client.config import ClientConfig
from wstun.client.dialer import WebSocketDialer
from wstun.client.failures import FailureLog
from wstun.client.forward import Forward, ForwardedConnection
from wstun.client.pool import PooledDialer
from wstun.client.reverse import ReverseForward
from wstun.client.socks import SocksConnection, SocksProxy
from wstun.client.status import ClientCounts, StatusLine
from wstun.client.tunnel import Dialer, LocalEnd, Tunnel, TunnelSettings
from wstun.client.udp import UdpListener
from wstun.common.datagram import bind_udp
from wstun.common.errors import HandshakeError, describe_os_error
from wstun.common.metrics import TunnelMetrics, serve_metrics
from wstun.common.protocol import Target
from wstun.common.report import format_peer
from wstun.common.runtime import serve_until
from wstun.common.streams import TcpStream, tcp_protocol_factory

__all__ = ["TunnelClient", "run_client"]

logger = logging.getLogger("wstun.client")


class TunnelClient:
    """Runs the ``-L`` and ``-D`` listeners and the tunnels they accept."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        dialer: Dialer | None = None,
        check_server: bool = False,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.config = config
        # Once the listeners are up, ask the server once whether it is there (in the background).
        self._check_server = check_server
        self._checking: asyncio.Task[None] | None = None
        self.dialer: Dialer = dialer if dialer is not None else default_dialer(config)
        self.failures = FailureLog()
        self.metrics = TunnelMetrics("client")
        # What tunnels report to: the metrics, and counts for the status line.
        self.counts = ClientCounts(self.metrics)
        self.settings = TunnelSettings(config.read_size, config.idle_timeout)
        self._servers: list[asyncio.Server] = []
        self._tunnels: set[asyncio.Task[object]] = set()
        self._metrics_server: Server | None = None
        # Open tunnels per forward, for the max_tunnels cap.
        self._open: dict[Forward, int] = {}
        # -R: one forward each, holding its lease; set when the client should end itself
        # (every -R refused for good, nothing else to do), with the exit status.
        self._stop = stop
        self.exit_status = 0
        # -R's WebSockets are fresh ones, the same way to the server as every tunnel's.
        if isinstance(self.dialer, PooledDialer):
            self._ws_dialer = self.dialer.dialer
        elif isinstance(self.dialer, WebSocketDialer):
            self._ws_dialer = self.dialer
        else:
            self._ws_dialer = WebSocketDialer(config)
        session = secrets.token_urlsafe(16)  # this process, to the server: 128 bits
        self.reverse = [
            ReverseForward(
                remote,
                dialer=self._ws_dialer,
                session=session,
                channels=config.reverse_channels,
                settings=self.settings,
                metrics=self.counts,
                log_failure=self.failures.log,
                start=self._start,
                udp_timeout=config.udp_timeout,
                flow_metrics=self.metrics,
            )
            for remote in config.remotes
        ]
        self._holding: set[asyncio.Task[None]] = set()
        # -L .../udp listeners, and their flows (which end at once on drain: UDP has
        # no end of its own to wait for).
        self._udp: list[UdpListener] = []
        self._flows: set[asyncio.Task[object]] = set()

    async def start(self) -> list[tuple[Forward | SocksProxy, tuple[str, int]]]:
        """Bind every ``-L`` and ``-D`` listener; returns each with its bound address."""
        bound: list[tuple[Forward | SocksProxy, tuple[str, int]]] = []
        try:
            for forward in self.config.forwards:
                if forward.proto == "udp":
                    address = await self._listen_udp(forward)
                    bound.append((forward, address))
                    logger.info(
                        "forwarding %s/udp -> %s/udp via %s",
                        format_peer(address),
                        forward.remote,
                        self.config.url,
                    )
                    continue
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
            for remote in self.reverse:
                task = asyncio.get_running_loop().create_task(remote.run())
                self._holding.add(task)
                task.add_done_callback(self._reverse_done)
            if self.config.metrics_listen is not None:
                self._metrics_server = await serve_metrics(
                    self.metrics, self.config.metrics_listen, logger
                )
            if self._check_server:
                self._checking = asyncio.create_task(check_server(self.dialer))
        except BaseException:
            await self.stop()
            raise
        return bound

    async def _listen_udp(self, forward: Forward) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        bind = forward.bind
        try:
            sock = bind_udp(bind.host, bind.port)
            _, listener = await loop.create_datagram_endpoint(
                lambda: UdpListener(
                    forward,
                    dialer=self._ws_dialer,
                    timeout=self.config.udp_timeout,
                    max_flows=self.config.max_udp_flows,
                    log_failure=self.failures.log,
                    start=self._start_flow,
                    metrics=self.metrics,
                ),
                sock=sock,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"-L {forward}: can't listen on {bind}/udp: {describe_os_error(exc)}"
            ) from exc
        listener.sock = sock
        self._udp.append(listener)
        assert listener.endpoint is not None
        host, port = listener.endpoint.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def _reverse_done(self, task: asyncio.Task[None]) -> None:
        self._holding.discard(task)
        _report_crash(task)
        if self._servers or self._udp or any(forward.failed is None for forward in self.reverse):
            return
        logger.error("no forward left: exiting")
        self.exit_status = 1
        if self._stop is not None:
            self._stop.set()

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

    def tunnel(self, target: Target, local: LocalEnd) -> Tunnel:
        """A tunnel of this client: its dialer, settings, failure log and metrics."""
        return Tunnel(
            target,
            local,
            dialer=self.dialer,
            settings=self.settings,
            log_failure=self.failures.log,
            metrics=self.counts,
        )

    def _start(
        self,
        work: Callable[[], Coroutine[Any, Any, object]],
        done: Callable[[asyncio.Task[object]], None] | None = None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(work())
        self._tunnels.add(task)
        task.add_done_callback(_report_crash)
        task.add_done_callback(done or self._tunnels.discard)

    def _start_flow(self, work: Callable[[], Coroutine[Any, Any, object]]) -> None:
        task = asyncio.get_running_loop().create_task(work())
        self._flows.add(task)
        task.add_done_callback(_report_crash)
        task.add_done_callback(self._flows.discard)

    def _accepted(self, local: TcpStream, forward: Forward) -> None:
        cap = self.config.max_tunnels
        if cap is not None and self._open.get(forward, 0) >= cap:
            self.failures.log(f"-L {forward}: {cap} tunnels open, the limit; resetting new ones")
            self._start(local.abort)
            return
        self._open[forward] = self._open.get(forward, 0) + 1
        tunnel = self.tunnel(forward.remote, ForwardedConnection(local))
        self._start(tunnel.run, functools.partial(self._tunnel_done, forward=forward))

    def _tunnel_done(self, task: asyncio.Task[object], forward: Forward) -> None:
        self._tunnels.discard(task)
        self._open[forward] -= 1

    def _accepted_socks(self, local: TcpStream, proxy: SocksProxy) -> None:
        connection = SocksConnection(
            local, proxy, tunnel=self.tunnel, log_failure=self.failures.log
        )
        self._start(connection.serve)

    async def _release(self) -> None:
        """Free every -R lease on the server now; their open tunnels go on."""
        holding = list(self._holding)
        await asyncio.gather(
            *(forward.release() for forward in self.reverse), return_exceptions=True
        )
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)

    async def drain(self, grace: float) -> None:
        """Stop listening, give open tunnels up to ``grace`` seconds, then :meth:`stop`.
        UDP flows have no end of their own to wait for: they end at once."""
        for server in self._servers:
            server.close()
        for listener in self._udp:
            listener.close()
        await _cancel(self._flows)
        await self._release()
        if self._tunnels:
            logger.info("draining: %d tunnel(s) open, grace %gs", len(self._tunnels), grace)
            _, pending = await asyncio.wait(set(self._tunnels), timeout=grace)
            if pending:
                logger.info("grace period over: closing %d tunnel(s)", len(pending))
        await self.stop()

    async def stop(self) -> None:
        """Stop listening, close the idle pooled WebSockets, then end the tunnels still open."""
        if isinstance(self.dialer, PooledDialer):
            await self.dialer.close()
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.gather(self._checking, return_exceptions=True)
            self._checking = None
        await self._release()
        for server in self._servers:
            server.close()
        for listener in self._udp:
            listener.close()
        await _cancel(self._flows)
        tunnels = list(self._tunnels)
        for task in tunnels:
            task.cancel()
        await asyncio.gather(*tunnels, return_exceptions=True)
        if isinstance(self.dialer, PooledDialer):
            await self.dialer.close()  # the WebSockets the last tunnels gave back
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None


def default_dialer(config: ClientConfig) -> Dialer:
    """A pool of warm WebSockets (``--pool N``), or one fresh WebSocket per tunnel (0)."""
    fresh = WebSocketDialer(config)
    if config.pool <= 0:
        return fresh
    return PooledDialer(fresh, config.pool, idle=config.pool_idle, lifetime=config.pool_lifetime)


async def _cancel(tasks: set[asyncio.Task[object]]) -> None:
    running = list(tasks)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _report_crash(task: asyncio.Task[object]) -> None:
    """A tunnel task that failed (a bug): one error line, not an unretrieved traceback."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("tunnel task failed: %s: %s", type(exc).__name__, exc)


async def check_server(dialer: Dialer) -> None:
    """Log, once, whether the server is there and takes the token; go on either way."""
    probe = getattr(dialer, "probe", None)
    if probe is None:
        return
    try:
        logger.info("%s", await probe())
    except HandshakeError as exc:
        logger.warning("server check %s; tunnels will be tried anyway", exc.outcome)


async def run_client(config: ClientConfig, stop: asyncio.Event, *, status: bool = False) -> int:
    """Forward until ``stop`` is set, drain for ``config.grace`` seconds, then end tunnels.

    ``status``: keep a live status line on stderr (a terminal) meanwhile. Returns
    the exit status: 1 when every -R was refused for good and nothing else was left.
    """
    client = TunnelClient(config, check_server=True, stop=stop)
    line = StatusLine(client.counts) if status else None
    if line is not None:
        line.install()
    try:
        await serve_until(client, stop, config.grace, logger)
    finally:
        if line is not None:
            line.stop()
    return client.exit_status
