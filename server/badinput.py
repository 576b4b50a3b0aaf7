"""The pure checks a request passes before the server dials, and the answers to bad ones.

:func:`query_problem` and :func:`handshake_problem` are applied to the query
string and the upgrade headers; :func:`parse_failure_rejection` answers a
request websockets could not parse at all (the hooks that deliver it are in
:mod:`wstun.server.connection`). The answers are the same whichever
websockets release parsed the request.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from websockets.http11 import Request

from wstun.common.protocol import Failure, HandshakeRejection
from wstun.common.streams.internals import (
    ParseFailure,
    ParseProblem,
    request_line,
)

__all__ = [
    "CREDENTIAL_KEYS",
    "MAX_QUERY_FIELDS",
    "MAX_QUERY_LENGTH",
    "NOT_ASCII",
    "handshake_problem",
    "parse_failure_rejection",
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
    (:func:`parse_failure_rejection` gives those the same answers).
    """
    headers = request.headers
    method, protocol = request_line(request)
    if method != "GET":
        return _WRONG_METHOD
    if protocol != "HTTP/1.1":
        return _WRONG_PROTOCOL
    if "Sec-WebSocket-Key" not in headers:
        return HandshakeRejection(Failure.BAD_REQUEST, "missing Sec-WebSocket-Key header")
    if headers.get("Sec-WebSocket-Version") != "13":
        return HandshakeRejection(
            Failure.UPGRADE_REQUIRED, "unsupported WebSocket version; this server speaks 13"
        )
    return None


_PARSE_FAILURES = {
    ParseProblem.WRONG_METHOD: _WRONG_METHOD,
    ParseProblem.HTTP_1_0: _WRONG_PROTOCOL,
    ParseProblem.NOT_ASCII: NOT_ASCII,
}
_TOO_LARGE = {
    ParseProblem.REQUEST_LINE_TOO_LONG: Failure.URI_TOO_LONG,
    ParseProblem.HEADER_LINE_TOO_LONG: Failure.HEADERS_TOO_LARGE,
    ParseProblem.TOO_MANY_HEADERS: Failure.HEADERS_TOO_LARGE,
}


def parse_failure_rejection(failure: ParseFailure) -> HandshakeRejection:
    """The answer to a request websockets could not parse, the same on every release.

    The reason never quotes the request: it may hold a secret or control bytes.
    """
    problem, detail = failure
    known = _PARSE_FAILURES.get(problem)
    if known is not None:
        return known
    too_large = _TOO_LARGE.get(problem)
    if too_large is not None:
        return HandshakeRejection(too_large, detail)
    return HandshakeRejection(Failure.BAD_REQUEST, f"bad HTTP request: {detail}")
