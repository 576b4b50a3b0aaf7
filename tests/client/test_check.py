"""wstun-client check's pure parts: certificates, the report, the proxy rule, the
idle verdict, and how the command line reaches the subcommand."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wstun.client import cli
from wstun.client.check import (
    Report,
    Status,
    Step,
    format_step,
    idle_verdict,
    parse_certificate,
    ping_interval_below,
    proxy_in_use,
    render_json,
    render_text,
)
from wstun.client.cli import main
from wstun.client.config import ClientConfig
from wstun.common.protocol import Target

UTC = datetime.UTC


# -- certificates ---------------------------------------------------------------------


def test_trustme_certificate_read_as_cryptography_reads_it() -> None:
    """Subject, issuer, DNS and IP names and expiry (GeneralizedTime) of a leaf."""
    ca = trustme.CA()
    issued = ca.issue_cert("wstun.test", "127.0.0.1", "::1")
    der = ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())
    expected = x509.load_der_x509_certificate(der)

    certificate = parse_certificate(der)

    assert certificate.names == ("wstun.test", "127.0.0.1", "::1")
    assert certificate.not_after == expected.not_valid_after_utc
    for name, shown in (
        (expected.subject, certificate.subject),
        (expected.issuer, certificate.issuer),
    ):
        for oid, label in (
            (NameOID.ORGANIZATION_NAME, "O"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
        ):
            for attribute in name.get_attributes_for_oid(oid):
                value = attribute.value
                assert isinstance(value, str)
                assert f"{label}={value}" in shown


def test_certificate_with_common_name_and_utc_time() -> None:
    """A certificate made here: CN and O in order, UTCTime expiry, days left from a date."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NZ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Ltd"),
            x509.NameAttribute(NameOID.COMMON_NAME, "tunnel.example.com"),
        ]
    )
    not_after = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("tunnel.example.com"),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    der = built.public_bytes(serialization.Encoding.DER)

    certificate = parse_certificate(der)

    assert certificate.subject == "C=NZ, O=Example Ltd, CN=tunnel.example.com"
    assert certificate.issuer == certificate.subject
    assert certificate.names == ("tunnel.example.com", "10.0.0.1")
    assert certificate.not_after == not_after
    assert certificate.days_left(datetime.datetime(2029, 12, 1, tzinfo=UTC)) == 32
    assert certificate.facts()["not_after"] == "2030-01-02T03:04:05+00:00"


@pytest.mark.parametrize("data", [b"", b"junk", b"\x30\x03\x02\x01\x00", b"\x30\x82\xff\xff"])
def test_not_a_certificate_is_a_value_error(data: bytes) -> None:
    """Bytes that aren't a certificate, truncated ones included: ValueError, nothing else."""
    with pytest.raises(ValueError, match=r"not an X\.509 certificate"):
        parse_certificate(data)


# -- the report -------------------------------------------------------------------------


def _report(*steps: Step, url: str = "ws://h/") -> Report:
    return Report(url, steps)


def test_passing_report_names_what_was_skipped() -> None:
    """Every step ok or skipped: the verdict says ok and lists the skipped steps."""
    report = _report(
        Step("tcp", Status.OK, "127.0.0.1:8080 (the URL's host) in 0.2 ms", {"ms": 0.2}),
        Step("tls", Status.SKIP, "ws:// has no TLS"),
        Step("idle", Status.SKIP, "not asked (--idle-probe S)"),
    )
    assert report.ok
    assert report.failed is None
    assert render_text(report).splitlines() == [
        "tcp      ok    127.0.0.1:8080 (the URL's host) in 0.2 ms",
        "tls      skip  ws:// has no TLS",
        "idle     skip  not asked (--idle-probe S)",
        "verdict: ok, every step passed (skipped: tls, idle)",
    ]


