"""SOCKS5 wire rules (RFC 1928/1929) as plain functions, without sockets."""

from __future__ import annotations

import struct

import pytest

from wstun.client.socks import (
    AddressType,
    Credentials,
    Greeting,
    Method,
    Reply,
    SocksError,
    SocksRequest,
    auth_reply,
    build_reply,
    check_credentials,
    encode_address,
    method_reply,
    parse_auth,
    parse_greeting,
    parse_request,
    reply_for_status,
    select_method,
)
from wstun.common.protocol import Target


def every_prefix(message: bytes) -> list[bytes]:
    return [message[:n] for n in range(len(message))]


# ------------------------------------------------------------------ greeting


def test_greeting_parsed_with_its_size() -> None:
    """VER NMETHODS METHODS: the methods and the bytes used (extra bytes left alone)."""
    assert parse_greeting(b"\x05\x02\x00\x02rest") == (Greeting(frozenset({0, 2})), 4)


@pytest.mark.parametrize("prefix", every_prefix(b"\x05\x03\x00\x01\x02"))
def test_greeting_incomplete(prefix: bytes) -> None:
    """Any strict prefix of a greeting asks for more bytes."""
    assert parse_greeting(prefix) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x04\x01\x00\x50", "SOCKS4 request"),
        (b"GET / HTTP/1.1\r\n", r"not a SOCKS5 greeting \(first byte 0x47\)"),
        (b"\x16\x03\x01", r"first byte 0x16"),  # a TLS ClientHello
    ],
)
def test_greeting_not_socks5(data: bytes, message: str) -> None:
    """SOCKS4 and other protocols are refused at the first byte, with no answer."""
    with pytest.raises(SocksError, match=message) as caught:
        parse_greeting(data)
    assert caught.value.answer == b""


@pytest.mark.parametrize(
    ("offered", "auth_required", "selected"),
    [
        ({0}, False, Method.NO_AUTH),
        ({0, 2}, False, Method.NO_AUTH),
        ({2}, False, Method.NO_ACCEPTABLE),
        ({0, 2}, True, Method.USERNAME_PASSWORD),
        ({0}, True, Method.NO_ACCEPTABLE),
        ({1, 0x80}, False, Method.NO_ACCEPTABLE),
        (set(), False, Method.NO_ACCEPTABLE),
    ],
)
def test_select_method(offered: set[int], auth_required: bool, selected: Method) -> None:
    """No auth when none is configured, username/password when it is, else 0xFF."""
    assert select_method(Greeting(frozenset(offered)), auth_required=auth_required) is selected
    assert method_reply(selected) == bytes([5, selected])


# ---------------------------------------------------------------- RFC 1929

AUTH = b"\x01\x05alice\x06sesame"


def test_auth_parsed() -> None:
    """VER ULEN UNAME PLEN PASSWD."""
    assert parse_auth(AUTH + b"next") == (Credentials("alice", "sesame"), len(AUTH))


@pytest.mark.parametrize("prefix", every_prefix(AUTH))
def test_auth_incomplete(prefix: bytes) -> None:
    """Any strict prefix of the sub-negotiation asks for more bytes."""
    assert parse_auth(prefix) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\x05\x01a\x01b", "bad username/password version 0x05"), (b"\x01\x01\xff\x01b", "UTF-8")],
)
def test_auth_malformed(data: bytes, message: str) -> None:
    """A wrong sub-negotiation version or undecodable text is answered with failure."""
    with pytest.raises(SocksError, match=message) as caught:
        parse_auth(data)
    assert caught.value.answer == b"\x01\x01"


def test_credentials_compared_exactly() -> None:
    """Both fields must match exactly; the password never shows in repr."""
    expected = Credentials("alice", "sesame")
    assert check_credentials(Credentials("alice", "sesame"), expected)
    assert not check_credentials(Credentials("alice", "Sesame"), expected)
    assert not check_credentials(Credentials("alic", "sesame"), expected)
    assert not check_credentials(Credentials("alice", "sesame "), expected)
    assert "sesame" not in repr(expected)
    assert (auth_reply(ok=True), auth_reply(ok=False)) == (b"\x01\x00", b"\x01\x01")


# ------------------------------------------------------------------ request

IPV4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"
IPV6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16"
DOMAIN = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"


