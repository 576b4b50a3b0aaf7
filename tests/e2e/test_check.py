"""``wstun-client check URL`` against real peers on loopback, read as a user reads it.

Each test runs the real command and looks at the step that failed (or that
every step passed), the verdict line and the exit status. The peers are
real: wstun-server (plain and with TLS from trustme), an HTTP server and an
echo server on the wrong port, nginx with the shipped template and a 1 s
``proxy_read_timeout``, and tinyproxy as the HTTP CONNECT proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from wstun.common import __version__

from ..deploy.conftest import Nginx, nginx
from ..deploy.test_http_proxy import start_tinyproxy
from ..deploy.test_tls import ca, write_cert
from .conftest import Handler, Wstun, echo_target, find_command, free_port

__all__ = ["ca", "nginx"]  # fixtures from tests/deploy: nginx, and the TLS tests' CA

TIMEOUT = 60.0
STEPS = ("proxy", "resolve", "tcp", "connect", "tls", "upgrade", "token", "target", "ping", "idle")
LINE = re.compile(r"^(\w+)\s+(ok|FAIL|skip|-)\s+(.*)$")


@dataclasses.dataclass
class Checked:
    """One run of wstun-client check: its exit status, and its lines by step."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def verdict(self) -> str:
        return self.lines[-1]

    @property
    def steps(self) -> dict[str, tuple[str, str]]:
        """Step name -> (status word, detail), in the order printed."""
        found = {}
        for line in self.lines[:-1]:
            match = LINE.match(line)
            assert match, f"not a step line: {line!r}\n{self.out}"
            found[match.group(1)] = (match.group(2), match.group(3))
        return found

    def status(self, step: str) -> str:
        return self.steps[step][0]

    def detail(self, step: str) -> str:
        return self.steps[step][1]

    def failed_at(self, step: str) -> str:
        """Assert the check failed at ``step`` (and only there); its detail."""
        assert self.code == 1, self.out + self.err
        steps = self.steps
        assert list(steps) == list(STEPS), self.out
        assert steps[step][0] == "FAIL", self.out
        failed = [name for name, (status, _) in steps.items() if status == "FAIL"]
        assert failed == [step], self.out
        after = list(STEPS)[list(STEPS).index(step) + 1 :]
        assert all(steps[name] == ("-", f"not run: {step} failed") for name in after), self.out
        assert self.verdict == f"verdict: FAIL at {step}: {steps[step][1]}", self.out
        return steps[step][1]

    def passed(self, *skipped: str) -> None:
        """Assert every step passed but ``skipped``, and the verdict says so."""
        assert self.code == 0, self.out + self.err
        steps = self.steps
        assert list(steps) == list(STEPS), self.out
        for name, (status, _) in steps.items():
            assert status == ("skip" if name in skipped else "ok"), self.out
        tail = f" (skipped: {', '.join(skipped)})" if skipped else ""
        assert self.verdict == f"verdict: ok, every step passed{tail}", self.out


