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
    "SUBPROTOCOL_V2",
    "CloseCode",
    "Control",
    "ControlError",
    "Failure",
    "HandshakeRejection",
    "Open",
    "Opened",
    "Refused",
    "Target",
    "bearer_token",
    "build_tunnel_url",
    "encode_control",
    "format_target",
    "is_health_path",
    "normalize_prefix",
    "offers",
    "parse_control",
    "parse_listen",
    "parse_port",
    "parse_target",
    "path_matches",
    "probe_url",
    "target_from_query",
]

#: Subprotocol offered by wstun clients; when selected, EOF markers apply.
SUBPROTOCOL = "wstun.v1"

#: Reusable WebSockets: v1's data rules, plus tunnels opened in-band, one
#: after another (docs/design.md, "Wire protocol v2").
SUBPROTOCOL_V2 = "wstun.v2"

#: Largest control message (a text message under wstun.v2), in bytes.
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
        if default is None:
            return HandshakeRejection(
                Failure.BAD_TARGET, "no target: add ?to=HOST:PORT (the server has no default)"
            )
        return default
    if len(values) > 1:
        return HandshakeRejection(Failure.BAD_TARGET, "bad target: more than one 'to' parameter")
    try:
        return parse_target(values[0])
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


# ---------------------------------------------------------- wstun.v2 control


class ControlError(TunnelError):
    """A control message that breaks wstun.v2's rules; closes the WebSocket with 1002."""


@dataclasses.dataclass(frozen=True)
class Open:
    """Client: start a tunnel to ``target`` (``None``: the server's default target)."""

    target: str | None = None


@dataclasses.dataclass(frozen=True)
class Opened:
    """Server: the target is connected; payload may flow."""


@dataclasses.dataclass(frozen=True)
class Refused:
    """Server: no tunnel, for the status and reason an HTTP refusal would carry."""

    status: int
    reason: str


Control = Open | Opened | Refused


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
        target = data.get("target")
        if target is not None and not isinstance(target, str):
            raise ControlError("open: target must be a string")
        return Open(target)
    if kind == "opened":
        return Opened()
    if kind == "refused":
        status, reason = data.get("status"), data.get("reason")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ControlError("refused: status must be an HTTP status code")
        if not isinstance(reason, str):
            raise ControlError("refused: reason must be a string")
        return Refused(status, reason)
    if isinstance(kind, str) and kind.isprintable() and len(kind) <= 32:
        raise ControlError(f"unknown control message type {kind!r}")
    raise ControlError("control message without a valid type")


def encode_control(message: Control) -> str:
    """The text of a control message (compact JSON)."""
    if isinstance(message, Open):
        data: dict[str, object] = {"type": "open"}
        if message.target is not None:
            data["target"] = message.target
    elif isinstance(message, Opened):
        data = {"type": "opened"}
    else:
        one_line = message.reason.replace("\r", " ").replace("\n", " ")
        data = {"type": "refused", "status": message.status, "reason": one_line[:300]}
    return json.dumps(data, separators=(",", ":"))


def offers(header_values: list[str], subprotocol: str) -> bool:
    """Whether ``Sec-WebSocket-Protocol`` values offer ``subprotocol``."""
    return any(item.strip() == subprotocol for value in header_values for item in value.split(","))