def test_failing_report_names_the_first_failure() -> None:
    """The verdict names the failed step and repeats its reason; later ones show '-'."""
    failed = Step("tcp", Status.FAIL, "127.0.0.1:1: connection refused")
    report = _report(
        Step("resolve", Status.OK, "fine"),
        failed,
        Step("tls", Status.NOT_RUN, "not run: tcp failed"),
    )
    assert not report.ok
    assert report.failed is failed
    assert report.verdict == "FAIL at tcp: 127.0.0.1:1: connection refused"
    assert format_step(report.steps[-1]) == "tls      -     not run: tcp failed"


def test_json_report_has_facts_beside_each_step_and_hides_passwords() -> None:
    """render_json: url (password masked), ok, failed, verdict, steps with their facts."""
    report = _report(
        Step("ping", Status.OK, "10 round trips", {"count": 10, "min_ms": 0.1}),
        Step("idle", Status.FAIL, "cut after 1s", {"closed_after_s": 1.0}),
        url="wss://me:secret@h/tunnel/",
    )
    document = json.loads(render_json(report))
    assert document == {
        "url": "wss://me:***@h/tunnel/",
        "ok": False,
        "failed": "idle",
        "verdict": "FAIL at idle: cut after 1s",
        "steps": [
            {
                "name": "ping",
                "status": "ok",
                "detail": "10 round trips",
                "count": 10,
                "min_ms": 0.1,
            },
            {"name": "idle", "status": "fail", "detail": "cut after 1s", "closed_after_s": 1.0},
        ],
    }


def test_a_fact_may_not_hide_a_step_key() -> None:
    """Facts go beside name, status and detail in the JSON: those names are refused."""
    with pytest.raises(AssertionError):
        Step("upgrade", Status.OK, "101", {"status": 101})


# -- the proxy --------------------------------------------------------------------------


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("url", "variables", "config", "expected"),
    [
        ("wss://h/", {}, {}, (None, "none: no proxy in the environment (HTTPS_PROXY, HTTP_PROXY)")),
        (
            "wss://h/",
            {"HTTPS_PROXY": "http://p:3128"},
            {},
            ("http://p:3128", "http://p:3128 (from HTTPS_PROXY)"),
        ),
        (
            "ws://h/",
            {"http_proxy": "http://low:1", "HTTP_PROXY": "http://up:2"},
            {},
            ("http://low:1", "http://low:1 (from http_proxy)"),
        ),
        (
            "wss://h.corp/",
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".corp"},
            {},
            (None, "none: h.corp is in no_proxy, so HTTPS_PROXY is not used"),
        ),
        (
            "wss://h/",
            {"HTTPS_PROXY": "http://p:3128"},
            {"proxy": None},
            (None, "none (--proxy none)"),
        ),
        (
            "wss://h/",
            {},
            {"proxy": "http://me:pw@p:3128"},
            ("http://me:pw@p:3128", "http://me:***@p:3128 (--proxy)"),
        ),
        (
            "wss://h/",
            {"HTTPS_PROXY": "http://p:3128"},
            {"connect_to": Target("10.0.0.5", 443)},
            (None, "none: --connect-to 10.0.0.5:443 is dialled directly"),
        ),
    ],
    ids=[
        "none",
        "https-proxy",
        "lower-case-wins",
        "no-proxy",
        "proxy-none",
        "masked",
        "connect-to",
    ],
)
def test_proxy_in_use(
    no_proxy_env: pytest.MonkeyPatch,
    url: str,
    variables: dict[str, str],
    config: dict[str, object],
    expected: tuple[str | None, str],
) -> None:
    """The proxy tunnels take, and where it came from, as the dialer decides it."""
    for name, value in variables.items():
        no_proxy_env.setenv(name, value)
    assert proxy_in_use(ClientConfig(url=url, **config)) == expected  # type: ignore[arg-type]


# -- the idle verdict -------------------------------------------------------------------