def quiet_env(**extra: str) -> dict[str, str]:
    """This environment without proxy or WSTUN_ variables (either case), plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy") and not key.startswith("WSTUN_")
    }
    return {**env, **extra}


async def check(*args: str, env: dict[str, str] | None = None) -> Checked:
    """``wstun-client check ARGS`` in a clean environment; waits for it to end."""
    process = await asyncio.create_subprocess_exec(
        find_command("wstun-client"),
        "check",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=quiet_env() if env is None else env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Checked(process.returncode, out.decode(), err.decode())


async def check_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    checked = await check("--json", *args, env=env)
    return checked.code, json.loads(checked.out)


def token_file(directory: Path, name: str, token: str) -> Path:
    path = directory / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


# -- a good server ----------------------------------------------------------------------


async def test_good_server_passes_every_step(wstun: Wstun, target, ca, tmp_path) -> None:
    """wss:// with --cacert, a token, an allowed --target and a short idle probe: every
    step ok (connect skipped: no proxy), exit 0; each line says what it saw."""
    ca_file, chain, key = write_cert(ca, tmp_path, "127.0.0.1")
    secret = token_file(tmp_path, "token", "s3cret-token")
    port = await target(echo_target())
    _, sport = await wstun.server(
        "--allow",
        f"127.0.0.1:{port}",
        "--token-file",
        str(secret),
        "--tls-cert",
        str(chain),
        "--tls-key",
        str(key),
    )
    checked = await check(
        f"wss://127.0.0.1:{sport}/",
        "--cacert",
        str(ca_file),
        "--token-file",
        str(secret),
        "--target",
        f"127.0.0.1:{port}",
        "--idle-probe",
        "0.3",
    )

    checked.passed("connect")
    assert checked.detail("proxy").startswith("none: no proxy in the environment")
    assert (
        checked.detail("resolve") == "127.0.0.1 is an address (the URL's host): nothing to resolve"
    )
    assert re.fullmatch(
        rf"127\.0\.0\.1:{sport} \(the URL's host\) in [\d.]+ ms", checked.detail("tcp")
    )
    tls = checked.detail("tls")
    assert re.match(r"TLSv1\.[23] \S+ in [\d.]+ ms; SNI none \(an IP address\); ", tls), tls
    assert "certificate for 127.0.0.1; " in tls
    assert "issuer O=trustme" in tls
    assert tls.endswith(f"verified against {ca_file}")
    upgrade = checked.detail("upgrade")
    assert re.match(r"101 Switching Protocols in [\d.]+ ms; subprotocol wstun\.v2; ", upgrade)
    assert upgrade.endswith(f"wstun {__version__}")
    assert checked.detail("token") == "accepted (the server says: token accepted)"
    assert checked.detail("target").startswith(f"127.0.0.1:{port}: allowed, and the server reached")
    assert re.fullmatch(
        r"10 round trips: min [\d.]+ ms, median [\d.]+ ms, max [\d.]+ ms", checked.detail("ping")
    )
    assert checked.detail("idle") == "still open after 0.3s with no pings from this side"


async def test_config_file_and_profile_are_read(wstun: Wstun, tmp_path: Path) -> None:
    """The client's config file serves check too: the profile's url, the file's
    token_file (relative to the file), its forwards left unused; by --config and
    --profile or by WSTUN_CONFIG and WSTUN_PROFILE."""
    secret = token_file(tmp_path, "server-token", "file-token")
    _, sport = await wstun.server("--token-file", str(secret))
    (tmp_path / "secrets").mkdir()
    token_file(tmp_path / "secrets", "token", "file-token")
    config = tmp_path / "client.toml"
    config.write_text(
        f'url = "ws://127.0.0.1:{free_port()}/"\n'
        'token_file = "secrets/token"\n'
        'local = ["5432:db.internal:5432"]\n'
        "[profiles.work]\n"
        f'url = "ws://127.0.0.1:{sport}/"\n'
    )

    by_options = await check("--config", str(config), "--profile", "work")
    by_options.passed("connect", "tls", "target", "idle")
    assert by_options.detail("token") == "accepted (the server says: token accepted)"
    assert by_options.detail("tcp").startswith(f"127.0.0.1:{sport} ")

    env = quiet_env(WSTUN_CONFIG=str(config), WSTUN_PROFILE="work")
    by_environment = await check(env=env)
    by_environment.passed("connect", "tls", "target", "idle")

    top_level = await check("--config", str(config))
    assert top_level.failed_at("tcp").endswith(
        "connection refused: nothing listens there; "
        "is wstun-server, or the proxy in front of it, running on that port?"
    )


async def test_json_report_parses(wstun: Wstun, tmp_path) -> None:
    """--json: one document with ok, failed, verdict and every step's status and facts,
    for a passing check and for a failing one; the exit status is the same as in text."""
    _, sport = await wstun.server()
    code, report = await check_json(f"ws://127.0.0.1:{sport}/")
    assert code == 0
    assert report["ok"] is True
    assert report["failed"] is None
    assert report["verdict"] == "ok, every step passed (skipped: connect, tls, target, idle)"
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == list(STEPS)
    assert steps["tcp"]["status"] == "ok"
    assert steps["tcp"]["address"] == f"127.0.0.1:{sport}"
    assert steps["upgrade"]["status"] == "ok"
    assert steps["upgrade"]["subprotocol"] == "wstun.v2"
    assert steps["upgrade"]["version"] == __version__
    assert steps["ping"]["count"] == 10
    assert 0 <= steps["ping"]["min_ms"] <= steps["ping"]["median_ms"] <= steps["ping"]["max_ms"]
    assert steps["idle"]["status"] == "skip"

    code, report = await check_json(f"ws://127.0.0.1:{free_port()}/")
    assert code == 1
    assert report["ok"] is False
    assert report["failed"] == "tcp"
    assert report["verdict"].startswith("FAIL at tcp: ")
    assert [step["status"] for step in report["steps"]] == ["ok", "ok", "fail", *["not_run"] * 7]


# -- where it breaks ----------------------------------------------------------------------


async def test_no_server_fails_at_tcp() -> None:
    """Nothing listens on the port: tcp fails with 'connection refused', nothing after runs."""
    port = free_port()
    checked = await check(f"ws://127.0.0.1:{port}/")
    detail = checked.failed_at("tcp")
    assert detail.startswith(f"127.0.0.1:{port}: connection refused: nothing listens there")
    assert checked.status("resolve") == "ok"


async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A web server that isn't the tunnel: 200 and a page, whatever was asked."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nServer: web/1\r\n\r\nhello, web!\n")
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (plain_http, r"200 hello, web! \(Server: web/1\): not a wstun-server answer"),
        (echo_target(), r"bad handshake from server: .*"),
    ],
    ids=["http-server", "echo"],
)
async def test_wrong_port_fails_at_upgrade(target, handler: Handler, reason: str) -> None:
    """The port answers TCP but isn't the tunnel: tcp ok, the upgrade fails and says why."""
    port = await target(handler)
    checked = await check(f"ws://127.0.0.1:{port}/")
    assert re.fullmatch(reason, checked.failed_at("upgrade")), checked.out
    assert checked.status("tcp") == "ok"


