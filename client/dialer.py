"""The client's way to the server: one WebSocket per tunnel, the target in the URL.

:class:`WebSocketDialer` is the :class:`~wstun.client.tunnel.Dialer` every
mode uses today: it opens a WebSocket to ``URL?to=HOST:PORT`` offering
``wstun.v1``, and turns every way that can fail into a
:class:`HandshakeError` with the server's status and reason, or status 0
and what went wrong on the way.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    ProxyError,
)
from websockets.typing import Subprotocol

from wstun.client.config import ClientConfig
from wstun.client.diagnose import SchemeProbe, direct_address, looks_like_tls
from wstun.client.probe import probe
from wstun.client.tls import client_tls_context, describe_tls_error
from wstun.common import __version__
from wstun.common.errors import HandshakeError, describe_os_error
from wstun.common.protocol import (
    AUTHORIZATION_HEADER,
    SUBPROTOCOL,
    Target,
    build_tunnel_url,
)
from wstun.common.streams import WS_OPTIONS, ByteStream, TunnelClientConnection, WebSocketStream
from wstun.common.streams.internals import environment_proxy

__all__ = ["PLAIN_SERVER", "TLS_SERVER", "WebSocketDialer"]

#: The advice for ws:// at a port that speaks TLS, and for wss:// at one that doesn't.
TLS_SERVER = "the server speaks TLS: use wss://"
PLAIN_SERVER = "the server answered without TLS: use ws:// (or put a TLS proxy in front)"


# A server that took the connection and dropped it before answering; a reset
# may surface as any of these, or as a ConnectionClosed, depending on timing.
_DROPPED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _first_line(body: bytes, fallback: str) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text.splitlines()[0][:300] if text else fallback


class WebSocketDialer:
    """Opens one WebSocket to the server per tunnel (``config`` says how)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        # Built once: it loads the CA bundle (and warns about --insecure).
        self._tls = (
            client_tls_context(config.cacert, insecure=config.insecure) if config.secure else None
        )
        headers = list(config.headers)
        if config.token:
            headers.append((AUTHORIZATION_HEADER, f"Bearer {config.token}"))
        self._headers = headers
        self._probe = SchemeProbe()
        # Looked up once: websockets would read the environment on every connect.
        self._proxy = environment_proxy(config.url) if config.proxy is True else config.proxy

    async def probe(self) -> str:
        """Ask the server, once, whether it is there and takes the token; opens no tunnel.

        Returns what to log; HandshakeError says why the server can't be used.
        """
        config = self.config
        parts = urlsplit(config.url)
        host = parts.hostname or ""
        address = direct_address(config.url, None) or (host, 0)
        if config.connect_to is not None:
            address = (config.connect_to.host, config.connect_to.port)
        proxy = None if config.connect_to is not None else self._proxy
        if proxy is not None and proxy.startswith("socks"):
            # The check speaks HTTP CONNECT only; tunnels go through the SOCKS proxy.
            return f"server not checked at startup (through the SOCKS proxy {_shown(proxy)})"
        try:
            status, reason = await probe(
                config.url,
                address=address,
                proxy=proxy,
                tls=self._tls,
                server_name=config.tls_server_name or host,
                headers=self._headers,
                timeout=config.connect_timeout,
            )
        except HandshakeError:
            raise
        except Exception as exc:
            raise await self._explain(exc) from exc
        if status == 200:
            return f"server ok ({reason})"
        raise HandshakeError(status, reason)

    async def _explain(self, exc: Exception) -> HandshakeError:
        """What went wrong before the upgrade, in words that say what to do."""
        config = self.config
        if isinstance(exc, InvalidStatus):
            response = exc.response
            body = bytes(response.body or b"")
            if not config.secure and response.status_code == 400 and b"HTTPS port" in body:
                return HandshakeError(0, TLS_SERVER)  # nginx: "plain HTTP ... to HTTPS port"
            return HandshakeError(response.status_code, _first_line(body, response.reason_phrase))
        if isinstance(exc, ProxyError):
            return HandshakeError(0, f"proxy failed: {exc}")
        if isinstance(exc, TimeoutError):
            return HandshakeError(
                0, f"server did not complete the handshake within {config.connect_timeout:g}s"
            )
        scheme = await self._wrong_scheme(exc)
        if scheme is not None:
            return HandshakeError(0, scheme)
        if isinstance(exc, (ConnectionClosed, *_DROPPED)) or (
            isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError)
        ):
            # Closed or reset, seen on the write or on the read: one failure.
            return HandshakeError(
                0, "the server closed the connection before answering the upgrade"
            )
        if isinstance(exc, InvalidHandshake):
            return HandshakeError(0, f"bad handshake from server: {exc}")
        if isinstance(exc, ssl.SSLError):
            return HandshakeError(0, describe_tls_error(exc))
        if isinstance(exc, OSError):
            return HandshakeError(0, f"can't reach server: {describe_os_error(exc)}")
        return HandshakeError(0, f"can't open a tunnel: {type(exc).__name__}: {exc}")

    async def _wrong_scheme(self, exc: Exception) -> str | None:
        """Advice when the failure looks like ws:// at a TLS port, or wss:// at a plain one."""
        config = self.config
        if config.secure and isinstance(exc, ssl.SSLError) and "WRONG_VERSION" in str(exc):
            return PLAIN_SERVER  # it answered, and not in TLS
        if isinstance(exc, InvalidMessage) and not isinstance(exc.__cause__, EOFError):
            # It answered something that isn't HTTP: no need to ask again.
            return TLS_SERVER if not config.secure and looks_like_tls(str(exc.__cause__)) else None
        if not isinstance(exc, ConnectionClosed | InvalidMessage | OSError) or isinstance(
            exc, ssl.SSLCertVerificationError
        ):
            return None
        if isinstance(exc, OSError) and not isinstance(exc, (*_DROPPED, ssl.SSLError)):
            return None  # no connection at all (refused, unreachable): nothing to ask the port
        # The server closed or reset without an answer: ask the port the other question.
        address = (
            (config.connect_to.host, config.connect_to.port)
            if config.connect_to is not None
            else direct_address(config.url, config.proxy)
        )
        if address is None:
            return None  # through a proxy: the port can't be asked directly
        if not config.secure and await self._probe.ask("tls", *address):
            return TLS_SERVER
        if config.secure and await self._probe.ask("http", *address):
            return PLAIN_SERVER
        return None

    def _connect_options(self, url: str) -> dict[str, Any]:
        config = self.config
        options: dict[str, Any] = {"proxy": self._proxy}
        if self._tls is not None:
            options["ssl"] = self._tls
            if config.tls_server_name is not None:
                options["server_hostname"] = config.tls_server_name
        if config.connect_to is not None:
            # A fixed address is dialled directly: no proxy from the environment.
            options.update(host=config.connect_to.host, port=config.connect_to.port, proxy=None)
        return options

    async def _connect(
        self, url: str, subprotocols: tuple[str, ...] = (SUBPROTOCOL,)
    ) -> TunnelClientConnection:
        connection = await connect(
            url,
            additional_headers=self._headers,
            subprotocols=[Subprotocol(name) for name in subprotocols],
            create_connection=TunnelClientConnection,
            **WS_OPTIONS,
            open_timeout=self.config.connect_timeout,
            user_agent_header=f"wstun/{__version__}",
            **self._connect_options(url),
        )
        assert isinstance(connection, TunnelClientConnection)
        return connection

    async def connect(
        self, target: Target | None, subprotocols: tuple[str, ...]
    ) -> TunnelClientConnection:
        """A WebSocket to the server, its upgrade naming ``target`` (or none: wstun.v2's
        idle WebSocket), offering ``subprotocols``; HandshakeError if refused."""
        try:
            return await self._connect(build_tunnel_url(self.config.url, target), subprotocols)
        except Exception as exc:
            raise await self._explain(exc) from exc

    async def dial(self, target: Target, early: ByteStream | None = None) -> WebSocketStream:
        """Open a WebSocket to the server for ``target``; HandshakeError if refused.
        (``early`` is not used: the target is checked before the upgrade's answer.)"""
        return self.stream(await self.connect(target, (SUBPROTOCOL,)))

    def stream(self, connection: TunnelClientConnection) -> WebSocketStream:
        """The one tunnel of a WebSocket that isn't ``wstun.v2``: EOF markers with
        ``wstun.v1``, none with a plain WebSocket peer; its own keepalive."""
        return WebSocketStream(
            connection,
            eof_markers=connection.subprotocol == SUBPROTOCOL,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
        )


def _shown(proxy: str) -> str:
    """A proxy URL without its credentials, for a log line."""
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
