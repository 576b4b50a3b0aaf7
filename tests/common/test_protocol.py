"""Wire-protocol rules, tested without sockets."""

from __future__ import annotations

import pytest

from wstun.common.errors import TargetError
from wstun.common.protocol import (
    MAX_CONTROL_SIZE,
    SUBPROTOCOL,
    Attach,
    Control,
    ControlError,
    Demand,
    Failure,
    HandshakeRejection,
    Listen,
    Listening,
    Open,
    Refused,
    Release,
    Target,
    bearer_token,
    build_tunnel_url,
    encode_control,
    format_target,
    is_health_path,
    normalize_prefix,
    parse_control,
    parse_listen,
    parse_target,
    path_matches,
    target_from_query,
)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("db.internal:5432", "db.internal", 5432),
        ("127.0.0.1:6379", "127.0.0.1", 6379),
        ("[::1]:22", "::1", 22),
        ("[fd00::1:2]:65535", "fd00::1:2", 65535),
        ("localhost:1", "localhost", 1),
        ("my_service:80", "my_service", 80),
        ("example.com.:443", "example.com.", 443),
    ],
)
def test_parse_target_accepts(text: str, host: str, port: int) -> None:
    """Valid HOST:PORT and [v6]:PORT strings parse to host and port."""
    assert parse_target(text) == Target(host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty target"),
        ("db.internal", "expected HOST:PORT"),
        (":5432", "missing host"),
        ("db:", "must be a number"),
        ("db:0", "between 1 and 65535"),
        ("db:70000", "between 1 and 65535"),
        ("db:-1", "must be a number"),
        ("db:80a", "must be a number"),
        ("db: 80", "must be a number"),
        ("::1:22", "need brackets"),
        ("[::1:22", "missing ']'"),
        ("[::1]22", "expected ':PORT'"),
        ("[not-v6]:22", "invalid IPv6"),
        ("bad host:22", "invalid host name"),
        ("-bad.example:22", "invalid host name"),
        ("db:٣", "must be a number"),
    ],
)
def test_parse_target_rejects_with_clear_message(text: str, message: str) -> None:
    """Malformed targets raise TargetError saying what is wrong."""
    with pytest.raises(TargetError, match=message):
        parse_target(text)


@pytest.mark.parametrize("text", ["db.internal:5432", "[::1]:22", "10.0.0.1:1"])
def test_format_target_round_trips(text: str) -> None:
    """format_target is the inverse of parse_target, brackets included."""
    target = parse_target(text)
    assert format_target(target.host, target.port) == text
    assert str(target) == text


def test_parse_listen_defaults_and_port_zero() -> None:
    """A bare port binds loopback; port 0 lets the system choose."""
    assert parse_listen("8080") == Target("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:0") == Target("0.0.0.0", 0)
    assert parse_listen("[::1]:9000") == Target("::1", 9000)
    with pytest.raises(TargetError, match="between 0 and 65535"):
        parse_listen("70000")


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/", "/", True),
        ("/", "/x", False),
        ("/tunnel", "/tunnel", True),
        ("/tunnel", "/tunnel/", True),
        ("/tunnel/", "/tunnel", True),
        ("/tunnel", "/tunnelx", False),
        ("/tunnel", "/tunnel/x", False),
        ("/tunnel", "/", False),
        ("/a/b", "/a/b/", True),
    ],
)
def test_path_matches(prefix: str, path: str, expected: bool) -> None:
    """--path /tunnel accepts exactly /tunnel and /tunnel/."""
    assert path_matches(path, prefix) is expected


def test_health_path_at_root_and_under_prefix() -> None:
    """/healthz answers at the root and at <prefix>/healthz."""
    assert is_health_path("/healthz", "/")
    assert is_health_path("/healthz", "/tunnel")
    assert is_health_path("/tunnel/healthz", "/tunnel/")
    assert not is_health_path("/other/healthz", "/tunnel")


@pytest.mark.parametrize("prefix", ["tunnel", "/t?x=1", "/t#f"])
def test_bad_prefix_rejected(prefix: str) -> None:
    """A path prefix must be a plain absolute path."""
    with pytest.raises(ValueError, match="path prefix"):
        normalize_prefix(prefix)


def test_target_from_query() -> None:
    """?to= names the target; the default applies only when it is absent."""
    default = Target("127.0.0.1", 80)
    assert target_from_query("to=db%3A5432", None) == Target("db", 5432)
    assert target_from_query("to=[::1]:22", default) == Target("::1", 22)
    assert target_from_query("", default) == default
    for query, default_used, message in [
        ("", None, "no target"),
        ("to=", default, "empty target"),
        ("to=db:1&to=db:2", default, "more than one"),
        ("to=db:0", default, "between 1 and 65535"),
    ]:
        result = target_from_query(query, default_used)
        assert isinstance(result, HandshakeRejection)
        assert result.status == 400
        assert message in result.reason