@pytest.mark.parametrize(
    ("data", "request_"),
    [
        (IPV4, SocksRequest(1, AddressType.IPV4, Target("127.0.0.1", 8080))),
        (IPV6, SocksRequest(1, AddressType.IPV6, Target("::1", 22))),
        (DOMAIN, SocksRequest(1, AddressType.DOMAIN, Target("example.com", 443))),
        (b"\x05\x02" + IPV4[2:], SocksRequest(2, AddressType.IPV4, Target("127.0.0.1", 8080))),
    ],
    ids=["ipv4", "ipv6", "domain", "bind"],
)
def test_request_parsed(data: bytes, request_: SocksRequest) -> None:
    """Each address type decodes to a Target; bytes after the request are left alone."""
    assert parse_request(data + b"payload") == (request_, len(data))


def test_domain_name_is_passed_on_not_resolved_or_judged() -> None:
    """A name is decoded as sent (the server resolves and judges it), even 255 bytes."""
    name = b"x" * 255
    data = b"\x05\x01\x00\x03\xff" + name + b"\x00\x50"
    parsed = parse_request(data)
    assert parsed is not None
    assert parsed[0].target == Target("x" * 255, 80)


@pytest.mark.parametrize("prefix", every_prefix(IPV4) + every_prefix(IPV6) + every_prefix(DOMAIN))
def test_request_incomplete(prefix: bytes) -> None:
    """Any strict prefix of a request asks for more bytes, whatever its address type."""
    assert parse_request(prefix) is None


def test_domain_length_byte_longer_than_the_data() -> None:
    """A length byte promising more than arrived keeps waiting (truncated, not misread)."""
    assert parse_request(b"\x05\x01\x00\x03\x14example.com\x00\x50") is None


BAD_ADDRESS = Reply.ADDRESS_TYPE_NOT_SUPPORTED


@pytest.mark.parametrize(
    ("data", "message", "code"),
    [
        (b"\x04" + IPV4[1:], "bad request version 0x04", Reply.GENERAL_FAILURE),
        (b"\x05\x01\x00\x05\x00", "address type 0x05 not supported", BAD_ADDRESS),
        (b"\x05\x01\x00\x03\x00\x00\x50", "empty domain name", BAD_ADDRESS),
        (b"\x05\x01\x00\x03\x02\xc3\x28\x00\x50", "not UTF-8", BAD_ADDRESS),
    ],
    ids=["version", "address-type", "empty-name", "bad-utf8"],
)
def test_request_malformed(data: bytes, message: str, code: Reply) -> None:
    """Malformed requests are refused with the fitting reply code."""
    with pytest.raises(SocksError, match=message) as caught:
        parse_request(data)
    assert caught.value.answer == build_reply(code)


# -------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("host", "port", "encoded"),
    [
        ("0.0.0.0", 0, b"\x01\x00\x00\x00\x00\x00\x00"),
        ("::1", 22, b"\x04" + bytes(15) + b"\x01\x00\x16"),
        ("example.com", 443, b"\x03\x0bexample.com\x01\xbb"),
    ],
)
def test_encode_address(host: str, port: int, encoded: bytes) -> None:
    """ATYP ADDR PORT, as parse_request reads it back."""
    assert encode_address(host, port) == encoded
    parsed = parse_request(b"\x05\x01\x00" + encoded)
    assert parsed is not None
    assert parsed[0].target == Target(host, port)


@pytest.mark.parametrize("length", [256, 300, 1000])
def test_domain_longer_than_255_cannot_be_encoded(length: int) -> None:
    """One length byte: a longer name is rejected, never truncated or wrapped."""
    with pytest.raises(ValueError, match=f"1 to 255 bytes, got {length}"):
        encode_address("a" * length, 80)
    assert encode_address("a" * 255, 80)[1] == 255


def test_build_reply() -> None:
    """VER REP RSV ATYP BND.ADDR BND.PORT; 0.0.0.0:0 unless a bound address is given."""
    assert build_reply(Reply.SUCCEEDED) == b"\x05\x00\x00\x01" + bytes(6)
    assert build_reply(Reply.TTL_EXPIRED, Target("10.0.0.1", 1080)) == (
        b"\x05\x06\x00\x01\x0a\x00\x00\x01" + struct.pack("!H", 1080)
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (403, Reply.NOT_ALLOWED),
        (502, Reply.CONNECTION_REFUSED),
        (504, Reply.TTL_EXPIRED),
        (400, Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (0, Reply.GENERAL_FAILURE),
        (401, Reply.GENERAL_FAILURE),
        (404, Reply.GENERAL_FAILURE),
        (503, Reply.GENERAL_FAILURE),
    ],
)
def test_reply_for_status(status: int, code: Reply) -> None:
    """The server's HTTP refusal maps to the closest SOCKS5 reply."""
    assert reply_for_status(status) is code