async def test_path_that_is_not_the_endpoint_fails_at_upgrade(wstun: Wstun) -> None:
    """A path the server doesn't serve: the upgrade fails with the server's 404 reason."""
    _, sport = await wstun.server("--path", "/tunnel")
    checked = await check(f"ws://127.0.0.1:{sport}/elsewhere/")
    assert checked.failed_at("upgrade") == (
        "404 no tunnel endpoint at /elsewhere/; the tunnel endpoint is /tunnel "
        f"(Server: wstun/{__version__})"
    )


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("wrong-token", "401 invalid token: the client's --token-file or WSTUN_TOKEN holds"),
        (None, "401 missing bearer token: this server needs one; give the client --token-file"),
    ],
    ids=["wrong", "missing"],
)
async def test_refused_token_fails_at_token(
    wstun: Wstun, tmp_path: Path, token: str | None, reason: str
) -> None:
    """A wrong or missing token: the upgrade reached the endpoint (401), the token step
    fails with the server's reason."""
    secret = token_file(tmp_path, "server-token", "right-token")
    _, sport = await wstun.server("--token-file", str(secret))
    args = ("--token-file", str(token_file(tmp_path, "mine", token))) if token else ()
    checked = await check(f"ws://127.0.0.1:{sport}/", *args)
    assert checked.failed_at("token").startswith(reason)
    assert checked.status("upgrade") == "ok"
    assert checked.detail("upgrade").startswith(
        f"401 from the tunnel endpoint (Server: wstun/{__version__}): the path carries upgrades"
    )


@pytest.mark.parametrize(
    ("names", "use_cacert", "reason"),
    [
        (
            ("127.0.0.1",),
            False,
            "certificate verify failed: unable to get local issuer certificate; the server's "
            "certificate is for 127.0.0.1; ",
        ),
        (
            ("wstun.test",),
            True,
            "certificate verify failed: IP address mismatch, certificate is not valid for "
            "'127.0.0.1'; the server's certificate is for wstun.test; ",
        ),
    ],
    ids=["unknown-ca", "wrong-name"],
)
async def test_unverifiable_certificate_fails_at_tls(
    wstun: Wstun, ca, tmp_path: Path, names: tuple[str, ...], use_cacert: bool, reason: str
) -> None:
    """An unknown CA, or a certificate for another name: tls fails, shows the certificate
    it got (names, issuer, expiry) and says what to do."""
    ca_file, chain, key = write_cert(ca, tmp_path, *names)
    _, sport = await wstun.server("--tls-cert", str(chain), "--tls-key", str(key))
    extra = ("--cacert", str(ca_file)) if use_cacert else ()
    checked = await check(f"wss://127.0.0.1:{sport}/", *extra)
    detail = checked.failed_at("tls")
    assert detail.startswith(reason), detail
    assert "issuer O=trustme" in detail
    assert re.search(r"; expires \d{4}-\d\d-\d\d \(in \d+ days\)", detail)
    if use_cacert:
        assert detail.endswith(
            "(it is not for 127.0.0.1: put wstun.test in the URL, "
            "or give --tls-server-name with one of its names)"
        )
    else:
        assert detail.endswith("give --cacert FILE with that CA)")


async def test_tls_options_are_honoured(wstun: Wstun, ca, tmp_path: Path) -> None:
    """A certificate for wstun.test passes with --tls-server-name (SNI and the check use
    it) and with --connect-to (the URL's name, dialled at another address)."""
    ca_file, chain, key = write_cert(ca, tmp_path, "wstun.test")
    _, sport = await wstun.server("--tls-cert", str(chain), "--tls-key", str(key))

    named = await check(
        f"wss://127.0.0.1:{sport}/", "--cacert", str(ca_file), "--tls-server-name", "wstun.test"
    )
    named.passed("connect", "target", "idle")
    assert "; SNI wstun.test; certificate for wstun.test; " in named.detail("tls")

    redirected = await check(
        f"wss://wstun.test:{sport}/", "--cacert", str(ca_file), "--connect-to", f"127.0.0.1:{sport}"
    )
    redirected.passed("connect", "target", "idle")
    assert redirected.detail("proxy") == f"none: --connect-to 127.0.0.1:{sport} is dialled directly"
    assert redirected.detail("resolve").startswith("127.0.0.1 is an address (--connect-to)")


