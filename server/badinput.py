"""Clear answers for bad requests, and every refusal routed through one place.

websockets answers some malformed requests itself (414 for a request line
over 8 KiB, 431 for oversized or too many headers, 400 when an upgrade
lacks its key) and closes the connection *without any answer* when the
request can't be parsed at all (garbage bytes, a broken request line).
HTTP allows a ``400 Bad Request`` there, so :class:`AnsweringConnection`
gives one, and hands every non-101 answer websockets makes on its own to the
server's ``_reject``, so refusals are logged (and counted) in one place.

:func:`query_problem` and :func:`handshake_problem` are the pure checks the
server applies to the query string and the upgrade headers before it dials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol

from common.protocol import Failure, HandshakeRejection
from common.report import format_peer
from common.streams import TunnelServerConnection

__all__ = [
    "CREDENTIAL_KEYS",
    "MAX_QUERY_FIELDS",
    "MAX_QUERY_LENGTH",
    "AnsweringConnection",
    "Reject",
    "connection_class",
    "handshake_problem",
    "query_problem",
]

#: Longest query string accepted (a target needs well under 300 characters).
MAX_QUERY_LENGTH = 2048

#: Most ``key=value`` fields accepted in a query string.
MAX_QUERY_FIELDS = 16

#: Query keys that look like credentials: refused, so clients learn to use
#: the Authorization header (proxies and servers log URLs).
CREDENTIAL_KEYS = frozenset(
    {
        "token",
        "access_token",
        "auth",
        "authorization",
        "bearer",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
    }
)

#: ``(connection, rejection) -> response``: the server's one refusal path.
Reject = Callable[[TunnelServerConnection, HandshakeRejection], Response]


def query_problem(query: str, token: bytes | None) -> HandshakeRejection | None:
    """Why a query string is refused (400), or ``None`` when it is acceptable.

    The reason never quotes the query: it may hold a secret.
    """
    if len(query) > MAX_QUERY_LENGTH:
        return HandshakeRejection(
            Failure.BAD_REQUEST, f"query string longer than {MAX_QUERY_LENGTH} characters"
        )
    try:
        fields = parse_qsl(
            query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except UnicodeDecodeError:
        return HandshakeRejection(Failure.BAD_REQUEST, "query string is not valid UTF-8")
    except ValueError:
        return HandshakeRejection(
            Failure.BAD_REQUEST, f"query string has more than {MAX_QUERY_FIELDS} fields"
        )
    secret = token.decode() if token is not None else None
    if any(
        key.lower() in CREDENTIAL_KEYS or (secret is not None and secret in (key, value))
        for key, value in fields
    ):
        return HandshakeRejection(
            Failure.BAD_REQUEST,
            "credentials don't belong in the URL; send 'Authorization: Bearer <token>'",
        )
    return None


def handshake_problem(request: Request) -> HandshakeRejection | None:
    """An upgrade websockets would refuse after the dial, refused before it instead."""
    headers = request.headers
    if request.method != "GET":
        return HandshakeRejection(Failure.METHOD_NOT_ALLOWED, "WebSocket upgrades use GET")
    if request.protocol != "HTTP/1.1":
        return HandshakeRejection(
            Failure.HTTP_VERSION_NOT_SUPPORTED, "WebSocket upgrades need HTTP/1.1"
        )
    if "Sec-WebSocket-Key" not in headers:
        return HandshakeRejection(Failure.BAD_REQUEST, "missing Sec-WebSocket-Key header")
    if headers.get("Sec-WebSocket-Version") != "13":
        return HandshakeRejection(
            Failure.UPGRADE_REQUIRED, "unsupported WebSocket version; this server speaks 13"
        )
    return None


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else "bad request"


def _describe_parse_error(cause: BaseException | None) -> str:
    """What was wrong, without quoting the request: it may hold a secret or control bytes."""
    if isinstance(cause, UnicodeError):
        return "request line is not ASCII"
    if cause is None:
        return "malformed request"
    text = str(cause).partition(": ")[0]
    return text if text.isprintable() and text.isascii() else "malformed request"


class _AnsweringProtocol(ServerProtocol):
    """websockets' server protocol, answering unparseable requests with 400."""

    # Set by AnsweringConnection right after the class swap.
    connection: AnsweringConnection
    answered: bool

    def send_response(self, response: Response) -> None:
        connection = self.connection
        if response.status_code != 101 and response is not connection.responded:
            # websockets' own answer (414, 431, 400, 503 while closing...):
            # through the server's refusal path, same status and reason.
            try:
                failure = Failure(response.status_code)
            except ValueError:
                pass
            else:
                reason = _first_line(bytes(response.body or b"")).removeprefix(
                    "Failed to open a WebSocket connection: "
                )
                rejection = HandshakeRejection(failure, reason.rstrip("."))
                response = connection.reject_via_server(rejection)
        self.answered = True
        super().send_response(response)

    def send_eof(self) -> None:
        exc = self.handshake_exc
        if (
            self.state is CONNECTING
            and not self.answered
            and isinstance(exc, InvalidMessage)
            and not isinstance(exc.__cause__, EOFError)  # the client left: nobody to answer
        ):
            # Unparseable request: websockets would just close. Say why first.
            detail = _describe_parse_error(exc.__cause__)
            rejection = HandshakeRejection(Failure.BAD_REQUEST, f"bad HTTP request: {detail}")
            self.send_response(self.connection.reject_via_server(rejection))
            return  # send_response ends with send_eof(), which lands below
        super().send_eof()


class AnsweringConnection(TunnelServerConnection):
    """A server connection whose every refusal goes through the server's ``_reject``.

    Subclass it per server with :func:`connection_class`, which sets
    ``server_reject``.
    """

    server_reject: Reject

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        # A subclass that only overrides methods: swapping the class of the
        # protocol websockets built is safe and keeps all its state.
        protocol.__class__ = _AnsweringProtocol
        assert isinstance(protocol, _AnsweringProtocol)
        protocol.connection = self
        protocol.answered = False
        super().__init__(protocol, *args, **kwargs)
        # The last response made by respond(): ours, already through _reject.
        self.responded: Response | None = None

    def respond(self, status: Any, text: str) -> Response:
        self.responded = super().respond(status, text)
        return self.responded

    def reject_via_server(self, rejection: HandshakeRejection) -> Response:
        """A refusal for a request the server never saw in ``process_request``."""
        if self.client_peer == "-":
            self.client_peer = format_peer(self.remote_address)
        return type(self).server_reject(self, rejection)


def connection_class(reject: Reject) -> type[AnsweringConnection]:
    """An :class:`AnsweringConnection` class whose refusals go to ``reject``."""
    return type("ServerConnection", (AnsweringConnection,), {"server_reject": staticmethod(reject)})
