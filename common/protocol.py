"""Wire protocol v1: names, codes and the pure rules both sides apply.

Nothing here touches a socket. The server's handshake checks and the
client's URL building are plain functions so tests can call them directly.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import re
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from wstun.common.errors import TargetError, TunnelError

__all__ = [
    "AUTHORIZATION_HEADER",
    "CHECK_HEADER",
    "EOF_MARKER",
    "HEALTH_PATH",
    "MAX_CONTROL_SIZE",
    "QUERY_TARGET",
    "SUBPROTOCOL",
    "SUBPROTOCOL_REVERSE",
    "SUBPROTOCOL_UDP",
    "SUBPROTOCOL_V2",
    "Attach",
    "CloseCode",
    "Control",
    "ControlError",
    "Demand",
    "Failure",
    "HandshakeRejection",
    "Listen",
    "Listening",
    "Open",
    "Opened",
    "Refused",
    "Release",
    "Target",
    "bearer_token",
    "build_tunnel_url",
    "encode_control",
    "format_target",
    "is_health_path",
    "named_target",
    "normalize_prefix",
    "offers",
    "parse_answer",
    "parse_control",
    "parse_listen",
    "parse_port",
    "parse_target",
    "path_matches",
    "probe_url",
    "split_proto",
    "target_from_query",
]

#: Subprotocol offered by wstun clients; when selected, EOF markers apply.
SUBPROTOCOL = "wstun.v1"

#: Reusable WebSockets: v1's data rules, plus tunnels opened in-band, one
#: after another (docs/design.md, "Wire protocol v2").
SUBPROTOCOL_V2 = "wstun.v2"

#: Subprotocol of a reverse tunnel's WebSockets: its control channel and its data channels.
SUBPROTOCOL_REVERSE = "wstun.reverse.v1"

#: Subprotocol of a UDP flow: every binary message is one datagram, the empty one included.
SUBPROTOCOL_UDP = "wstun.udp.v1"

#: Largest control message (a text message under wstun.v2 or wstun.reverse.v1), in bytes.
MAX_CONTROL_SIZE = 1024

#: Query parameter naming the target: ``?to=HOST:PORT``.
QUERY_TARGET = "to"

#: Header carrying ``Bearer <token>``. Tokens never travel in the URL.
AUTHORIZATION_HEADER = "Authorization"

#: Under ``wstun.v1`` an empty binary message means "EOF in this direction".
EOF_MARKER = b""

#: Plain GET (no upgrade) on this path answers 200 while serving.
HEALTH_PATH = "/healthz"

#: On a GET of the health path, asks the server to check the request's token
#: too: the client's check at startup (200, or the 401 a tunnel would get).
CHECK_HEADER = "X-Wstun-Check"


class CloseCode(enum.IntEnum):
    """WebSocket close codes wstun sends (RFC 6455 section 7.4.1)."""

    NORMAL = 1000  # both directions reached EOF
    GOING_AWAY = 1001  # server or client shutting down
    PROTOCOL_ERROR = 1002  # a control message that breaks wstun.v2's rules
    UNSUPPORTED_DATA = 1003  # a text message arrived
    POLICY_VIOLATION = 1008  # a reverse lease taken over by its own client's newer channel
    INTERNAL_ERROR = 1011  # target or local connection broke


#: Close codes that mean the peer finished cleanly (1005: close frame
#: without a status, as some plain peers send).
CLEAN_CLOSE_CODES = frozenset({1000, 1005})


class Failure(enum.Enum):
    """Why the server refused to open a tunnel, and the HTTP status for it."""

    BAD_TARGET = 400
    BAD_REQUEST = 400  # an alias: same status, for malformed requests
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    CONFLICT = 409  # a reverse tunnel's port is held by someone else
    MISDIRECTED = 421  # a reverse data channel reached a worker that doesn't hold its lease
    URI_TOO_LONG = 414
    UPGRADE_REQUIRED = 426
    HEADERS_TOO_LARGE = 431
    HTTP_VERSION_NOT_SUPPORTED = 505
    TARGET_UNREACHABLE = 502
    UNAVAILABLE = 503
    TARGET_TIMEOUT = 504

    @property
    def status(self) -> int:
        return self.value


@dataclasses.dataclass(frozen=True)
class HandshakeRejection:
    """A refusal: the failure kind plus a one-line, human-readable reason.

    ``detail`` is for the server's log only, never sent (e.g. the rules
    that didn't allow a target).
    """

    failure: Failure
    reason: str
    detail: str = ""

    @property
    def status(self) -> int:
        return self.failure.status

    def body(self) -> str:
        """The HTTP response body: the reason on one line."""
        return self.reason.replace("\r", " ").replace("\n", " ") + "\n"


@dataclasses.dataclass(frozen=True)
class Target:
    """A host and a port. ``host`` holds IPv6 addresses without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_target(self.host, self.port)


