"""The pure query-string and upgrade checks the server applies before dialling."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from common.protocol import Failure
from server.badinput import handshake_problem, query_problem


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
    return Request("/", Headers({**base, **headers}), method=method, protocol=protocol)


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