# -- targets --------------------------------------------------------------------------------


async def test_target_allowed_refused_and_unreachable(wstun: Wstun, target) -> None:
    """--target: ok when the server allows and reaches it; 403 with the policy's reason
    when it's not allowed; 502 when it's allowed but nothing listens."""
    port = await target(echo_target())
    down = free_port()
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}", "--allow", f"127.0.0.1:{down}")
    url = f"ws://127.0.0.1:{sport}/"

    allowed = await check(url, "--target", f"127.0.0.1:{port}")
    allowed.passed("connect", "tls", "idle")
    assert re.fullmatch(
        rf"127\.0\.0\.1:{port}: allowed, and the server reached it \(101 in [\d.]+ ms\)",
        allowed.detail("target"),
    )

    refused = await check(url, "--target", "127.0.0.1:9")
    assert refused.failed_at("target") == (
        "127.0.0.1:9: 403 target not allowed: 127.0.0.1:9 (no rule allows port 9)"
    )

    unreachable = await check(url, "--target", f"127.0.0.1:{down}")
    assert unreachable.failed_at("target").startswith(f"127.0.0.1:{down}: 502 ")
    assert "connection refused" in unreachable.detail("target")


# -- proxies ----------------------------------------------------------------------------------


async def test_nginx_idle_timeout_found_by_the_idle_probe(wstun: Wstun, nginx: Nginx) -> None:
    """Behind nginx with proxy_read_timeout 1s, the idle probe sees the WebSocket cut after
    about a second and asks for a ping interval below it; with one, the idle step passes."""
    _, sport = await wstun.server("--path", "/tunnel")
    nport = await nginx.start(sport, read_timeout="1s")
    url = f"ws://127.0.0.1:{nport}/tunnel/"

    checked = await check(url, "--idle-probe", "10")
    detail = checked.failed_at("idle")
    match = re.fullmatch(
        r"an idle WebSocket was cut after ([\d.]+)s without a close frame \(1006\): "
        r"a proxy's idle timeout\?; the client's pings come every 20s: "
        r"set --ping-interval below \1s, e.g. --ping-interval [\d.]+",
        detail,
    )
    assert match, detail
    assert 0.9 <= float(match.group(1)) < 3.0
    # nginx answers for wstun-server: its Server header replaces the server's.
    assert "the server's version is not shown (Server: nginx" in checked.detail("upgrade")

    code, report = await check_json(url, "--idle-probe", "10", "--ping-interval", "0.5")
    assert code == 0, report
    idle = report["steps"][-1]
    assert idle["status"] == "ok"
    assert 0.9 <= idle["closed_after_s"] < 3.0
    assert idle["detail"].endswith("the client's pings every 0.5s come sooner")


async def test_tinyproxy_is_used_and_passes(wstun: Wstun, tmp_path: Path) -> None:
    """HTTP_PROXY in the environment: the check says the proxy is used, connects to it,
    CONNECTs through it, and passes; tinyproxy saw the CONNECT."""
    _, sport = await wstun.server()
    proxy = await start_tinyproxy(wstun, tmp_path, sport)
    checked = await check(f"ws://127.0.0.1:{sport}/", env=quiet_env(HTTP_PROXY=proxy.url))

    checked.passed("tls", "target", "idle")
    assert checked.detail("proxy") == f"{proxy.url} (from HTTP_PROXY)"
    assert checked.detail("resolve") == (
        "127.0.0.1 is an address (the proxy): nothing to resolve; the proxy resolves 127.0.0.1"
    )
    assert checked.detail("tcp").startswith(f"127.0.0.1:{proxy.port} (the proxy) in ")
    assert re.fullmatch(
        rf"CONNECT 127\.0\.0\.1:{sport}: 200 Connection established in [\d.]+ ms",
        checked.detail("connect"),
    )
    assert f"CONNECT 127.0.0.1:{sport}" in proxy.log


async def test_proxy_that_refuses_connect_fails_at_connect(wstun: Wstun, tmp_path: Path) -> None:
    """--proxy to a tinyproxy that allows CONNECT to another port only: the connect step
    fails with the proxy's answer."""
    _, sport = await wstun.server()
    proxy = await start_tinyproxy(wstun, tmp_path, free_port())
    checked = await check(f"ws://127.0.0.1:{sport}/", "--proxy", proxy.url)
    detail = checked.failed_at("connect")
    assert detail.startswith(f"the proxy refused CONNECT 127.0.0.1:{sport}: 403 "), detail
    assert checked.detail("proxy") == f"{proxy.url} (--proxy)"
