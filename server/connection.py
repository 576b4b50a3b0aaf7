"""The server's WebSocket connection: what a handshake learns, and one refusal path.

websockets answers some malformed requests itself (414 for a request line
over 8 KiB, 431 for oversized or too many headers, 400 when an upgrade
lacks its key) and closes the connection *without any answer* when the
request can't be parsed at all (garbage bytes, a broken request line).
HTTP allows a ``400 Bad Request`` there, so :class:`HandshakeConnection`
gives one, and hands every non-101 answer websockets makes on its own to the
server's ``_reject``, so refusals are logged (and counted) in one place. The
hooks into websockets for that are in :mod:`wstun.common.streams.internals`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response
from websockets.server import ServerProtocol

from wstun.common.datagram import UdpSocket
from wstun.common.protocol import Failure, HandshakeRejection, Target
from wstun.common.report import format_peer
from wstun.common.streams import TcpStream, TunnelServerConnection
from wstun.common.streams.internals import ParseFailure, route_answers
from wstun.server.badinput import parse_failure_rejection

__all__ = ["HandshakeConnection", "Reject", "connection_class"]

#: ``(connection, rejection) -> response``: the server's one refusal path.
Reject = Callable[["HandshakeConnection", HandshakeRejection], Response]


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else "bad request"


class HandshakeConnection(TunnelServerConnection):
    """A server connection that carries what its handshake decided.

    ``target_stream`` holds the target connection dialled during the
    handshake until the tunnel handler takes it; if the handshake never
    completes, the connection aborts it when the socket goes away. Every
    refusal, the server's own or websockets', goes through ``server_reject``:
    subclass it per server with :func:`connection_class`.
    """

    server_reject: Reject
    server_tls_hint: Callable[[HandshakeConnection], None]

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        route_answers(protocol, self)
        super().__init__(protocol, *args, **kwargs)
        self.target_stream: TcpStream | None = None
        # A UDP flow's connected socket to its target, until the handler takes it.
        self.udp_socket: UdpSocket | None = None
        # The target that target_stream is connected to.
        self.target: Target | None = None
        # The real client's address (host:port), set during the handshake.
        self.client_peer: str = "-"
        # The user its token names (server/users.py), once the token is checked.
        self.user: str | None = None
        # What the tunnel it carries now was dialled to, for a reload's second look:
        # the address (None: no tunnel now) and ``tcp`` or ``udp``.
        self.target_address: str | None = None
        self.proto = "tcp"
        # Whether it holds one of its user's tunnels (ConnectionLimits.take_tunnel).
        self.holds_tunnel = False
        # The last response made by respond(): ours, already through _reject.
        self.responded: Response | None = None

    async def close_within(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, waited for 2 s at most; a connection already gone or
        slow to answer is left to websockets' own close timeout."""
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(self.close(code, reason[:120]), 2.0)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        stream, self.target_stream = self.target_stream, None
        if stream is not None:
            self.loop.create_task(stream.abort("handshake did not complete"))
        udp, self.udp_socket = self.udp_socket, None
        if udp is not None:
            udp.close()

    def tls_handshake_received(self) -> None:
        type(self).server_tls_hint(self)

    def respond(self, status: Any, text: str) -> Response:
        self.responded = super().respond(status, text)
        return self.responded

    def websockets_answer(self, response: Response) -> Response:
        """websockets' own answer (414, 431, 400, 503 while closing...), through
        the server's refusal path with the same status and reason."""
        try:
            failure = Failure(response.status_code)
        except ValueError:
            return response
        reason = _first_line(bytes(response.body or b"")).removeprefix(
            "Failed to open a WebSocket connection: "
        )
        return self._reject_unseen(HandshakeRejection(failure, reason.rstrip(".")))

    def parse_failure_answer(self, failure: ParseFailure) -> Response:
        return self._reject_unseen(parse_failure_rejection(failure))

    def _reject_unseen(self, rejection: HandshakeRejection) -> Response:
        """A refusal for a request the server never saw in ``process_request``."""
        if self.client_peer == "-":
            self.client_peer = format_peer(self.remote_address)
        return type(self).server_reject(self, rejection)


def connection_class(
    reject: Reject, tls_hint: Callable[[HandshakeConnection], None]
) -> type[HandshakeConnection]:
    """A :class:`HandshakeConnection` class whose refusals go to ``reject``, and
    whose TLS handshakes on a plain port to ``tls_hint``."""
    attributes = {"server_reject": staticmethod(reject), "server_tls_hint": staticmethod(tls_hint)}
    return type("ServerConnection", (HandshakeConnection,), attributes)
