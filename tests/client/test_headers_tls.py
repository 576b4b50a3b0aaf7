"""--header parsing and the TLS settings of wss:// (pure, no sockets)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from wstun.client.cli import main
from wstun.client.headers import parse_header
from wstun.client.tls import client_tls_context, describe_tls_error


def test_header_parsed() -> None:
    """'Name: value' splits at the first colon; spaces around are dropped."""
    assert parse_header("CF-Access-Client-Id:  abc:def ") == ("CF-Access-Client-Id", "abc:def")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no colon", "expected 'Name: value'"),
        (": value", "expected 'Name: value'"),
        ("Bad Name: x", "invalid header name"),
        ("Upgrade: h2c", "set by the WebSocket handshake"),
        ("Sec-WebSocket-Key: x", "set by the WebSocket handshake"),
        ("X-A: a\r\nX-Injected: b", "control characters"),
    ],
)
def test_bad_headers_refused(text: str, message: str) -> None:
    """Malformed, reserved or injecting headers are refused with a reason."""
    with pytest.raises(ValueError, match=message):
        parse_header(text)


def test_verification_on_by_default() -> None:
    """wss:// verifies the certificate and the host name unless told otherwise."""
    context = client_tls_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_insecure_turns_verification_off(caplog: pytest.LogCaptureFixture) -> None:
    """--insecure verifies nothing and warns."""
    context = client_tls_context(insecure=True)
    assert context.verify_mode is ssl.CERT_NONE
    assert not context.check_hostname
    assert "NOT verified" in caplog.text


def test_cacert_is_loaded(tmp_path: Path) -> None:
    """--cacert's CA is the one trusted."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = client_tls_context(tmp_path / "ca.pem")
    assert len(context.get_ca_certs()) == 1


def test_verification_error_reads_well() -> None:
    """A verification failure says 'certificate verify failed' and why."""
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] ...")
    exc.verify_message = "Hostname mismatch, certificate is not valid for 'x'."
    assert describe_tls_error(exc) == (
        "certificate verify failed: Hostname mismatch, certificate is not valid for 'x'."
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--insecure", "ws://h/"], "--insecure applies to wss:// URLs only"),
        (["--proxy", "socks5://p:1080", "ws://h/"], "only http:// and https://"),
        (["-H", "Connection: x", "ws://h/"], "set by the WebSocket handshake"),
    ],
)
def test_cli_refuses_contradictions(args: list[str], message: str) -> None:
    """Options that can't work are refused at startup with a reason."""
    result = CliRunner().invoke(main, ["--check", "-L", "1:a:1", *args], env={})
    assert result.exit_code == 2
    assert message in result.output


def test_cli_check_lists_the_new_options(tmp_path: Path) -> None:
    """--check shows TLS verification, header names (not values), proxy and metrics."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    args = ["--check", "-L", "1:a:1", "--cacert", str(tmp_path / "ca.pem"),
            "-H", "X-Secret: hunter2", "--proxy", "http://p:3128",
            "--metrics-listen", "9101", "wss://h/"]  # fmt: skip
    result = CliRunner().invoke(main, args, env={})
    assert result.exit_code == 0, result.output
    assert f"tls verification: on, CAs from {tmp_path / 'ca.pem'}" in result.output
    assert "header: X-Secret" in result.output
    assert "hunter2" not in result.output
    assert "proxy: http://p:3128" in result.output
    assert "metrics: 127.0.0.1:9101" in result.output


def test_headers_from_the_environment_one_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """WSTUN_HEADER holds one header a line, so a value keeps its spaces (a gateway's
    Basic credentials); blank lines are skipped; the command line's -H replaces it."""
    monkeypatch.setenv("WSTUN_HEADER", "X-Gate-Auth: Basic dXNlcjpwdw==\n\nX-Team: infra\n")
    ctx = main.make_context("wstun-client", ["--check", "-L", "1:a:1", "ws://h/"])
    assert ctx.params["headers"] == (("X-Gate-Auth", "Basic dXNlcjpwdw=="), ("X-Team", "infra"))

    ctx = main.make_context("wstun-client", ["--check", "-H", "X-Only: a b", "ws://h/"])
    assert ctx.params["headers"] == (("X-Only", "a b"),)

    monkeypatch.setenv("WSTUN_HEADER", "X-Gate 1")
    result = CliRunner().invoke(main, ["--check", "-L", "1:a:1", "ws://h/"])
    assert result.exit_code == 2
    assert "Invalid value for WSTUN_HEADER (from the environment)" in result.output