def test_rejection_body_is_one_line() -> None:
    """The HTTP body of a refusal is its reason on a single line."""
    rejection = HandshakeRejection(Failure.FORBIDDEN, "not\r\nallowed")
    assert rejection.body() == "not  allowed\n"
    assert rejection.status == 403


def test_failure_statuses() -> None:
    """Each refusal kind maps to the HTTP status of the wire protocol."""
    assert {f.name: f.status for f in Failure} == {
        "BAD_TARGET": 400,
        "UNAUTHORIZED": 401,
        "FORBIDDEN": 403,
        "NOT_FOUND": 404,
        "METHOD_NOT_ALLOWED": 405,
        "CONFLICT": 409,
        "MISDIRECTED": 421,
        "URI_TOO_LONG": 414,
        "UPGRADE_REQUIRED": 426,
        "HEADERS_TOO_LARGE": 431,
        "TARGET_UNREACHABLE": 502,
        "UNAVAILABLE": 503,
        "TARGET_TIMEOUT": 504,
        "HTTP_VERSION_NOT_SUPPORTED": 505,
    }
    assert Failure.BAD_REQUEST is Failure.BAD_TARGET  # same status, two names


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        (None, None),
    ],
)
def test_bearer_token(value: str | None, token: str | None) -> None:
    """Only 'Bearer <token>' yields a token."""
    assert bearer_token(value) == token


def test_build_tunnel_url() -> None:
    """The client puts the target in ?to= and keeps other query parameters."""
    assert build_tunnel_url("ws://h:8080", Target("db", 5432)) == "ws://h:8080/?to=db:5432"
    assert (
        build_tunnel_url("wss://h/tunnel?x=1&to=old:1", Target("::1", 22))
        == "wss://h/tunnel?x=1&to=[::1]:22"
    )
    assert build_tunnel_url("ws://h/t", None) == "ws://h/t"
    with pytest.raises(ValueError, match="ws:// or wss://"):
        build_tunnel_url("http://h/", None)
    with pytest.raises(ValueError, match="no host"):
        build_tunnel_url("ws:///path", None)


def test_subprotocol_name() -> None:
    """Clients offer wstun.v1."""
    assert SUBPROTOCOL == "wstun.v1"


SESSION = "S" * 22
LEASE = "L" * 32


@pytest.mark.parametrize(
    "message",
    [
        Listen("127.0.0.1", 9000, SESSION),
        Listen("::", 0, SESSION, LEASE),
        Listen("127.0.0.1", 5353, SESSION, None, "udp"),
        Listening("127.0.0.1", 9000, LEASE, 30.0),
        Attach(LEASE, SESSION),
        Demand(7),
        Release(),
        Open(peer="127.0.0.1:5555"),
        Open("db:5432"),
        Refused(409, "127.0.0.1:9000 is held by another client", 12.5),
        Refused(403, "listening not allowed: 0.0.0.0:9000"),
    ],
    ids=repr,
)
def test_control_messages_round_trip(message: Control) -> None:
    """Every control message reads back as itself, under the size limit."""
    text = encode_control(message)
    assert len(text.encode()) <= MAX_CONTROL_SIZE
    assert parse_control(text) == message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"type":"listen","bind":"127.0.0.1","port":70000,"session":"' + SESSION + '"}', "port"),
        (
            '{"type":"listen","bind":1,"port":1,"session":"' + SESSION + '"}',
            "bind must be a string",
        ),
        ('{"type":"listen","bind":"::","port":1,"session":"tiny"}', "session is not a valid id"),
        (
            '{"type":"listen","bind":"::","port":1,"session":"' + SESSION + '","lease":"a b"}',
            "lease",
        ),
        (
            '{"type":"listen","bind":"::","port":1,"session":"' + SESSION + '","proto":"sctp"}',
            "proto must be tcp or udp",
        ),
        ('{"type":"attach","lease":"' + LEASE + '"}', "session must be a string"),
        ('{"type":"demand","waiting":-1}', "waiting"),
        ('{"type":"listening","bind":"::","port":0,"lease":"' + LEASE + '","grace":1}', "port"),
        ('{"type":"listening","bind":"::","port":1,"lease":"' + LEASE + '"}', "grace"),
        ('{"type":"refused","status":409,"reason":"x","retry_after":"soon"}', "retry_after"),
        ('{"type":"open","peer":5}', "peer must be a string"),
    ],
)
def test_malformed_reverse_control_messages(text: str, error: str) -> None:
    with pytest.raises(ControlError, match=error):
        parse_control(text)


def test_listen_for_tcp_said_or_left_out_is_the_same() -> None:
    """``proto`` left out is TCP, and TCP said reads as left out: one lease kind."""
    said = '{"type":"listen","bind":"::","port":1,"session":"' + SESSION + '","proto":"tcp"}'
    assert parse_control(said) == Listen("::", 1, SESSION)
    assert "proto" not in encode_control(Listen("::", 1, SESSION))
