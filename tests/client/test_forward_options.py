"""Client option parsing and the log flood guard, tested without sockets."""

from __future__ import annotations

import logging

import pytest

from wstun.client.failures import FailureLog
from wstun.client.forward import Forward, parse_forward
from wstun.common.errors import TargetError
from wstun.common.protocol import Target


@pytest.mark.parametrize(
    ("text", "bind", "remote"),
    [
        ("5432:db.internal:5432", Target("127.0.0.1", 5432), Target("db.internal", 5432)),
        ("0.0.0.0:80:web:8080", Target("0.0.0.0", 80), Target("web", 8080)),
        ("16379:127.0.0.1:6379", Target("127.0.0.1", 16379), Target("127.0.0.1", 6379)),
        ("2222:[::1]:22", Target("127.0.0.1", 2222), Target("::1", 22)),
        ("[::1]:2222:[fd00::5]:22", Target("::1", 2222), Target("fd00::5", 22)),
        (":0:db:1", Target("127.0.0.1", 0), Target("db", 1)),
    ],
)
def test_parse_forward(text: str, bind: Target, remote: Target) -> None:
    """-L takes [BIND:]PORT:HOST:HOSTPORT like ssh, IPv6 in brackets."""
    assert parse_forward(text) == Forward(bind, remote)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5432", "expected \\[BIND:\\]PORT:HOST:HOSTPORT"),
        ("5432:db", "expected \\[BIND:\\]PORT:HOST:HOSTPORT"),
        ("a:b:c:d:e", "expected \\[BIND:\\]PORT:HOST:HOSTPORT"),
        ("x:db:5432", "must be a number"),
        ("70000:db:5432", "between 0 and 65535"),
        ("5432:db:0", "between 1 and 65535"),
        ("5432:[::1:22", "missing ']'"),
        ("5432:::1:22", "IPv6 addresses need brackets, e.g. 5432:\\[::1\\]:22"),
    ],
)
def test_parse_forward_rejects(text: str, message: str) -> None:
    """Malformed -L specs are clear errors."""
    with pytest.raises(TargetError, match=message):
        parse_forward(text)


def test_failure_log_reports_each_failure_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Identical failures within the interval are counted, not logged again."""
    now = [0.0]
    log = FailureLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="wstun.client"):
        results = [log.log("refused: 403 target not allowed") for _ in range(50)]
        assert log.log("refused: 401 invalid token")
        now[0] = 10.5
        assert log.log("refused: 403 target not allowed")
    assert results.count(True) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused: 403 target not allowed",
        "refused: 401 invalid token",
        "refused: 403 target not allowed (49 more like this since the last report)",
    ]
