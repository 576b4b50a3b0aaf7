"""Target policy: nothing is allowed unless a rule allows it."""

from __future__ import annotations

import pytest

from common.errors import TargetError
from common.protocol import Target
from server.policy import Policy, parse_rule


@pytest.mark.parametrize(
    ("rules", "target", "allowed_by"),
    [
        ([], "127.0.0.1:6379", None),
        (["127.0.0.1:6379"], "127.0.0.1:6379", "127.0.0.1:6379"),
        (["127.0.0.1:6379"], "127.0.0.1:6380", None),
        (["127.0.0.1:6379"], "127.0.0.2:6379", None),
        (["db.internal:*"], "DB.internal:5432", "db.internal:*"),
        (["db.internal:*"], "db.internal.:1", "db.internal:*"),
        (["db.internal:*"], "cache.internal:5432", None),
        (["web:8000-8100"], "web:8000", "web:8000-8100"),
        (["web:8000-8100"], "web:8100", "web:8000-8100"),
        (["web:8000-8100"], "web:8101", None),
        (["*:443"], "anything.example:443", "*:443"),
        (["*:443"], "anything.example:80", None),
        (["*:*"], "10.1.2.3:1", "*:*"),
        (["[::1]:22"], "[0:0::1]:22", "[::1]:22"),
        (["[::1]:22"], "127.0.0.1:22", None),
        (["a:1", "b:*"], "b:9", "b:*"),
    ],
)
def test_policy_table(rules: list[str], target: str, allowed_by: str | None) -> None:
    """Each target is allowed by the first matching rule, or by none."""
    host, _, port = target.rpartition(":")
    rule = Policy.from_patterns(rules).allowing_rule(Target(host.strip("[]"), int(port)))
    assert (str(rule) if rule else None) == allowed_by


def test_default_target_is_allowed_implicitly() -> None:
    """--to adds an exact rule for itself and nothing more."""
    policy = Policy.from_patterns([], Target("127.0.0.1", 8000))
    assert policy.allowing_rule(Target("127.0.0.1", 8000)) is not None
    assert policy.allowing_rule(Target("127.0.0.1", 8001)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db", "expected HOST:PORT"),
        (":80", "expected HOST:PORT"),
        ("db:0", "between 1 and 65535"),
        ("db:9-1", "runs backwards"),
        ("db:x", "must be a number"),
        ("::1:22", "need brackets"),
        ("[::1]22", "expected \\[IPv6\\]:PORT"),
        ("[zz]:22", "not an IPv6 address"),
    ],
)
def test_bad_rule_is_a_clear_error_naming_the_rule(text: str, message: str) -> None:
    """A malformed --allow pattern raises an error that names it."""
    with pytest.raises(TargetError, match=message) as info:
        parse_rule(text)
    assert repr(text) in str(info.value)
