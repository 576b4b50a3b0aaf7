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
from websockets.http11 import MAX_NUM_HEADERS, Request, Response
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol

from wstun.common.protocol import Failure, HandshakeRejection
from wstun.common.report import format_peer
from wstun.common.streams import TunnelServerConnection

__all__ = [
    "CREDENTIAL_KEYS",
    "MAX_QUERY_FIELDS",
    "MAX_QUERY_LENGTH",
    "NOT_ASCII",
    "AnsweringConnection",
    "Reject",
    "connection_class",
    "handshake_problem",
    "parse_error_rejection",
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


#: A non-ASCII request line. websockets 17 refuses it while parsing; earlier
#: releases pass the path on with surrogate escapes, which no answer may quote.
NOT_ASCII = HandshakeRejection(Failure.BAD_REQUEST, "bad HTTP request: request line is not ASCII")

_WRONG_METHOD = HandshakeRejection(Failure.METHOD_NOT_ALLOWED, "WebSocket upgrades use GET")
_WRONG_PROTOCOL = HandshakeRejection(
    Failure.HTTP_VERSION_NOT_SUPPORTED, "WebSocket upgrades need HTTP/1.1"
)


def handshake_problem(request: Request) -> HandshakeRejection | None:
    """An upgrade websockets would refuse after the dial, refused before it instead.

    websockets before 17 has no ``method`` or ``protocol`` on a request: it
    parses only ``GET ... HTTP/1.1`` and refuses the rest while parsing
    (:func:`parse_error_rejection` gives those the same answers).
    """
    headers = request.headers
    if getattr(request, "method", "GET") != "GET":
        return _WRONG_METHOD
    if getattr(request, "protocol", "HTTP/1.1") != "HTTP/1.1":
        return _WRONG_PROTOCOL
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


# What websockets before 17 raises, while parsing, for what 17 parses and
# answers itself (414, 431) or leaves to the server (the method, HTTP/1.0).
_OLD_METHOD_ERROR = "unsupported HTTP method; expected GET; got "
_OLD_PROTOCOL_ERROR = "unsupported protocol; expected HTTP/1.1: "
_OLD_LINE_TOO_LONG = "line too long"
_OLD_TOO_MANY_HEADERS = "too many HTTP headers"


def parse_error_rejection(cause: BaseException | None, lines_read: int) -> HandshakeRejection:
    """The answer to a request websockets could not parse, the same on every release.

    ``lines_read`` is how many whole lines the reader had handed out, to tell
    a request line that is too long (414) from a header line (431).
    The reason never quotes the request: it may hold a secret or control bytes.
    """
    text = str(cause) if cause is not None else ""
    if text.startswith(_OLD_METHOD_ERROR):
        return _WRONG_METHOD
    if text.startswith(_OLD_PROTOCOL_ERROR) and text.endswith(" HTTP/1.0"):
        return _WRONG_PROTOCOL
    if text == _OLD_LINE_TOO_LONG and cause is not None:
        failure = Failure.URI_TOO_LONG if lines_read == 0 else Failure.HEADERS_TOO_LARGE
        return HandshakeRejection(failure, str(cause.__context__ or text))
    if text == _OLD_TOO_MANY_HEADERS:
        return HandshakeRejection(
            Failure.HEADERS_TOO_LARGE, f"expected no more than {MAX_NUM_HEADERS} headers"
        )
    if isinstance(cause, UnicodeError):
        return NOT_ASCII
    detail = text.partition(": ")[0] if cause is not None else "malformed request"
    if not (detail.isprintable() and detail.isascii()):
        detail = "malformed request"
    return HandshakeRejection(Failure.BAD_REQUEST, f"bad HTTP request: {detail}")


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
        if self.state is CONNECTING and not self.answered and isinstance(exc, InvalidMessage):
            # Handled here: websockets before 17 would re-raise it from the
            # handshake and log it as an error with a traceback.
            self.handshake_exc = None
            if not isinstance(exc.__cause__, EOFError):  # the client left: nobody to answer
                # Unparseable request: websockets would just close. Say why first.
                lines_read = getattr(self.reader, "lines_read", 0)
                rejection = parse_error_rejection(exc.__cause__, lines_read)
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
