"""The server: a websockets endpoint that checks, dials the target, then relays.

Every check happens in ``process_request``, before the 101 answer: the
request's (:class:`RequestChecks`: path, token, target named), a slot
(:class:`ConnectionLimits`), and the target's (:class:`TargetDialer`:
policy, resolution, the dial itself). A refusal is a plain HTTP response
with a one-line reason; only a tunnel that can really work is upgraded.
After the 101, :meth:`TunnelServer.handler` relays.

Who may connect and what each may reach is one :class:`Access` snapshot
(``self.access``); :meth:`TunnelServer.reload` swaps in a new one and
closes what it no longer allows (server/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wstun.common import __version__
from wstun.common.datagram import DatagramFlow, FlowReport
from wstun.common.errors import ConfigError
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
from wstun.server.policy import Policy
from wstun.server.reload import Changes, fingerprint, lease_revoked, tunnel_revoked
from wstun.server.reverse import Lease, ReverseService
from wstun.server.targets import Resolver, TargetDialer, resolve
from wstun.server.users import ANONYMOUS, Access

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
        #: Who may connect and what each may reach; replaced whole by reload().
        self.access = config.access
        # Before the target: path, upgrade, request, query, token (and so the user).
        self.checks = RequestChecks(config.path, self.access, config.default_target)
        # The target: policy, resolution, dial.
        self.targets = TargetDialer(
            config.connect_timeout,
            resolver=resolver,
            observe_dial=self.metrics.dial_seconds.observe,
        )
        self.limits = ConnectionLimits(
            config.max_connections, config.max_per_client, config.shared_counts
        )
        # Every WebSocket past its checks, for a reload's second look at what it carries.
        self._connections: set[HandshakeConnection] = set()
        self._reloading = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self._watch: asyncio.Task[None] | None = None
        # The wstun.v2 WebSockets open now (server/channel.py), and the UDP flows.
        self._channels: set[ServerChannel] = set()
        self._flows: set[DatagramFlow] = set()
        # Reverse tunnels' leases, listeners and data channels (server/reverse.py).
        self.reverse = ReverseService(
            policy_for=self._policy_for,
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

    # Who may do what.

    def _policy_for(self, user: str | None) -> Policy:
        """The rules for ``user`` now: the server-wide ones and the user's own."""
        return self.access.policy_for(user or ANONYMOUS)

    def _shown_user(self, user: str | None) -> str | None:
        """What logs and metrics call ``user``: nothing without a users file."""
        return user if self.access.users is not None else None

    def _take_tunnel(self, connection: HandshakeConnection) -> HandshakeRejection | None:
        """Count a tunnel for the connection's user (their ``max_tunnels``)."""
        if self.config.users is None:
            return None  # no users file: no cap, now or after a reload
        user = connection.user or ANONYMOUS
        found = self.access.user(user)
        refused = self.limits.take_tunnel(user, found.max_tunnels if found else None)
        connection.holds_tunnel = refused is None
        return refused

    def _tunnel_over(self, connection: HandshakeConnection) -> None:
        """The connection's tunnel ended (or never started): its user's count goes down,
        and a reload has nothing more to look at."""
        connection.target = None
        connection.target_address = None
        if connection.holds_tunnel:
            connection.holds_tunnel = False
            self.limits.give_tunnel(connection.user or ANONYMOUS)

    async def _dial(
        self, connection: HandshakeConnection, target: Target
    ) -> TcpStream | HandshakeRejection:
        """Count, check and dial a TCP target for ``connection``'s user, over HTTP or
        in-band; on success ``connection`` knows what it carries."""
        refused = self._take_tunnel(connection)
        if refused is not None:
            return refused
        access = self.access
        dialled = await self.targets.dial(target, access.policy_for(connection.user or ANONYMOUS))
        if isinstance(dialled, HandshakeRejection):
            self._tunnel_over(connection)
            return dialled
        address = str(dialled.peername[0]) if dialled.peername else None
        problem = self._changed_meanwhile(connection, access, target, address, "tcp")
        if problem is not None:
            await dialled.abort(problem.reason)
            self._tunnel_over(connection)
            return problem
        connection.target, connection.target_address, connection.proto = target, address, "tcp"
        return dialled

    def _changed_meanwhile(
        self,
        connection: HandshakeConnection,
        access: Access,
        target: Target,
        address: str | None,
        proto: str,
    ) -> HandshakeRejection | None:
        """A reload came while the target was dialled: the new rules decide."""
        if self.access is access:
            return None
        why = tunnel_revoked(connection.user, target, address, proto, access, self.access)
        return None if why is None else HandshakeRejection(Failure.FORBIDDEN, why)

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
        user = self._shown_user(connection.user)
        logger.info(
            "rejected peer=%s%s status=%d reason=%s%s",
            connection.client_peer,
            f" user={user}" if user is not None else "",
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
        target, connection.user = checked
        client = client_host(connection.client_peer)
        refused = self.limits.acquire(client)
        if refused is not None:
            return self._reject(connection, refused)
        self._connections.add(connection)
        lost_waiter(connection).add_done_callback(lambda _: self._gone(connection, client))
        if target is None:
            return None  # wstun.v2 without a target: tunnels will be opened in-band
        if offers(request.headers.get_all("Sec-WebSocket-Protocol"), SUBPROTOCOL_UDP):
            return await self._dial_udp(connection, target)
        dialled = await self._dial(connection, target)
        if isinstance(dialled, HandshakeRejection):
            return self._reject(connection, dialled)
        connection.target_stream = dialled
        return None

    async def _dial_udp(self, connection: HandshakeConnection, target: Target) -> Response | None:
        """The UDP target of a ``wstun.udp.v1`` upgrade: counted, checked, connected."""
        refused = self._take_tunnel(connection)
        if refused is not None:
            return self._reject(connection, refused)
        access = self.access
        udp = await self.targets.dial_udp(target, access.policy_for(connection.user or ANONYMOUS))
        if isinstance(udp, HandshakeRejection):
            self._tunnel_over(connection)
            return self._reject(connection, udp)
        address = str(udp.sock.getpeername()[0]) if udp.sock is not None else None
        problem = self._changed_meanwhile(connection, access, target, address, "udp")
        if problem is not None:
            udp.close()
            self._tunnel_over(connection)
            return self._reject(connection, problem)
        connection.udp_socket, connection.target = udp, target
        connection.target_address, connection.proto = address, "udp"
        return None

    def _gone(self, connection: HandshakeConnection, client: str) -> None:
        self._connections.discard(connection)
        self._tunnel_over(connection)
        self.limits.release(client)

    def _probe(self, connection: HandshakeConnection, request: Request) -> Response:
        """A client's check at startup (the health path with CHECK_HEADER): 200 when
        the token is the server's (or none is needed), else the 401 a tunnel would get."""
        user = self.checks.identify(request.headers)
        if isinstance(user, HandshakeRejection):
            return self._reject(connection, user)
        shown = f" user={user}" if self._shown_user(user) else ""
        logger.debug("probe peer=%s%s ok", connection.client_peer, shown)
        return connection.respond(200, PROBE_OK_TOKEN if self.access.needs_token else PROBE_OK)

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
            dial=lambda target: self._dial(connection, target),
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
        report.user = connection.user
        try:
            return await self._relayed(ws, target_stream, ws, report, ("client", "target"))
        finally:
            self._tunnel_over(connection)

    async def _udp_flow(self, connection: HandshakeConnection) -> None:
        """A UDP flow: datagrams between the WebSocket and the target's socket."""
        udp, connection.udp_socket = connection.udp_socket, None
        if udp is None or connection.target is None:
            await connection.close(CloseCode.PROTOCOL_ERROR, "no UDP target")
            return
        report = FlowReport(new_tunnel_id("s"), connection.client_peer, f"{connection.target}/udp")
        report.user = connection.user
        flow = DatagramFlow(
            connection, udp.send, report, outbound="down", timeout=self.config.udp_timeout
        )
        udp.attach(flow)
        try:
            await self._carry_flow(flow)
        finally:
            udp.close()
            self._tunnel_over(connection)

    async def _carry_flow(self, flow: DatagramFlow) -> None:
        """A UDP flow (``-L .../udp``, or on a ``-R .../udp`` lease) until it ends:
        counted, logged, and ended at once on drain."""
        flow.report.user = self._shown_user(flow.report.user)
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
        report.user = self._shown_user(report.user)
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

    # Live changes: SIGHUP and --reload-interval.

    def request_reload(self, why: str) -> None:
        """Reload in the background (from a signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload(why))
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def reload(self, why: str) -> bool:
        """Read the users and policy files again; False (old rules kept) if they are broken.

        The new rules are checked whole before anything changes; then they
        apply to every new tunnel at once, and whatever is open that they no
        longer allow is closed with 1008 and the reason.
        """
        async with self._reloading:
            source = self.config.rules_source
            if source is None or not source.files:
                logger.info("reload (%s): no --users-file or --policy-file to read again", why)
                return True
            try:
                access = source.load(self.config.token)
            except ConfigError as exc:
                self.metrics.reloads.labels("error").inc()
                logger.error("reload (%s) failed, the rules in force stay: %s", why, exc)
                return False
            old, self.access = self.access, access
            self.checks.access = access
            listeners = await self._revoke_leases(old, access)
            tunnels = await self._revoke_tunnels(old, access)
            self.metrics.reloads.labels("ok").inc()
            logger.info(
                "reloaded (%s): %s; tunnels closed: %d; reverse listeners closed: %d",
                why,
                Changes.between(old, access).line(),
                tunnels,
                listeners,
            )
            return True

    async def _revoke_leases(self, old: Access, new: Access) -> int:
        """Close the reverse listeners the new rules no longer allow; how many."""
        revoked: list[tuple[Lease, str]] = []
        for lease in self.reverse.leases:
            why = lease_revoked(lease.user, lease.bind, lease.proto, old, new)
            if why is not None:
                revoked.append((lease, why))
        await asyncio.gather(*(self.reverse.revoke(lease, why) for lease, why in revoked))
        return len(revoked)

    async def _revoke_tunnels(self, old: Access, new: Access) -> int:
        """Close (1008) every WebSocket whose user is gone, or whose tunnel's target the
        new rules no longer allow; how many of them carried a tunnel."""
        closing: list[tuple[HandshakeConnection, str]] = []
        for connection in list(self._connections):
            why = tunnel_revoked(
                connection.user,
                connection.target,
                connection.target_address,
                connection.proto,
                old,
                new,
            )
            if why is not None:
                closing.append((connection, why))
        carrying = 0
        for connection, why in closing:
            if connection.target is not None:
                carrying += 1
            logger.info(
                "closing peer=%s user=%s target=%s: %s",
                connection.client_peer,
                connection.user,
                connection.target or "-",
                why,
            )
        await asyncio.gather(
            *(
                connection.close_within(CloseCode.POLICY_VIOLATION, why)
                for connection, why in closing
            )
        )
        return carrying

    async def _watch_files(self, interval: float) -> None:
        """``--reload-interval``: reload when the files' content changes (a Kubernetes
        Secret is replaced under the process, and no one sends SIGHUP)."""
        source = self.config.rules_source
        assert source is not None
        seen = fingerprint(source.files)
        while True:
            await asyncio.sleep(interval)  # the polling period itself, not a wait for an event
            now = fingerprint(source.files)
            if now != seen:
                seen = now
                await self.reload("files changed")

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
        source = cfg.rules_source
        if cfg.reload_interval is not None and source is not None and source.files:
            self._watch = asyncio.get_running_loop().create_task(
                self._watch_files(cfg.reload_interval)
            )
        if cfg.metrics_listen is not None:
            if cfg.metrics_dir is not None:  # --workers N: this worker serves them all
                self.metrics.expose_all_processes(cfg.metrics_dir)
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
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
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
    users = config.users
    if users is not None and not users.users and not config.token:
        notes = [
            (
                logging.WARNING,
                "the users file has no users and there is no --token-file: every tunnel "
                "will be refused with 401",
            )
        ]
    elif users is not None:
        names = ", ".join(users.names) or "none"
        also = "; and the --token-file token, with the server-wide rules" if config.token else ""
        notes = [
            (
                logging.INFO,
                f"users: {len(users.users)} ({names}), each with a token of their own{also}",
            )
        ]
    elif config.token:
        notes = [(logging.INFO, "token required: clients send it with --token-file or WSTUN_TOKEN")]
    else:
        notes = [(logging.WARNING, "no token: anyone who reaches this port may open tunnels")]
    allow, deny = len(policy.allow), len(policy.deny)
    default = f", default target {config.default_target}" if config.default_target else ""
    if users is not None and not allow and any(user.policy.allow for user in users.users):
        notes.append((logging.INFO, "targets: only the users' own allow rules"))
    elif not allow:
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
    """Serve until ``stop`` is set, drain for ``config.grace`` seconds, then end tunnels;
    SIGHUP reads the users and policy files again."""
    server = TunnelServer(config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, server.request_reload, "SIGHUP")
    try:
        await serve_until(server, stop, config.grace, logger)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
