"""``wstun-client check URL``: walk the path to the server and say where it breaks.

Each step asks one question of one hop, in the order a tunnel meets them:
which proxy (``proxy``), the name (``resolve``), the TCP connection
(``tcp``) and the proxy's CONNECT (``connect``), TLS (``tls``), the HTTP
upgrade (``upgrade``), the token (``token``), optionally a target
(``target``), ping round trips (``ping``) and, optionally, how long the path
lets an idle WebSocket live (``idle``). After the first failure the rest are
not run; the :class:`Report` says which step failed and why.

The first hops (resolve, tcp, connect, tls) are walked by hand, on one
socket, so each can be timed and named. From the upgrade on, the check uses
the client's own :class:`~wstun.client.dialer.WebSocketDialer`, so what it
says is what tunnels get: the same proxy, ``--connect-to``, TLS
verification, headers, token and words for failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import math
import os
import socket
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wstun.client.config import ClientConfig
from wstun.client.diagnose import is_ip
from wstun.client.dialer import PLAIN_SERVER, WebSocketDialer
from wstun.client.probe import connect_request
from wstun.client.tls import client_tls_context, describe_tls_error
from wstun.common.errors import HandshakeError, describe_os_error
from wstun.common.protocol import (
    SUBPROTOCOL,
    SUBPROTOCOL_V2,
    Target,
    format_target,
    probe_url,
)
from wstun.common.streams.internals import close_or_drop, environment_proxy

__all__ = [
    "PINGS",
    "Certificate",
    "Report",
    "Status",
    "Step",
    "format_step",
    "idle_verdict",
    "parse_certificate",
    "ping_interval_below",
    "proxy_in_use",
    "render_json",
    "render_text",
    "run_check",
    "verdict_line",
]

#: WebSocket pings sent for the round-trip times.
PINGS = 10

#: The width of the step names in the text report.
_NAME_WIDTH = 8


class Status(enum.Enum):
    """How one step went; the value is the JSON word."""

    OK = "ok"
    FAIL = "fail"
    #: Not asked for, or not on this path (no proxy, no TLS).
    SKIP = "skip"
    #: An earlier step failed, so this one could not be tried.
    NOT_RUN = "not_run"

    @property
    def label(self) -> str:
        """The word in the text report."""
        return {"ok": "ok", "fail": "FAIL", "skip": "skip", "not_run": "-"}[self.value]


@dataclasses.dataclass(frozen=True)
class Step:
    """One step's outcome: ``detail`` is the line a person reads, ``facts`` what a
    script reads (JSON values: numbers in ms or s as their names say)."""

    name: str
    status: Status
    detail: str
    facts: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # The JSON report puts the facts beside these keys.
        assert not {"name", "status", "detail"} & self.facts.keys(), self.facts


@dataclasses.dataclass(frozen=True)
class Report:
    """Every step of one check, in order."""

    url: str
    steps: tuple[Step, ...]

    @property
    def failed(self) -> Step | None:
        """The step where the path broke, if it did."""
        return next((step for step in self.steps if step.status is Status.FAIL), None)

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def verdict(self) -> str:
        failed = self.failed
        """``FAIL at tcp: <why>``, or ``ok, every step passed (skipped: connect, tls)``."""
        if failed is not None:
            return f"FAIL at {failed.name}: {failed.detail}"
        skipped = [step.name for step in self.steps if step.status is Status.SKIP]
        unchecked = f" (skipped: {', '.join(skipped)})" if skipped else ""
        return f"ok, every step passed{unchecked}"


def format_step(step: Step) -> str:
    """``tcp      ok    127.0.0.1:8080 in 0.2 ms``."""
    return f"{step.name:<{_NAME_WIDTH}} {step.status.label:<5} {step.detail}"


def render_text(report: Report) -> str:
    """One line per step, then the verdict."""
    return "\n".join([*(format_step(step) for step in report.steps), verdict_line(report)])


def verdict_line(report: Report) -> str:
    return f"verdict: {report.verdict}"


def render_json(report: Report) -> str:
    """The report for scripts: ``ok``, ``failed`` (a step name or null), ``verdict``,
    and ``steps``, each with ``name``, ``status``, ``detail`` and its facts."""
    failed = report.failed
    document = {
        "url": _masked(report.url),
        "ok": report.ok,
        "failed": failed.name if failed is not None else None,
        "verdict": report.verdict,
        "steps": [
            {"name": step.name, "status": step.status.value, "detail": step.detail, **step.facts}
            for step in report.steps
        ],
    }
    return json.dumps(document, indent=2)


# -- the proxy --------------------------------------------------------------------------


def proxy_in_use(config: ClientConfig) -> tuple[str | None, str]:
    """The HTTP CONNECT proxy tunnels take (None: direct) and where that came from.

    The same rule as the dialer's: ``--connect-to`` dials directly, ``--proxy
    none`` too, ``--proxy URL`` is used as given, else the environment's
    (websockets' rule: ``wss_proxy``/``https_proxy`` for wss://, ``ws_proxy``/
    ``https_proxy``/``http_proxy`` for ws://, bypassed for hosts in ``no_proxy``).
    """
    if config.connect_to is not None:
        return None, f"none: --connect-to {config.connect_to} is dialled directly"
    if config.proxy is None:
        return None, "none (--proxy none)"
    if isinstance(config.proxy, str):
        return config.proxy, f"{_masked(config.proxy)} (--proxy)"
    found = environment_proxy(config.url)
    variable = _proxy_variable(config.url)
    if found is None:
        if variable is not None:
            host = urlsplit(config.url).hostname
            return None, f"none: {host} is in no_proxy, so {variable} is not used"
        return None, "none: no proxy in the environment (HTTPS_PROXY, HTTP_PROXY)"
    return found, f"{_masked(found)} (from {variable or 'the environment'})"


def _proxy_variable(url: str) -> str | None:
    """The environment variable the proxy for ``url`` comes from (lower case wins, as
    in urllib)."""
    secure = url.lower().startswith("wss:")
    schemes = ("wss", "socks", "https") if secure else ("ws", "socks", "https", "http")
    for scheme in schemes:
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            if os.environ.get(name):
                return name
    return None


def _masked(url: str) -> str:
    """``url`` with the password of its user info, if any, shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# -- certificates -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certificate:
    """What a person asks of a server certificate."""

    subject: str
    issuer: str
    #: DNS names and IP addresses of its subjectAltName.
    names: tuple[str, ...]
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> int:
        return (self.not_after - (now or datetime.now(UTC))).days

    def describe(self) -> str:
        names = ", ".join(self.names) if self.names else "no subjectAltName"
        days = self.days_left()
        when = f"{self.not_after:%Y-%m-%d}"
        expiry = f"expires {when} (in {days} days)" if days >= 0 else f"EXPIRED {when}"
        subject = f"; subject {self.subject}" if self.subject else ""
        return f"for {names}{subject}; issuer {self.issuer or '(none)'}; {expiry}"

    def facts(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": list(self.names),
            "not_after": self.not_after.isoformat(),
            "days_left": self.days_left(),
        }


#: Attribute types shown in a subject or issuer (DER-encoded object identifiers).
_NAME_ATTRIBUTES = {
    b"\x55\x04\x03": "CN",
    b"\x55\x04\x06": "C",
    b"\x55\x04\x07": "L",
    b"\x55\x04\x08": "ST",
    b"\x55\x04\x0a": "O",
    b"\x55\x04\x0b": "OU",
}
_SUBJECT_ALT_NAME = b"\x55\x1d\x11"
_SEQUENCE, _SET, _UTC_TIME, _GENERALIZED_TIME, _BMP_STRING = 0x30, 0x31, 0x17, 0x18, 0x1E
_DNS_NAME, _IP_ADDRESS, _VERSION, _EXTENSIONS = 0x82, 0x87, 0xA0, 0xA3


def parse_certificate(der: bytes) -> Certificate:
    """Subject, issuer, names and expiry of an X.509 certificate in DER.

    The standard library decodes a certificate only once it is verified
    (``getpeercert()``); the check must also show the one that failed
    verification, so it reads these few fields itself. ValueError if the
    bytes are not a certificate.
    """
    try:
        ((tag, certificate),) = _children(der)
        tbs_tag, tbs = _children(certificate)[0]
        fields = _children(tbs)
        if fields and fields[0][0] == _VERSION:
            fields = fields[1:]
        _serial, _algorithm, issuer, validity, subject = fields[:5]
        _not_before, not_after = _children(validity[1])
        names = next((_alt_names(value) for kind, value in fields[5:] if kind == _EXTENSIONS), ())
        if tag != _SEQUENCE or tbs_tag != _SEQUENCE:
            raise ValueError("not a certificate")
        return Certificate(_name(subject[1]), _name(issuer[1]), names, _time(*not_after))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an X.509 certificate: {exc}") from None


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """The DER element at ``pos``: its tag, its contents and where the next one starts."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated")
    return tag, data[pos:end], end


def _children(data: bytes) -> list[tuple[int, bytes]]:
    items = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _tlv(data, pos)
        items.append((tag, value))
    return items


def _name(data: bytes) -> str:
    """``CN=wstun.test, O=Example`` from a Name (attribute types we don't know are left out)."""
    parts = []
    for _, attributes in _children(data):
        for _, pair in _children(attributes):
            (_, oid), (kind, value) = _children(pair)[:2]
            if oid in _NAME_ATTRIBUTES:
                text = value.decode("utf-16-be" if kind == _BMP_STRING else "utf-8", "replace")
                parts.append(f"{_NAME_ATTRIBUTES[oid]}={text}")
    return ", ".join(parts)


def _time(kind: int, value: bytes) -> datetime:
    text = value.decode("ascii")
    layout = "%y%m%d%H%M%SZ" if kind == _UTC_TIME else "%Y%m%d%H%M%SZ"
    if kind not in (_UTC_TIME, _GENERALIZED_TIME):
        raise ValueError("bad validity")
    return datetime.strptime(text, layout).replace(tzinfo=UTC)


def _alt_names(data: bytes) -> tuple[str, ...]:
    ((_, extensions),) = _children(data)
    for _, extension in _children(extensions):
        parts = _children(extension)
        if parts[0][1] != _SUBJECT_ALT_NAME:
            continue
        ((_, general_names),) = _children(parts[-1][1])
        names = []
        for kind, value in _children(general_names):
            if kind == _DNS_NAME:
                names.append(value.decode("ascii"))
            elif kind == _IP_ADDRESS:
                names.append(str(ipaddress.ip_address(value)))
        return tuple(names)
    return ()


# -- the walk -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Seen:
    """What a TLS handshake showed: version, cipher and the server's certificate."""

    version: str | None
    cipher: str | None
    certificate: Certificate | None


def _seen(sink: asyncio.StreamWriter) -> _Seen:
    tls = sink.get_extra_info("ssl_object")
    if not isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
        return _Seen(None, None, None)
    cipher = tls.cipher()
    der = tls.getpeercert(binary_form=True)
    try:
        certificate = parse_certificate(der) if der else None
    except ValueError:
        certificate = None
    return _Seen(tls.version(), cipher[0] if cipher else None, certificate)


#: OpenSSL's verify codes the check has advice for.
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})  # no issuer / self-signed / not local
_EXPIRED, _HOSTNAME_MISMATCH, _IP_MISMATCH = 10, 62, 64


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _since(start: float) -> float:
    return _ms(time.perf_counter() - start)


