"""The server's option checks, called directly (no click): each names the option at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from wstun.common.errors import ConfigError
from wstun.common.protocol import Target
from wstun.server.config import (
    policy_from,
    prefix_option,
    tls_context,
    trusted_proxies,
)


def test_policy_from_every_source(tmp_path: Path) -> None:
    """--allow, --deny, --to and the policy file make one policy; a bad rule names its option."""
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('allow = ["cache:6379"]\n')
    policy = policy_from(("db:5432",), ("10.0.0.0/8:*",), policy_file, Target("web", 80))
    assert {str(rule) for rule in policy.allow} == {"db:5432", "web:80", "cache:6379"}
    assert [str(rule) for rule in policy.deny] == ["10.0.0.0/8:*"]
    for args, option in [
        ((("db",), (), None, None), "--allow"),
        (((), ("db:x",), None, None), "--deny"),
    ]:
        with pytest.raises(ConfigError) as raised:
            policy_from(*args)  # type: ignore[arg-type]
        assert raised.value.option == option
    policy_file.write_text('allow = ["[::1:22"]\n')
    with pytest.raises(ConfigError) as raised:
        policy_from((), (), policy_file, None)
    assert raised.value.option == "--policy-file"


@pytest.mark.parametrize(
    ("call", "option"),
    [
        (lambda: prefix_option("tunnel"), "--path"),
        (lambda: trusted_proxies(("not-a-network",)), "--trusted-proxy"),
        (lambda: tls_context(None, Path("key.pem")), "--tls-key"),
        (lambda: tls_context(Path("/nonexistent/chain.pem"), None), "--tls-cert"),
    ],
)
def test_bad_values_name_their_option(call: object, option: str | None) -> None:
    """Each check raises ConfigError, with the option when one is at fault."""
    with pytest.raises(ConfigError) as raised:
        call()  # type: ignore[operator]
    assert raised.value.option == option


def test_good_values_pass() -> None:
    """Canonical forms come back; no TLS without a certificate."""
    assert prefix_option("/tunnel/") == "/tunnel"
    assert tls_context(None, None) is None
