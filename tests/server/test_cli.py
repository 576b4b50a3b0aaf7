"""wstun-server's command line: options, environment, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from wstun.server.cli import main


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)
    return result.exit_code, result.output


def test_defaults() -> None:
    """Without options the server listens on loopback:8080 and allows nothing."""
    code, out = run(["--check"], env={"WSTUN_TOKEN": ""})
    assert code == 0
    assert "listen: 127.0.0.1:8080" in out
    assert "allow: (none)" in out
    assert "token: not set" in out
    assert "ping interval: 20s" in out


def test_options_from_environment(tmp_path: Path) -> None:
    """Every option can come from WSTUN_*; repeatable ones split on spaces."""
    env = {
        "WSTUN_LISTEN": "0.0.0.0:9000",
        "WSTUN_ALLOW": "db:5432 cache:*",
        "WSTUN_TO": "[::1]:22",
        "WSTUN_PATH": "/tunnel/",
        "WSTUN_PING_INTERVAL": "0",
        "WSTUN_TOKEN": "s3cret",
    }
    code, out = run(["--check"], env=env)
    assert code == 0, out
    assert "listen: 0.0.0.0:9000" in out
    assert "allow: db:5432, cache:*, [::1]:22" in out
    assert "default target: [::1]:22" in out
    assert "path: /tunnel" in out
    assert "ping interval: off" in out
    assert "token: set" in out


def test_token_file(tmp_path: Path) -> None:
    """--token-file is read and trimmed; an empty file is an error."""
    good = tmp_path / "token"
    good.write_text("abc\n")
    assert "token: set" in run(["--check", "--token-file", str(good)])[1]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, out = run(["--check", "--token-file", str(empty)])
    assert code == 2
    assert "is empty" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow", "db"], "expected HOST:PORT"),
        (["--allow", "db:99999"], "between 1 and 65535"),
        (["--to", "db:0"], "between 1 and 65535"),
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--path", "tunnel"], "must start with '/'"),
        (["--connect-timeout", "0"], "--connect-timeout"),
        (["--ping-interval", "-1"], "--ping-interval"),
        (["--deny", "10.0.0.1/8:*"], "bad rule '10.0.0.1/8:*'"),
    ],
)
def test_bad_options_are_clear_errors(args: list[str], message: str) -> None:
    """Bad options exit 2 with a message naming the problem."""
    code, out = run([*args, "--check"])
    assert code == 2
    assert message in out


def test_help_mentions_environment() -> None:
    """--help documents the options and the WSTUN_ environment."""
    code, out = run(["--help"])
    assert code == 0
    for word in ["--listen", "--allow", "--to", "--token-file", "--ping-interval", "WSTUN_"]:
        assert word in out


def test_proxy_tls_and_metrics_options(tmp_path: Path) -> None:
    """--trusted-proxy (repeatable), --tls-cert/--tls-key and --metrics-listen are shown."""
    cert = trustme.CA().issue_cert("wstun.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    code, out = run(
        ["--check", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1",
         "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
         "--metrics-listen", "127.0.0.1:9100"]
    )  # fmt: skip
    assert code == 0, out
    assert "trusted proxies: 10.0.0.0/8, ::1/128" in out
    assert "tls: on" in out
    assert "metrics: 127.0.0.1:9100" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trusted-proxy", "10.0.0.300/8"], "--trusted-proxy"),
        (["--tls-cert", "{cert}", "--tls-key", "{cert}"], "can't load"),
    ],
)
def test_bad_proxy_and_tls_options(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad network or a certificate without its key is a clear startup error."""
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    args = [arg.format(cert=tmp_path / "cert.pem") for arg in args]
    result = CliRunner().invoke(main, ["--check", *args], env={})
    assert result.exit_code == 2
    assert message in result.output