def test_idle_cut_before_the_first_ping_fails_with_advice() -> None:
    """Cut after 1 s, pings every 20 s: fail, and suggest an interval below 1 s."""
    step = idle_verdict(1.01, None, 20.0, waited=10)
    assert step.status is Status.FAIL
    assert step.detail == (
        "an idle WebSocket was cut after 1.01s without a close frame (1006): a proxy's idle "
        "timeout?; the client's pings come every 20s: set --ping-interval below 1.01s, "
        "e.g. --ping-interval 0.5"
    )
    assert step.facts == {"waited_s": 10, "closed_after_s": 1.01, "close_code": None}


def test_idle_closed_after_the_pings_would_come_passes() -> None:
    """Closed (with a close frame) after 60 s, pings every 20 s: the pings keep it open."""
    step = idle_verdict(60.0, (1001, "going away"), 20.0, waited=90)
    assert step.status is Status.OK
    assert step.detail == (
        "an idle WebSocket was closed by the far end after 60s (1001 going away); "
        "the client's pings every 20s come sooner"
    )
    assert step.facts["close_code"] == 1001


def test_idle_with_pings_off_fails() -> None:
    """--ping-interval 0 and a path that closes idle WebSockets: turn pings on."""
    step = idle_verdict(30.0, None, None, waited=60)
    assert step.status is Status.FAIL
    assert "pings are off (--ping-interval 0): set --ping-interval below 30s" in step.detail


@pytest.mark.parametrize(
    ("seconds", "interval"),
    [(1.0, 0.5), (1.02, 0.5), (60.0, 30.0), (75.0, 30.0), (0.3, 0.1), (0.1, 0.05), (20.0, 10.0)],
)
def test_ping_interval_below(seconds: float, interval: float) -> None:
    """Half, rounded down to one digit: always below what was measured."""
    assert ping_interval_below(seconds) == interval
    assert interval < seconds


# -- the command line -------------------------------------------------------------------


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, args, prog_name="wstun-client", env=env or {}, catch_exceptions=False
    )
    return result.exit_code, result.output


def test_check_is_the_first_word_only() -> None:
    """'check' first runs the subcommand; the client's own forms still parse, options
    before or after the URL."""
    code, out = run(["check", "--help"])
    assert code == 0, out
    assert "Usage: wstun-client check [OPTIONS] URL" in out
    for option in ("--target", "--idle-probe", "--json", "--cacert", "--proxy", "--token-file"):
        assert option in out
    for args in (["--check", "-L", "1:h:2", "ws://x/"], ["--check", "ws://x/", "-L", "1:h:2"]):
        code, out = run(args)
        assert code == 0, out
        assert "forward: 127.0.0.1:1 -> h:2" in out


def test_client_help_mentions_check() -> None:
    code, out = run(["--help"])
    assert code == 0
    assert "wstun-client check wss://" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-v", "check", "ws://x/"], "'check' is a subcommand: it goes first"),
        (["check"], "Missing argument 'URL'"),
        (["check", "http://x/"], "ws:// or wss://"),
        (["check", "--tls-server-name", "n", "ws://x/"], "wss:// URLs only"),
        (["check", "--connect-to", "h:1", "--proxy", "http://p:1", "wss://x/"], "--proxy"),
        (["check", "--idle-probe", "0", "ws://x/"], "--idle-probe"),
        (["check", "--target", "nohost", "ws://x/"], "HOST:PORT"),
    ],
)
def test_bad_check_options_are_usage_errors(args: list[str], message: str) -> None:
    """Bad options of the subcommand exit 2 with click's message, as the client's do."""
    code, out = run(args)
    assert code == 2, out
    assert message in out


def test_check_reads_the_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """WSTUN_URL gives check its URL, as it gives the client its own; a refused port is
    exit 1 with the tcp step's verdict."""
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)  # keep pytest's logging
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        code, out = run(["check"], env={"WSTUN_URL": f"ws://127.0.0.1:{port}/"})
    assert code == 1, out
    assert out.splitlines()[-1].startswith(f"verdict: FAIL at tcp: 127.0.0.1:{port}: connection")
