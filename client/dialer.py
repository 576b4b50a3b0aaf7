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

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, ProxyError
from websockets.typing import Subprotocol

from wstun.client.config import ClientConfig
from wstun.client.tls import client_tls_context, describe_tls_error
from wstun.common import __version__
from wstun.common.errors import HandshakeError, describe_os_error
from wstun.common.protocol import AUTHORIZATION_HEADER, SUBPROTOCOL, Target, build_tunnel_url
from wstun.common.streams import WS_OPTIONS, TunnelClientConnection, WebSocketStream

__all__ = ["WebSocketDialer"]


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

    def _connect_options(self, url: str) -> dict[str, Any]:
        config = self.config
        options: dict[str, Any] = {"proxy": config.proxy}
        if self._tls is not None:
            options["ssl"] = self._tls
            if config.tls_server_name is not None:
                options["server_hostname"] = config.tls_server_name
        if config.connect_to is not None:
            # A fixed address is dialled directly: no proxy from the environment.
            options.update(host=config.connect_to.host, port=config.connect_to.port, proxy=None)
        return options

    async def dial(self, target: Target) -> WebSocketStream:
        """Open a WebSocket to the server for ``target``; HandshakeError if refused."""
        config = self.config
        url = build_tunnel_url(config.url, target)
        try:
            connection = await connect(
                url,
                additional_headers=self._headers,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                create_connection=TunnelClientConnection,
                **WS_OPTIONS,
                open_timeout=config.connect_timeout,
                user_agent_header=f"wstun/{__version__}",
                **self._connect_options(url),
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
