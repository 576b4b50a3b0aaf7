"""The client's option checks and describe(), called directly (no click)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wstun.client.config import (
    ClientConfig,
    check_modes,
    check_tls_options,
    describe,
    socks_credentials,
)
from wstun.client.forward import parse_forward
from wstun.client.socks import Credentials, SocksProxy
from wstun.common.errors import ConfigError
from wstun.common.protocol import Target


def test_describe_lists_what_the_client_will_do() -> None:
    """describe() names the server, every mode, the token's presence, TLS and the proxy."""
    config = ClientConfig(
        url="wss://t.example/tunnel",
        forwards=(parse_forward("5432:db:5432"),),
        socks=(SocksProxy(Target("127.0.0.1", 1080), Credentials("alice", "pw")),),
        token="secret",
        headers=(("X-Gate", "value"),),
        cacert=Path("/etc/ca.pem"),
        tls_server_name="t.internal",
    )
    text = describe(config)
    assert text.splitlines() == [
        "server: wss://t.example/tunnel",
        "forward: 127.0.0.1:5432 -> db:5432",
        "socks5: 127.0.0.1:1080 (username/password)",
        "token: set",
        "tls verification: on, CAs from /etc/ca.pem",
        "header: X-Gate",
        "proxy: from the environment",
        "tls server name: t.internal",
        "pool: 2 idle WebSockets (idle 30s, lifetime 300s)",
        "metrics: off",
    ]
    assert "secret" not in text
    assert "value" not in text


@pytest.mark.parametrize(
    ("config", "line"),
    [
        (ClientConfig(url="ws://h/", stdio=Target("db", 22), proxy=None), "proxy: none"),
        (ClientConfig(url="ws://h/", proxy="http://p:3128"), "proxy: http://p:3128"),
        (
            ClientConfig(url="ws://h/", connect_to=Target("10.0.0.1", 80)),
            "connect to: 10.0.0.1:80 (directly)",
        ),
        (ClientConfig(url="wss://h/", insecure=True), "tls verification: OFF (--insecure)"),
        (ClientConfig(url="ws://h/", stdio=Target("db", 22)), "stdio: db:22"),
    ],
)
def test_describe_lines(config: ClientConfig, line: str) -> None:
    """Each setting has its own line in the summary."""
    assert line in describe(config).splitlines()


@pytest.mark.parametrize(
    ("kwargs", "message", "option"),
    [
        ({"url": "ws://h/", "cacert": Path("ca.pem")}, "--cacert applies to wss://", "--cacert"),
        ({"url": "ws://h/", "insecure": True}, "--insecure applies to wss://", "--insecure"),
        ({"url": "ws://h/", "tls_server_name": "x"}, "wss:// URLs only", "--tls-server-name"),
        (
            {"url": "wss://h/", "connect_to": Target("a", 1), "proxy": "http://p:1"},
            "can't go with --proxy",
            None,
        ),
        ({"url": "wss://h/", "cacert": Path("ca"), "insecure": True}, "contradict", None),
    ],
)
def test_tls_option_checks(kwargs: dict[str, object], message: str, option: str | None) -> None:
    """TLS options apply to wss:// only, --connect-to goes without --proxy."""
    arguments = {"cacert": None, "insecure": False, "tls_server_name": None, "connect_to": None}
    arguments |= {"proxy": None, **kwargs}
    url = str(arguments.pop("url"))
    with pytest.raises(ConfigError, match=message) as raised:
        check_tls_options(url, **arguments)  # type: ignore[arg-type]
    assert raised.value.option == option


def test_modes_and_socks_credentials(tmp_path: Path) -> None:
    """-W stands alone, something must be asked for, and SOCKS5 auth needs both halves."""
    with pytest.raises(ConfigError, match="can't go with -L, -D or -R"):
        check_modes((parse_forward("1:a:1"),), (), Target("db", 22))
    with pytest.raises(ConfigError, match="nothing to do"):
        check_modes((), (), None)
    check_modes((), (Target("127.0.0.1", 1080),), None)
    assert socks_credentials(None, None) is None
    with pytest.raises(ConfigError, match="go together"):
        socks_credentials("alice", None)
    password = tmp_path / "pw"
    password.write_text("sesame\n")
    assert socks_credentials("alice", password) == Credentials("alice", "sesame")
    with pytest.raises(ConfigError, match="can't read") as raised:
        socks_credentials("alice", tmp_path / "missing")
    assert raised.value.option == "--socks-password-file"
