"""The pure query-string and upgrade checks the server applies before dialling."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from wstun.common.protocol import Failure
from wstun.common.streams.internals import parse_failure
from wstun.server.badinput import handshake_problem, parse_failure_rejection, query_problem


@pytest.mark.parametrize(
    ("query", "token", "reason"),
    [
        ("to=db:5432", None, None),
        ("to=abc.internal:80", b"abc", None),  # the token as part of a value is fine
        ("to=db:5432&route=blue", b"s3cret", None),
        ("to=db:5432&token=x", None, "credentials"),
        ("to=db:5432&Access_Token=x", None, "credentials"),
        ("to=db:5432&x=s3cret", b"s3cret", "credentials"),
        ("to=db:5432&s3cret", b"s3cret", "credentials"),
        ("to=db:5432&x=s3cr%65t", b"s3cret", "credentials"),
        ("to=%ff", None, "not valid UTF-8"),
        ("a=1&" * 17, None, "more than 16 fields"),
        ("x=" + "a" * 2047, None, "longer than 2048"),
    ],
)
def test_query_problem(query: str, token: bytes | None, reason: str | None) -> None:
    """Credentials, bad encodings and oversized queries are refused, never quoted."""
    problem = query_problem(query, token)
    if reason is None:
        assert problem is None
        return
    assert problem is not None
    assert problem.failure is Failure.BAD_REQUEST
    assert reason in problem.reason
    assert "s3cret" not in problem.reason


def request(method: str = "GET", protocol: str = "HTTP/1.1", **headers: str) -> Request:
    base = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    req = Request("/", Headers({**base, **headers}))
    # Set after construction: websockets before 17 has no such fields.
    req.method, req.protocol = method, protocol
    return req


def status(req: Request) -> int | None:
    problem = handshake_problem(req)
    return problem.status if problem else None


def test_handshake_problem() -> None:
    """Method, protocol version, key and WebSocket version are checked before the dial."""
    assert status(request()) is None
    assert status(request(method="POST")) == 405
    assert status(request(protocol="HTTP/1.0")) == 505
    assert status(Request("/", Headers({"Sec-WebSocket-Version": "13"}))) == 400
    assert status(request(**{"Sec-WebSocket-Version": "8"})) == 426


def test_handshake_problem_without_method_fields() -> None:
    """A request of websockets before 17 (no method, no protocol) is a plain GET."""
    req = Request("/", Headers({"Sec-WebSocket-Key": "x", "Sec-WebSocket-Version": "13"}))
    for name in ("method", "protocol"):
        if name in vars(req):
            delattr(req, name)
    assert status(req) is None


def _raised(message: str, context: BaseException | None = None) -> ValueError:
    """An exception as websockets raises it, with ``context`` as what it handled."""
    try:
        try:
            if context is not None:
                raise context
        finally:
            raise ValueError(message)
    except ValueError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "lines_read", "status", "reason"),
    [
        # What websockets before 17 raises while parsing: the answers of 17.
        (_raised("unsupported HTTP method; expected GET; got POST"), 0, 405, "use GET"),
        (_raised("unsupported protocol; expected HTTP/1.1: GET / HTTP/1.0"), 0, 505, "HTTP/1.1"),
        (
            _raised("line too long", RuntimeError("read 9000 bytes, expected no more than 8192")),
            0,
            414,
            "8192",
        ),
        (_raised("line too long", RuntimeError("read 9000, no more than 8192")), 3, 431, "8192"),
        (_raised("too many HTTP headers"), 129, 431, "128 headers"),
        # And what every release raises.
        (_raised("unsupported protocol; expected HTTP/1.1: PRI * HTTP/2.0"), 0, 400, "protocol"),
        (UnicodeDecodeError("ascii", b"\xc3", 0, 1, "no"), 0, 400, "not ASCII"),
        (_raised("invalid HTTP header line: X\x01"), 1, 400, "invalid HTTP header line"),
        (None, 0, 400, "malformed request"),
    ],
)
def test_parse_failure_rejection(
    cause: BaseException | None, lines_read: int, status: int, reason: str
) -> None:
    """An unparseable request gets the same answer whatever websockets release parsed it."""
    rejection = parse_failure_rejection(parse_failure(cause, lines_read))
    assert rejection.status == status
    assert reason in rejection.reason
    assert "\x01" not in rejection.reason