class _Walk:
    """One check's state, step to step: where it connects and what it holds open."""

    def __init__(
        self, config: ClientConfig, target: Target | None, idle_probe: float | None
    ) -> None:
        self.config = config
        self.target = target
        self.idle_probe = idle_probe
        parts = urlsplit(config.url)
        #: The server's name and port as the URL says (Host, SNI, the certificate).
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if config.secure else 80)
        self.sni = config.tls_server_name or self.host
        self.timeout = config.connect_timeout
        #: The CONNECT proxy (set by the proxy step).
        self.proxy: str | None = None
        #: Where the first TCP connection goes and what it is, and its addresses.
        self.hop: tuple[str, int, str] = (self.host, self.port, "the URL's host")
        self.addresses: list[tuple[int, tuple[Any, ...]]] = []
        #: The hand-walked connection (tcp to tls); closed before the upgrade.
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.dialer: WebSocketDialer | None = None
        #: The upgraded idle WebSocket (pinged, then closed).
        self.websocket: ClientConnection | None = None
        #: The upgrade's refusal when it was the token's (401): the token step says it.
        self.unauthorized: HandshakeError | None = None

    def steps(self) -> list[tuple[str, Callable[[], Awaitable[Step]]]]:
        return [
            ("proxy", self.proxy_step),
            ("resolve", self.resolve_step),
            ("tcp", self.tcp_step),
            ("connect", self.connect_step),
            ("tls", self.tls_step),
            ("upgrade", self.upgrade_step),
            ("token", self.token_step),
            ("target", self.target_step),
            ("ping", self.ping_step),
            ("idle", self.idle_step),
        ]

    # 1. proxy

    async def proxy_step(self) -> Step:
        self.proxy, where = proxy_in_use(self.config)
        connect_to = self.config.connect_to
        if connect_to is not None:
            self.hop = (connect_to.host, connect_to.port, "--connect-to")
        elif self.proxy is not None:
            parts = urlsplit(self.proxy)
            default = 443 if parts.scheme == "https" else 80
            self.hop = (parts.hostname or "", parts.port or default, "the proxy")
        shown = _masked(self.proxy) if self.proxy is not None else None
        return Step("proxy", Status.OK, where, {"proxy": shown})

    # 2. resolve

    async def resolve_step(self) -> Step:
        host, port, role = self.hop
        behind = f"; the proxy resolves {self.host}" if role == "the proxy" else ""
        if is_ip(host):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.addresses = [(family, (host, port))]
            detail = f"{host} is an address ({role}): nothing to resolve{behind}"
            return Step("resolve", Status.OK, detail, {"host": host, "addresses": [host], "ms": 0})
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            return Step("resolve", Status.FAIL, f"no answer for {host} within {self.timeout:g}s")
        except OSError as exc:
            words = (exc.strerror or str(exc)).lower()
            return Step("resolve", Status.FAIL, f"can't resolve {host} ({role}): {words}")
        ms = _since(start)
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr) not in self.addresses:
                self.addresses.append((family, sockaddr))
        shown = [str(sockaddr[0]) for _, sockaddr in self.addresses]
        detail = f"{host} ({role}) -> {', '.join(shown)} in {ms} ms{behind}"
        return Step("resolve", Status.OK, detail, {"host": host, "addresses": shown, "ms": ms})

    # 3. tcp, then the proxy's CONNECT

    async def tcp_step(self) -> Step:
        _, _, role = self.hop
        failures = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for family, sockaddr in self.addresses:
            address = format_target(str(sockaddr[0]), int(sockaddr[1]))
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            start = time.perf_counter()
            try:
                async with asyncio.timeout_at(deadline):
                    await loop.sock_connect(sock, sockaddr)
                self.streams = await asyncio.open_connection(sock=sock)
            except TimeoutError:
                sock.close()
                failures.append(f"{address}: no answer within {self.timeout:g}s")
                break
            except OSError as exc:
                sock.close()
                failures.append(f"{address}: {describe_os_error(exc)}")
                continue
            ms = _since(start)
            detail = f"{address} ({role}) in {ms} ms"
            return Step("tcp", Status.OK, detail, {"address": address, "ms": ms})
        detail = "; ".join(failures) + _tcp_advice(failures, role)
        return Step("tcp", Status.FAIL, detail, {"tried": failures})

    async def connect_step(self) -> Step:
        if self.proxy is None:
            return Step("connect", Status.SKIP, "no proxy")
        proxy = urlsplit(self.proxy)
        if proxy.scheme not in ("http", "https"):
            return Step(
                "connect", Status.SKIP, f"a {proxy.scheme} proxy: the upgrade goes through it"
            )
        assert self.streams is not None
        authority = format_target(self.host, self.port)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                if proxy.scheme == "https":
                    await self.streams[1].start_tls(
                        ssl.create_default_context(), server_hostname=proxy.hostname
                    )
                head = await self._ask_proxy(proxy, authority)
        except TimeoutError:
            detail = f"the proxy did not answer CONNECT {authority} within {self.timeout:g}s"
            return Step("connect", Status.FAIL, detail)
        except asyncio.IncompleteReadError:
            detail = f"the proxy closed the connection without answering CONNECT {authority}"
            return Step("connect", Status.FAIL, detail)
        except asyncio.LimitOverrunError:
            detail = f"the proxy's answer to CONNECT {authority} is not HTTP (no end of headers)"
            return Step("connect", Status.FAIL, detail)
        except ssl.SSLError as exc:
            detail = f"TLS to the https:// proxy failed: {describe_tls_error(exc)}"
            return Step("connect", Status.FAIL, detail)
        except OSError as exc:
            detail = f"CONNECT {authority} failed: {describe_os_error(exc)}"
            return Step("connect", Status.FAIL, detail)
        ms = _since(start)
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        pieces = line.split(" ", 2)
        status = int(pieces[1]) if len(pieces) > 1 and pieces[1].isdigit() else 0
        answer = " ".join(pieces[1:])
        facts = {"authority": authority, "http_status": status, "ms": ms}
        if 200 <= status < 300:
            detail = f"CONNECT {authority}: {answer} in {ms} ms"
            return Step("connect", Status.OK, detail, facts)
        shown = answer or repr(line)  # a status line we could not read, quoted
        detail = f"the proxy refused CONNECT {authority}: {shown}"
        return Step("connect", Status.FAIL, detail + _proxy_advice(status), facts)

    async def _ask_proxy(self, proxy: SplitResult, authority: str) -> bytes:
        assert self.streams is not None
        source, sink = self.streams
        sink.write(connect_request(authority, proxy))
        # At most the stream's limit (64 KiB), else LimitOverrunError.
        return await source.readuntil(b"\r\n\r\n")

    # 4. tls

    async def tls_step(self) -> Step:
        if not self.config.secure:
            await self._release()
            return Step("tls", Status.SKIP, "ws:// has no TLS")
        if self.proxy is not None and urlsplit(self.proxy).scheme not in ("http", "https"):
            await self._release()
            return Step("tls", Status.SKIP, "not checked through this proxy: see the upgrade")
        config = self.config
        context = client_tls_context(config.cacert, insecure=config.insecure)
        sni = None if is_ip(self.sni) else self.sni
        try:
            ms, seen = await self._handshake(context)
        except ssl.SSLCertVerificationError as exc:
            return await self._unverified(exc, sni)
        except TimeoutError:
            return Step("tls", Status.FAIL, f"no TLS handshake within {self.timeout:g}s")
        except (ssl.SSLError, OSError) as exc:
            return Step("tls", Status.FAIL, _tls_failure(exc))
        if config.insecure:
            verified = "NOT verified (--insecure)"
        else:
            verified = f"verified against {config.cacert or 'the system CAs'}"
        certificate = seen.certificate
        shown = certificate.describe() if certificate is not None else "(unreadable)"
        detail = (
            f"{seen.version} {seen.cipher} in {ms} ms; SNI {sni or 'none (an IP address)'}; "
            f"certificate {shown}; {verified}"
        )
        facts: dict[str, object] = {
            "version": seen.version,
            "cipher": seen.cipher,
            "sni": sni,
            "verified": not config.insecure,
            "ms": ms,
            **(certificate.facts() if certificate is not None else {}),
        }
        return Step("tls", Status.OK, detail, facts)

    async def _handshake(self, context: ssl.SSLContext) -> tuple[float, _Seen]:
        """TLS on the hand-walked connection, which is closed afterwards either way."""
        assert self.streams is not None
        sink = self.streams[1]
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                await sink.start_tls(context, server_hostname=self.sni)
            return _since(start), _seen(sink)
        finally:
            await self._release()

    async def _unverified(self, exc: ssl.SSLCertVerificationError, sni: str | None) -> Step:
        """A certificate that failed verification: what it is, and what to do."""
        certificate = await self._peek_certificate()
        words = describe_tls_error(exc).rstrip(".")  # OpenSSL's sentence, in our list
        facts: dict[str, object] = {"sni": sni, "verified": False, "verify_error": words}
        if certificate is None:
            return Step("tls", Status.FAIL, words, facts)
        facts.update(certificate.facts())
        advice = _certificate_advice(exc.verify_code, certificate, self.sni)
        detail = f"{words}; the server's certificate is {certificate.describe()}{advice}"
        return Step("tls", Status.FAIL, detail, facts)

    async def _peek_certificate(self) -> Certificate | None:
        """The server's certificate, read on a second connection without verifying it."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            async with asyncio.timeout(self.timeout):
                if (await self.tcp_step()).status is not Status.OK:
                    return None
                if self.proxy is not None and (await self.connect_step()).status is not Status.OK:
                    return None
                _, seen = await self._handshake(context)
        except (OSError, ssl.SSLError, TimeoutError):
            return None
        finally:
            await self._release()
        return seen.certificate

    async def _release(self) -> None:
        """Close the hand-walked connection, if it is open."""
        if self.streams is None:
            return
        _, sink = self.streams
        self.streams = None
        sink.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(1.0):
                await sink.wait_closed()

    # 5. upgrade

    def _dialer(self) -> WebSocketDialer:
        if self.dialer is None:
            self.dialer = WebSocketDialer(self.config)
        return self.dialer

    async def upgrade_step(self) -> Step:
        await self._release()
        start = time.perf_counter()
        try:
            websocket = await self._dialer().connect(None, (SUBPROTOCOL_V2,))
        except HandshakeError as exc:
            server = _server_of(exc)
            facts = {"http_status": exc.status, "reason": exc.reason, "server": server}
            if exc.status == 401:
                self.unauthorized = exc
                detail = (
                    f"401 from the tunnel endpoint{_from(server)}: the path carries upgrades "
                    "to it; the token is refused (see token)"
                )
                return Step("upgrade", Status.OK, detail, facts)
            detail = f"{exc}{_from(server)}{_upgrade_advice(exc, server)}"
            return Step("upgrade", Status.FAIL, detail, facts)
        ms = _since(start)
        self.websocket = websocket
        response = websocket.response
        assert response is not None  # connect() returns after the 101
        server = response.headers.get("Server")
        version = server.removeprefix("wstun/") if server and server.startswith("wstun/") else None
        facts = {
            "http_status": response.status_code,
            "reason": response.reason_phrase,
            "subprotocol": websocket.subprotocol,
            "server": server,
            "version": version,
            "ms": ms,
        }
        answer = f"{response.status_code} {response.reason_phrase} in {ms} ms"
        if websocket.subprotocol != SUBPROTOCOL_V2:
            detail = (
                f"{answer}, but no wstun subprotocol was chosen (offered {SUBPROTOCOL_V2}): "
                "a WebSocket server, but not wstun-server (or one older than wstun.v2)"
            )
            return Step("upgrade", Status.FAIL, detail, facts)
        detail = f"{answer}; subprotocol {SUBPROTOCOL_V2}; {_version_words(server, version)}"
        return Step("upgrade", Status.OK, detail, facts)

    # 6. token

    async def token_step(self) -> Step:
        health = urlsplit(probe_url(self.config.url)).path
        try:
            said = await self._dialer().probe()
        except HandshakeError as exc:
            if self.unauthorized is not None:
                refusal = exc if exc.status == 401 else self.unauthorized
                facts = {"http_status": 401, "reason": refusal.reason}
                return Step("token", Status.FAIL, f"401 {refusal.reason}", facts)
            detail = (
                f"accepted (the upgrade got 101), but the client's startup check GET {health} "
                f"answered {exc}: the client will warn at startup"
            )
            return Step(
                "token", Status.OK, detail, {"http_status": exc.status, "reason": exc.reason}
            )
        # WebSocketDialer.probe says "server ok (<the server's first line>)".
        reason = said.removeprefix("server ok (").removesuffix(")")
        if self.unauthorized is not None:  # the health check took it, the upgrade did not
            refusal = self.unauthorized
            facts = {"http_status": 401, "reason": refusal.reason}
            return Step("token", Status.FAIL, f"401 {refusal.reason}", facts)
        facts = {"http_status": 200, "reason": reason}
        return Step("token", Status.OK, self._token_words(reason), facts)

    def _token_words(self, reason: str) -> str:
        if "no token needed" in reason:
            given = "; the token given is not checked" if self.config.token else ""
            return f"no token needed (the server takes every client){given}"
        if "token accepted" in reason:
            return "accepted (the server says: token accepted)"
        return f"accepted (the upgrade got 101; the server says: {reason})"

    # 7. target

    async def target_step(self) -> Step:
        target = self.target
        if target is None:
            return Step("target", Status.SKIP, "not asked (--target HOST:PORT)")
        start = time.perf_counter()
        try:
            websocket = await self._dialer().connect(target, (SUBPROTOCOL,))
        except HandshakeError as exc:
            facts = {"target": str(target), "http_status": exc.status, "reason": exc.reason}
            return Step("target", Status.FAIL, f"{target}: {exc}", facts)
        ms = _since(start)
        await close_or_drop(websocket, 1000, "check done")
        facts = {"target": str(target), "http_status": 101, "ms": ms}
        detail = f"{target}: allowed, and the server reached it (101 in {ms} ms)"
        return Step("target", Status.OK, detail, facts)

    # 8. ping

    async def ping_step(self) -> Step:
        websocket = self.websocket
        assert websocket is not None
        times: list[float] = []
        try:
            async with asyncio.timeout(self.timeout):
                for _ in range(PINGS):
                    start = time.perf_counter()
                    await (await websocket.ping())
                    times.append(_since(start))
        except TimeoutError:
            detail = (
                f"{len(times)} of {PINGS} pings answered within {self.timeout:g}s: something "
                "in the path holds back or drops WebSocket control frames"
            )
            return Step("ping", Status.FAIL, detail, {"answered": len(times)})
        except ConnectionClosed as exc:
            detail = f"the WebSocket closed after {len(times)} of {PINGS} pings: {exc}"
            return Step("ping", Status.FAIL, detail, {"answered": len(times)})
        finally:
            self.websocket = None
            await close_or_drop(websocket, 1000, "check done")
        low, middle, high = min(times), round(statistics.median(times), 1), max(times)
        detail = f"{PINGS} round trips: min {low} ms, median {middle} ms, max {high} ms"
        facts = {"count": PINGS, "min_ms": low, "median_ms": middle, "max_ms": high}
        return Step("ping", Status.OK, detail, facts)

    # 9. idle

    async def idle_step(self) -> Step:
        wait = self.idle_probe
        if wait is None:
            return Step("idle", Status.SKIP, "not asked (--idle-probe S)")
        try:
            websocket = await self._dialer().connect(None, (SUBPROTOCOL_V2,))
        except HandshakeError as exc:
            return Step("idle", Status.FAIL, f"can't open the idle WebSocket: {exc}")
        opened = time.perf_counter()
        try:
            async with asyncio.timeout(wait):
                while True:
                    await websocket.recv()  # an idle wstun.v2 WebSocket gets no message
        except TimeoutError:
            await close_or_drop(websocket, 1000, "check done")
            detail = f"still open after {wait:g}s with no pings from this side"
            return Step("idle", Status.OK, detail, {"waited_s": wait, "closed_after_s": None})
        except ConnectionClosed as exc:
            lived = round(time.perf_counter() - opened, 2)
            close = None if exc.rcvd is None else (exc.rcvd.code, exc.rcvd.reason)
            return idle_verdict(lived, close, self.config.ping_interval, waited=wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        await self._release()
        if self.websocket is not None:
            await close_or_drop(self.websocket, 1000, "check done")
            self.websocket = None


async def run_check(
    config: ClientConfig,
    *,
    target: Target | None = None,
    idle_probe: float | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Report:
    """Walk the path to ``config.url``, step by step; ``on_step`` hears each as it ends.

    After the first failing step the others are ``NOT_RUN``. Nothing raises
    for what the path does; a step that raises something unexpected fails with
    its type and message.
    """
    walk = _Walk(config, target, idle_probe)
    steps: list[Step] = []
    try:
        for name, run in walk.steps():
            failed = next((step for step in steps if step.status is Status.FAIL), None)
            if failed is not None:
                step = Step(name, Status.NOT_RUN, f"not run: {failed.name} failed")
            else:
                try:
                    step = await run()
                except Exception as exc:  # a diagnostic tool reports, it does not crash
                    step = Step(name, Status.FAIL, f"unexpected {type(exc).__name__}: {exc}")
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        await walk.close()
    return Report(config.url, tuple(steps))


# -- words --------------------------------------------------------------------------------


def idle_verdict(
    lived: float,
    close: tuple[int, str] | None,
    ping_interval: float | None,
    *,
    waited: float,
) -> Step:
    """The idle step for a WebSocket closed after ``lived`` seconds without pings.

    ``close`` is the close frame's code and reason, None when the connection
    was cut without one. It passes when the client's pings (``ping_interval``,
    None: off) come before that, else it fails saying what to set.
    """
    if close is None:
        how = f"cut after {lived:g}s without a close frame (1006): a proxy's idle timeout?"
    else:
        how = f"closed by the far end after {lived:g}s ({close[0]} {close[1]})".replace(" )", ")")
    facts = {
        "waited_s": waited,
        "closed_after_s": lived,
        "close_code": None if close is None else close[0],
    }
    detail = f"an idle WebSocket was {how}"
    if ping_interval is not None and ping_interval < lived:
        sooner = f"{detail}; the client's pings every {ping_interval:g}s come sooner"
        return Step("idle", Status.OK, sooner, facts)
    if ping_interval is None:
        every = "are off (--ping-interval 0)"
    else:
        every = f"come every {ping_interval:g}s"
    advice = (
        f"; the client's pings {every}: set --ping-interval below {lived:g}s, "
        f"e.g. --ping-interval {ping_interval_below(lived):g}"
    )
    return Step("idle", Status.FAIL, detail + advice, facts)


def ping_interval_below(seconds: float) -> float:
    """A ping interval well below ``seconds``: half of it, rounded down to one digit
    (1 s: 0.5, 60 s: 30, 75 s: 30, 0.3 s: 0.1)."""
    half = seconds / 2
    if half <= 0:
        return 0.0
    exponent = math.floor(math.log10(half))
    digit = math.floor(round(half / 10.0**exponent, 9))
    return round(digit * 10.0**exponent, 9)


def _tcp_advice(failures: Sequence[str], role: str) -> str:
    if failures and all(failure.endswith("connection refused") for failure in failures):
        what = "the proxy" if role == "the proxy" else "wstun-server, or the proxy in front of it,"
        return f": nothing listens there; is {what} running on that port?"
    if failures and "no answer" in failures[-1]:
        return ": a firewall drops the packets, or the address is wrong"
    return ""


def _proxy_advice(status: int) -> str:
    if status == 407:
        return " (the proxy wants credentials: http://USER:PASSWORD@proxy:PORT in --proxy)"
    if status == 403:
        return " (the proxy does not allow this host or port)"
    return ""


def _tls_failure(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        words = describe_tls_error(exc)
        if "WRONG_VERSION" in str(exc):
            return f"{words}: {PLAIN_SERVER}"
        if isinstance(exc, ssl.SSLEOFError):
            return "the server closed the connection during the TLS handshake"
        return words
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "the server closed the connection during the TLS handshake"
    return f"TLS handshake failed: {describe_os_error(exc)}"


def _certificate_advice(code: int, certificate: Certificate, name: str) -> str:
    if code in _UNKNOWN_ISSUER:
        return " (its issuer is not a CA this client trusts: give --cacert FILE with that CA)"
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        names = ", ".join(certificate.names) or certificate.subject or "another name"
        return (
            f" (it is not for {name}: put {names} in the URL, "
            "or give --tls-server-name with one of its names)"
        )
    if code == _EXPIRED:
        return f" (it expired on {certificate.not_after:%Y-%m-%d}: the server needs a new one)"
    return ""


def _server_of(exc: HandshakeError) -> str | None:
    """The Server header of the answer behind a refusal (InvalidStatus), if any."""
    cause = exc.__cause__
    if isinstance(cause, InvalidStatus):
        return cause.response.headers.get("Server")
    return None


def _from(server: str | None) -> str:
    return f" (Server: {server})" if server else ""


def _upgrade_advice(exc: HandshakeError, server: str | None) -> str:
    wstun = bool(server and server.startswith("wstun/"))
    if exc.status == 404 and not wstun:
        return ": this path is not the tunnel endpoint; check the URL's path"
    if exc.status == 426:
        return ": something in front dropped the Upgrade header (a proxy must pass Upgrade and Connection)"  # noqa: E501
    if exc.status in (502, 503, 504) and not wstun:
        return ": the proxy in front can't reach wstun-server"
    if exc.status == 400 and exc.reason.startswith("no target"):
        return ": the server is older than wstun.v2 (tunnels naming a target may still work)"
    if exc.status and not wstun and exc.status not in (403, 404):
        return ": not a wstun-server answer"
    return ""


def _version_words(server: str | None, version: str | None) -> str:
    if version is not None:
        return f"wstun {version}"
    if server:
        return f"the server's version is not shown (Server: {server}: a proxy in front answers)"
    return "the server's version is not shown (no Server header)"