_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def parse_port(text: str, *, what: str = "port", allow_zero: bool = False) -> int:
    """Parse a decimal TCP port, 1..65535 (0 too when ``allow_zero``)."""
    if not text.isascii() or not text.isdigit():
        raise TargetError(f"{what} must be a number, got {text!r}")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise TargetError(f"{what} must be between {low} and 65535, got {port}")
    return port


def _check_host(host: str, original: str) -> str:
    if not host:
        raise TargetError(f"missing host in {original!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in name.split(".")):
        raise TargetError(f"invalid host name {host!r} in {original!r}")
    return host


def _split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port`` or ``[v6]:port``; the port part may be empty."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise TargetError(f"missing ']' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise TargetError(f"expected ':PORT' after ']' in {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetError(f"invalid IPv6 address {host!r} in {text!r}") from None
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise TargetError(f"expected HOST:PORT, got {text!r}")
    if ":" in host:
        raise TargetError(f"IPv6 addresses need brackets, e.g. [::1]:80, got {text!r}")
    return host, port


#: The protocols a rule (``HOST:PORTS/udp``) or a forward (``-L 53:dns:53/udp``) names.
PROTOCOLS = ("tcp", "udp")


def split_proto(text: str) -> tuple[str, str]:
    """``(text, proto)`` of a ``.../udp`` or ``.../tcp`` pattern or forward (TCP without)."""
    head, slash, tail = text.rpartition("/")
    if slash and tail.lower() in PROTOCOLS and ":" in head.rpartition("]")[2]:
        return head, tail.lower()
    return text, "tcp"


def parse_target(text: str) -> Target:
    """Parse ``host:port`` or ``[v6addr]:port`` into a :class:`Target`.

    >>> parse_target("[::1]:5432")
    Target(host='::1', port=5432)
    """
    if not text:
        raise TargetError("empty target; expected HOST:PORT")
    host, port = _split_host_port(text)
    return Target(_check_host(host, text), parse_port(port, what=f"port in {text!r}"))


def format_target(host: str, port: int) -> str:
    """Inverse of :func:`parse_target`: brackets IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str, *, default_host: str = "127.0.0.1") -> Target:
    """Parse a listen address: ``HOST:PORT``, ``[v6]:PORT`` or a bare ``PORT``.

    Port 0 is accepted (the system picks a free port).
    """
    if text.isascii() and text.isdigit():
        return Target(default_host, parse_port(text, what="listen port", allow_zero=True))
    host, port = _split_host_port(text)
    host = _check_host(host, text) if host else default_host
    return Target(host, parse_port(port, what=f"port in {text!r}", allow_zero=True))


def normalize_prefix(prefix: str) -> str:
    """Canonical path prefix: leading slash, no trailing slash (``"/"`` stays)."""
    if not prefix.startswith("/"):
        raise ValueError(f"path prefix must start with '/', got {prefix!r}")
    if "?" in prefix or "#" in prefix:
        raise ValueError(f"path prefix can't hold '?' or '#', got {prefix!r}")
    stripped = prefix.rstrip("/")
    return stripped or "/"


def path_matches(request_path: str, prefix: str) -> bool:
    """Whether a request path (query excluded) is the tunnel endpoint.

    ``/tunnel`` accepts exactly ``/tunnel`` and ``/tunnel/``; ``/`` only ``/``.
    """
    prefix = normalize_prefix(prefix)
    if prefix == "/":
        return request_path == "/"
    return request_path in (prefix, prefix + "/")


def is_health_path(request_path: str, prefix: str) -> bool:
    """``/healthz`` at the root, and ``<prefix>/healthz`` behind a proxy."""
    prefix = normalize_prefix(prefix)
    if request_path == HEALTH_PATH:
        return True
    return prefix != "/" and request_path == prefix + HEALTH_PATH


def target_from_query(query: str, default: Target | None) -> Target | HandshakeRejection:
    """The target named by ``?to=``, else the default; or why there is none."""
    values = parse_qs(query, keep_blank_values=True).get(QUERY_TARGET)
    if values is None:
        return named_target(None, default)
    if len(values) > 1:
        return HandshakeRejection(Failure.BAD_TARGET, "bad target: more than one 'to' parameter")
    return named_target(values[0], default)


def named_target(named: str | None, default: Target | None) -> Target | HandshakeRejection:
    """The target ``named`` (as one ``?to=`` value, or an in-band ``open``'s), else the
    default; or why there is none."""
    if named is None:
        if default is None:
            return HandshakeRejection(
                Failure.BAD_TARGET, "no target: add ?to=HOST:PORT (the server has no default)"
            )
        return default
    try:
        return parse_target(named)
    except TargetError as exc:
        return HandshakeRejection(Failure.BAD_TARGET, f"bad target: {exc}")


def bearer_token(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else ``None``."""
    if header_value is None:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def probe_url(server_url: str) -> str:
    """Where a client checks the server at startup: its health path, as an upgrade.

    ``ws://h/tunnel/`` -> ``ws://h/tunnel/healthz``; the query is dropped.
    """
    parts = urlsplit(build_tunnel_url(server_url, None))
    path = parts.path.rstrip("/") + HEALTH_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def build_tunnel_url(server_url: str, target: Target | None) -> str:
    """The server URL with ``?to=`` set to ``target`` (kept query params stay)."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"server URL must start with ws:// or wss://, got {server_url!r}")
    if not parts.hostname:
        raise ValueError(f"server URL has no host: {server_url!r}")
    query = [
        (key, value)
        for key, values in parse_qs(parts.query, keep_blank_values=True).items()
        if key != QUERY_TARGET
        for value in values
    ]
    if target is not None:
        query.append((QUERY_TARGET, str(target)))
    path = parts.path or "/"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query, safe=":[]"), ""))


# --------------------------------------- wstun.v2 and wstun.reverse.v1 control


class ControlError(TunnelError):
    """A control message that breaks wstun.v2's rules; closes the WebSocket with 1002."""


#: Lease and session ids: URL-safe base64 of at least 128 random bits.
_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")


@dataclasses.dataclass(frozen=True)
class Open:
    """Start a tunnel. Client (v2): to ``target`` (``None``: the server's default).
    Server (reverse data channel): an inbound connection from ``peer``."""

    target: str | None = None
    peer: str | None = None


@dataclasses.dataclass(frozen=True)
class Opened:
    """The far end is connected; payload may flow."""


@dataclasses.dataclass(frozen=True)
class Refused:
    """No tunnel, for the status and reason an HTTP refusal would carry.

    ``retry_after``: seconds after which asking again may succeed (a port in
    its lease's grace), when the refuser knows.
    """

    status: int
    reason: str
    retry_after: float | None = None


@dataclasses.dataclass(frozen=True)
class Listen:
    """Client (reverse control channel): listen on ``bind``:``port`` on the server for me.

    ``session`` names the client process; ``lease``, when given, is the lease
    it got before, asked back. ``proto`` is ``udp`` for a listener of UDP flows
    (left out: TCP).
    """

    bind: str
    port: int
    session: str
    lease: str | None = None
    proto: str | None = None


@dataclasses.dataclass(frozen=True)
class Listening:
    """Server: the listener is up on ``bind``:``port``, held by ``lease``."""

    bind: str
    port: int
    lease: str
    #: Seconds the server keeps the port after this channel drops.
    grace: float


@dataclasses.dataclass(frozen=True)
class Attach:
    """Client: this WebSocket is a data channel of ``lease`` (of ``session``)."""

    lease: str
    session: str


@dataclasses.dataclass(frozen=True)
class Demand:
    """Server (control channel): ``waiting`` inbound connections wait for a data channel."""

    waiting: int


@dataclasses.dataclass(frozen=True)
class Release:
    """Client (control channel): free the lease and its port now."""


Control = Open | Opened | Refused | Listen | Listening | Attach | Demand | Release


def _str(data: dict[str, object], kind: str, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ControlError(f"{kind}: {name} must be a string")
    return value


def _optional_str(data: dict[str, object], kind: str, name: str) -> str | None:
    return None if data.get(name) is None else _str(data, kind, name)


def _int(data: dict[str, object], kind: str, name: str, low: int, high: int) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ControlError(f"{kind}: {name} must be an integer from {low} to {high}")
    return value


def _seconds(data: dict[str, object], kind: str, name: str) -> float:
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e6:
        raise ControlError(f"{kind}: {name} must be a number of seconds")
    return float(value)


def _id(data: dict[str, object], kind: str, name: str) -> str:
    value = _str(data, kind, name)
    if not _ID.match(value):
        raise ControlError(f"{kind}: {name} is not a valid id")
    return value


def parse_control(text: str) -> Control:
    """A control message from its text; :class:`ControlError` says what is wrong."""
    if len(text.encode()) > MAX_CONTROL_SIZE:
        raise ControlError(f"control message over {MAX_CONTROL_SIZE} bytes")
    try:
        data = json.loads(text)
    except ValueError:
        raise ControlError("control message is not JSON") from None
    if not isinstance(data, dict):
        raise ControlError("control message is not a JSON object")
    kind = data.get("type")
    if kind == "open":
        return Open(_optional_str(data, kind, "target"), _optional_str(data, kind, "peer"))
    if kind == "opened":
        return Opened()
    if kind == "refused":
        retry = None if data.get("retry_after") is None else _seconds(data, kind, "retry_after")
        status = data.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ControlError("refused: status must be an HTTP status code")
        return Refused(status, _str(data, kind, "reason"), retry)
    if kind == "listen":
        lease = None if data.get("lease") is None else _id(data, kind, "lease")
        proto = _optional_str(data, kind, "proto")
        if proto not in (None, *PROTOCOLS):
            raise ControlError("listen: proto must be tcp or udp")
        return Listen(
            _str(data, kind, "bind"),
            _int(data, kind, "port", 0, 65535),
            _id(data, kind, "session"),
            lease,
            None if proto == "tcp" else proto,
        )
    if kind == "listening":
        return Listening(
            _str(data, kind, "bind"),
            _int(data, kind, "port", 1, 65535),
            _id(data, kind, "lease"),
            _seconds(data, kind, "grace"),
        )
    if kind == "attach":
        return Attach(_id(data, kind, "lease"), _id(data, kind, "session"))
    if kind == "demand":
        return Demand(_int(data, kind, "waiting", 0, 1 << 20))
    if kind == "release":
        return Release()
    if isinstance(kind, str) and kind.isprintable() and len(kind) <= 32:
        raise ControlError(f"unknown control message type {kind!r}")
    raise ControlError("control message without a valid type")


def parse_answer(message: str | bytes, sender: str) -> Opened | Refused:
    """The answer to an ``open`` (``opened`` or ``refused``) from ``sender`` ("the
    server", "a client"); :class:`ControlError` for anything else."""
    if not isinstance(message, str):
        raise ControlError("payload before the answer to open")
    control = parse_control(message)
    if not isinstance(control, Opened | Refused):
        raise ControlError(f"unexpected {type(control).__name__.lower()} from {sender}")
    return control


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")[:300]


def encode_control(message: Control) -> str:
    """The text of a control message (compact JSON; fields that are None left out)."""
    data: dict[str, object]
    if isinstance(message, Refused):
        data = {"type": "refused", "status": message.status, "reason": _one_line(message.reason)}
        if message.retry_after is not None:
            data["retry_after"] = round(message.retry_after, 3)
    else:
        # Flat dataclasses of str, int and float: their fields as they are
        # (dataclasses.asdict() deep-copies, a cost on every in-band open).
        data = {"type": type(message).__name__.lower()}
        data.update((key, value) for key, value in vars(message).items() if value is not None)
    return json.dumps(data, separators=(",", ":"))


def offers(header_values: list[str], subprotocol: str) -> bool:
    """Whether ``Sec-WebSocket-Protocol`` values offer ``subprotocol``."""
    return any(item.strip() == subprotocol for value in header_values for item in value.split(","))
