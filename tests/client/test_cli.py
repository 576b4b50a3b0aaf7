"""wstun-client's command line: options, environment, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wstun.client.cli import main
from wstun.client.config import check_proxy_url


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)
    return result.exit_code, result.output


def test_forwards_listed() -> None:
    """Each -L is parsed into a listen address and a target."""
    code, out = run(
        ["--check", "-L", "5432:db:5432", "-L", "[::1]:2222:[fd00::5]:22", "ws://h:8080/"]
    )
    assert code == 0, out
    assert "forward: 127.0.0.1:5432 -> db:5432" in out
    assert "forward: [::1]:2222 -> [fd00::5]:22" in out


def test_from_environment() -> None:
    """URL, -L and the token can come from WSTUN_URL, WSTUN_LOCAL, WSTUN_TOKEN."""
    env = {"WSTUN_URL": "wss://h/t", "WSTUN_LOCAL": "1:a:1 2:b:2", "WSTUN_TOKEN": "x"}
    code, out = run(["--check"], env=env)
    assert code == 0, out
    assert "server: wss://h/t" in out
    assert "forward: 127.0.0.1:1 -> a:1" in out
    assert "forward: 127.0.0.1:2 -> b:2" in out
    assert "token: set" in out


def test_stdio_from_environment() -> None:
    """-W comes from WSTUN_STDIO, as the README says; a bad value is reported under
    that name."""
    code, out = run(["--check", "ws://h/"], env={"WSTUN_STDIO": "db.internal:22"})
    assert code == 0, out
    assert "stdio: db.internal:22" in out
    assert "from: stdio = environment (WSTUN_STDIO)" in out

    code, out = run(["--check", "ws://h/"], env={"WSTUN_STDIO": "db.internal"})
    assert code == 2, out
    assert "Invalid value for WSTUN_STDIO (from the environment)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-L", "5432:db:5432", "http://h/"], "ws:// or wss://"),
        (["-L", "5432:db", "ws://h/"], "HOST:HOSTPORT"),
        (["ws://h/"], "give at least one -L, -D or -R, or -W"),
        (["-L", "1:a:1"], "Missing argument 'URL'"),
        (["-L", "1:a:1", "--tls-server-name", "x", "ws://h/"], "wss:// URLs only"),
        (["-L", "1:a:1", "--connect-to", "10.0.0.1", "wss://h/"], "HOST:PORT"),
        (
            ["-L", "1:a:1", "--connect-to", "10.0.0.1:443", "--proxy", "http://p:3128", "wss://h/"],
            "can't go with --proxy",
        ),
    ],
)
def test_bad_options_are_clear_errors(args: list[str], message: str) -> None:
    """Bad options exit 2 with a message naming the problem."""
    code, out = run(["--check", *args])
    assert code == 2
    assert message in out


def test_token_with_whitespace_rejected() -> None:
    """A token that would break the Authorization header is refused up front."""
    code, out = run(["--check", "-L", "1:a:1", "ws://h/"], env={"WSTUN_TOKEN": "a b"})
    assert code == 2
    assert "whitespace" in out


def test_socks_and_stdio_listed(tmp_path: Path) -> None:
    """-D ports (with auth when configured) and -W are parsed and shown."""
    password = tmp_path / "password"
    password.write_text("sesame\n")
    auth = ["--socks-user", "alice", "--socks-password-file", str(password)]
    code, out = run(["--check", "-D", "1080", "-D", "[::1]:1081", "-L", "1:a:1", "ws://h/", *auth])
    assert code == 0, out
    assert "socks5: 127.0.0.1:1080 (username/password)" in out
    assert "socks5: [::1]:1081 (username/password)" in out
    assert "forward: 127.0.0.1:1 -> a:1" in out
    code, out = run(["--check", "-W", "[fd00::5]:22", "ws://h/"])
    assert code == 0, out
    assert "stdio: [fd00::5]:22" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-W", "db:22", "-L", "1:a:1", "ws://h/"], "can't go with -L, -D or -R"),
        (["-W", "db:22", "-D", "1080", "ws://h/"], "can't go with -L, -D or -R"),
        (["-W", "db", "ws://h/"], "expected HOST:PORT"),
        (["-D", "1080", "--socks-user", "alice", "ws://h/"], "go together"),
        (["-D", "x", "ws://h/"], "expected HOST:PORT"),
    ],
)
def test_bad_mode_combinations(args: list[str], message: str) -> None:
    """-W stands alone; SOCKS5 auth needs both user and password file."""
    code, out = run(["--check", *args])
    assert code == 2
    assert message in out


def test_connect_to_and_tls_server_name_listed() -> None:
    """--connect-to replaces the proxy line; --tls-server-name is shown."""
    code, out = run(
        ["--check", "-L", "1:a:1", "--connect-to", "[::1]:8443", "--tls-server-name", "t.example",
         "wss://t.example/tunnel"]
    )  # fmt: skip
    assert code == 0, out
    assert "connect to: [::1]:8443 (directly)" in out
    assert "proxy:" not in out
    assert "tls server name: t.example" in out


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://proxy.corp:3128", None),
        ("https://user:pass@proxy.corp:8443/", None),
        ("socks5://proxy.corp:1080", "only http:// and https://"),
        ("http://:3128", "no proxy host"),
        ("http://proxy.corp:99999", "invalid port"),
        ("http://proxy.corp:3128/path", "no path"),
    ],
)
def test_proxy_url_check(url: str, problem: str | None) -> None:
    """--proxy takes an http(s) CONNECT proxy URL; anything else says what is wrong."""
    if problem is None:
        check_proxy_url(url)
        return
    with pytest.raises(ValueError, match=problem):
        check_proxy_url(url)


def test_ipv6_without_brackets_gets_a_hint() -> None:
    """-L with a bare IPv6 host says where the brackets go, as --allow does."""
    code, out = run(["--check", "-L", "16379:::1:6379", "ws://h/"])
    assert code == 2
    assert "IPv6 addresses need brackets, e.g. 16379:[::1]:6379" in out


def test_bad_value_from_the_environment_names_the_variable() -> None:
    """A bad WSTUN_PING_INTERVAL is reported as the variable the user set."""
    code, out = run(["--check", "-L", "1:a:1", "ws://h/"], env={"WSTUN_PING_INTERVAL": "soon"})
    assert code == 2
    assert "Invalid value for WSTUN_PING_INTERVAL (from the environment): 'soon'" in out
    code, out = run(["--check", "-L", "1:a:1", "--ping-interval", "soon", "ws://h/"])
    assert "Invalid value for '--ping-interval'" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-v", "-q"], "-v and -q contradict each other"),
        (["-v", "--log-level", "info"], "short for --log-level"),
    ],
)
def test_verbose_and_quiet(args: list[str], message: str) -> None:
    """-v and -q are --log-level debug and warning; they don't go together or with it."""
    code, out = run(["--check", "-L", "1:a:1", *args, "ws://h/"])
    assert code == 2
    assert message in out