def test_deny_and_policy_file(tmp_path: Path) -> None:
    """--deny and --policy-file rules show up in --check; a bad file rule names itself."""
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["*.internal:443"]\ndeny = ["10.0.0.0/8:*"]\n')
    code, out = run(
        ["--check", "--allow", "db:5432", "--deny", "*:25", "--policy-file", str(policy)]
    )
    assert code == 0, out
    assert "allow: db:5432, *.internal:443" in out
    assert "deny: *:25, 10.0.0.0/8:*" in out
    policy.write_text('allow = ["db:70000"]\n')
    code, out = run(["--check", "--policy-file", str(policy)])
    assert code == 2
    assert "port in rule 'db:70000' must be between 1 and 65535" in out


def test_metrics_go_with_several_workers() -> None:
    """--metrics-listen with --workers 2 is a good configuration (one /metrics for all)."""
    code, out = run(["--check", "--workers", "2", "--metrics-listen", "127.0.0.1:9100"])
    assert code == 0
    assert "metrics: 127.0.0.1:9100" in out
    assert "workers: 2" in out


def test_check_shows_seconds_alike() -> None:
    """--check writes every duration the same way: 20s, not 20.0 beside 10s."""
    code, out = run(["--check", "--allow", "db:5432"])
    assert code == 0, out
    assert "ping interval: 20s" in out
    assert "ping timeout: 20s" in out
    assert "connect timeout: 10s" in out
    assert "idle timeout: off" in out


def test_bad_value_from_the_environment_names_the_variable() -> None:
    """A bad WSTUN_MAX_CONNECTIONS is reported as the variable the user set."""
    code, out = run(["--check"], env={"WSTUN_MAX_CONNECTIONS": "many"})
    assert code == 2
    assert "Invalid value for WSTUN_MAX_CONNECTIONS (from the environment)" in out


def test_unreadable_token_file_says_who_must_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token file the process may not read (a compose secret with the wrong mode) says
    which uid and gid must be able to read it."""
    token = tmp_path / "token"
    token.write_text("secret")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads any file: inject the refusal
    code, out = run(["--check", "--token-file", str(token)])
    assert code == 2
    assert f"runs as uid {os.getuid()}, gid {os.getgid()}" in out


def test_listen_rules_and_reverse_limits(tmp_path: Path) -> None:
    """--allow-listen, the policy file's allow_listen and the reverse limits show in --check;
    a listen rule naming a host is a clear error."""
    policy = tmp_path / "policy.toml"
    policy.write_text('allow_listen = ["0.0.0.0:8000"]\n')
    code, out = run(["--check"])
    assert "allow listen: (none: no -R)" in out
    code, out = run(
        ["--check", "--allow-listen", "127.0.0.1:9000-9100", "--allow-listen", "[::1]:*",
         "--policy-file", str(policy), "--reverse-grace", "5", "--reverse-max-leases", "3",
         "--reverse-max-pending", "10"]
    )  # fmt: skip
    assert code == 0, out
    assert "allow listen: 127.0.0.1:9000-9100, [::1]:*, 0.0.0.0:8000" in out
    assert "reverse grace: 5s" in out
    assert "reverse max leases per client: 3" in out
    assert "reverse max pending per lease: 10" in out
    code, out = run(["--check", "--allow-listen", "laptop.example:9000"])
    assert code == 2
    assert "--allow-listen" in out
    assert "the host is a bind address" in out
    code, out = run(["--check"], env={"WSTUN_ALLOW_LISTEN": "10.0.0.0/8:22"})
    assert "allow listen: 10.0.0.0/8:22" in out


def test_udp_rules_and_timeout() -> None:
    code, out = run(["--check", "--allow", "10.0.0.2:53/udp", "--udp-timeout", "7"])
    assert code == 0, out
    assert "allow: 10.0.0.2:53/udp" in out
    assert "udp timeout: 7s" in out
    code, out = run(["--check", "--allow", "10.0.0.2:53/sctp"])
    assert code == 2