def test_help_shows_what_the_text_says() -> None:
    """-D's placeholder says BIND, as its text does; -v and -q are there."""
    code, out = run(["--help"])
    assert code == 0
    assert "-D, --dynamic [BIND:]PORT" in out
    assert "-v, --verbose" in out
    assert "-q, --quiet" in out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts(shell: str) -> None:
    """click's completion, as the README documents it, for both commands."""
    from wstun.server.cli import main as server_main

    for command, prog in ((main, "wstun-client"), (server_main, "wstun-server")):
        variable = f"_{prog.upper().replace('-', '_')}_COMPLETE"
        result = CliRunner().invoke(
            command, [], prog_name=prog, env={variable: f"{shell}_source"}, catch_exceptions=False
        )
        assert result.exit_code == 0
        assert prog in result.output
        assert "complete" in result.output.lower()


def test_reverse_forwards_listed() -> None:
    """-R as ssh's: BIND defaults to 127.0.0.1, port 0 lets the server pick, IPv6 in
    brackets, localhost is 127.0.0.1; WSTUN_REMOTE holds more."""
    code, out = run(
        ["--check", "-R", "9000:127.0.0.1:3000", "-R", "[::]:0:db:5432", "-R",
         "localhost:9022:127.0.0.1:22", "-L", "1:a:1", "ws://h/"],
        env={"WSTUN_REMOTE": "ignored-when-given:1:a:1"},
    )  # fmt: skip
    assert code == 0, out
    assert "reverse: 127.0.0.1:9000 on the server -> 127.0.0.1:3000" in out
    assert "reverse: [::]:0 on the server -> db:5432 (the server picks the port)" in out
    assert "reverse: 127.0.0.1:9022 on the server -> 127.0.0.1:22" in out
    assert "reverse channels: 2 idle per -R" in out
    code, out = run(["--check", "ws://h/"], env={"WSTUN_REMOTE": "9000:x:1 9001:y:2"})
    assert code == 0, out
    assert "reverse: 127.0.0.1:9001 on the server -> y:2" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-R", "9000:3000"], "expected [BIND:]PORT:HOST:HOSTPORT"),
        (["-R", "db.internal:9000:a:1"], "BIND must be an IP address"),
        (["-R", "70000:a:1"], "between 0 and 65535"),
        (["-R", "9000:a:1", "-W", "a:1"], "can't go with -L, -D or -R"),
        (["-R", "9000:a:1", "--reverse-channels", "0"], "--reverse-channels"),
    ],
)
def test_bad_reverse_forwards_are_clear_errors(args: list[str], message: str) -> None:
    code, out = run(["--check", *args, "ws://h/"])
    assert code == 2
    assert message in out


def test_udp_forwards_listed() -> None:
    """A /udp suffix makes a UDP forward; /tcp is the default said; --check shows both
    and the UDP settings."""
    code, out = run(
        ["--check", "-L", "5353:10.0.0.2:53/udp", "-L", "[::1]:51820:[fd00::3]:51820/UDP",
         "-L", "8080:web:80/tcp", "--udp-timeout", "5", "--max-udp-flows", "10", "ws://h/"]
    )  # fmt: skip
    assert code == 0, out
    assert "forward: 127.0.0.1:5353/udp -> 10.0.0.2:53/udp" in out
    assert "forward: [::1]:51820/udp -> [fd00::3]:51820/udp" in out
    assert "forward: 127.0.0.1:8080 -> web:80" in out
    assert "udp: flows end after 5s idle, at most 10 per listener" in out
    code, out = run(["--check", "-R", "5353:127.0.0.1:53/udp", "-R", "9000:web:80/tcp", "ws://h/"])
    assert code == 0, out
    assert "reverse: 127.0.0.1:5353/udp on the server -> 127.0.0.1:53/udp" in out
    assert "reverse: 127.0.0.1:9000 on the server -> web:80\n" in out
