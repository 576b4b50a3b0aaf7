"""The client address behind trusted proxies: the right-to-left X-Forwarded-For walk."""

from __future__ import annotations

import pytest

from wstun.server.forwarded import ClientAddress, Source, TrustedProxies, parse_address

NGINX = TrustedProxies(["10.0.0.0/8", "fd00::/8"])


def test_untrusted_peer_headers_are_ignored() -> None:
    """From a peer outside the trusted networks, both headers are ignored."""
    client = NGINX.client("198.51.100.4", 5555, ["203.0.113.9"], "203.0.113.10")
    assert client == ClientAddress("198.51.100.4", 5555, Source.PEER)


def test_no_trusted_proxies_trusts_nobody() -> None:
    """With no --trusted-proxy, even a private peer's headers are ignored."""
    client = TrustedProxies().client("10.0.0.1", 80, ["203.0.113.9"])
    assert client.source is Source.PEER
    assert not TrustedProxies()


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        (["203.0.113.9"], "203.0.113.9:0"),
        # A client's forged entry sits left of the address the proxy appended.
        (["198.51.100.66, 203.0.113.9"], "203.0.113.9:0"),
        # Trusted hops are skipped from the right.
        (["203.0.113.9, 10.1.1.1, 10.2.2.2"], "203.0.113.9:0"),
        # Several header lines form one list, in order.
        (["203.0.113.9", "10.1.1.1"], "203.0.113.9:0"),
        # Ports and brackets as some proxies write them.
        (["203.0.113.9:4711"], "203.0.113.9:4711"),
        (["[2001:db8::7]:443"], "[2001:db8::7]:443"),
        (["2001:db8::7"], "[2001:db8::7]:0"),
        # Every hop trusted: the leftmost is the client.
        (["10.9.9.9, 10.1.1.1"], "10.9.9.9:0"),
        # Garbage stops the walk: the last trusted hop is the answer.
        (["203.0.113.9, unknown, 10.1.1.1"], "10.1.1.1:0"),
        (["evil.example"], "10.0.0.1:80"),
    ],
)
def test_forwarded_for_walk(forwarded_for: list[str], expected: str) -> None:
    """From a trusted peer, the first untrusted address from the right is the client."""
    assert str(NGINX.client("10.0.0.1", 80, forwarded_for)) == expected


def test_real_ip_only_without_forwarded_for() -> None:
    """X-Real-IP counts from a trusted peer when there is no X-Forwarded-For."""
    assert NGINX.client("10.0.0.1", 80, [], "203.0.113.9").source is Source.REAL_IP
    assert str(NGINX.client("10.0.0.1", 80, [], "203.0.113.9")) == "203.0.113.9:0"
    assert NGINX.client("10.0.0.1", 80, ["198.51.100.1"], "203.0.113.9").host == "198.51.100.1"
    assert NGINX.client("10.0.0.1", 80, [], "not-an-ip").source is Source.PEER


def test_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    """A dual-stack socket's ::ffff:10.0.0.1 peer is the trusted 10.0.0.1."""
    assert NGINX.client("::ffff:10.0.0.1", 80, ["203.0.113.9"]).host == "203.0.113.9"


def test_ipv6_proxy_network() -> None:
    """IPv6 networks are trusted as IPv4 ones are."""
    assert NGINX.client("fd00::1", 80, ["203.0.113.9"]).host == "203.0.113.9"


@pytest.mark.parametrize(
    "entry", ["", "unknown", "1.2.3", "[::1", "[::1]x", "1.2.3.4:99999", "1.2.3.4:x", "_hidden"]
)
def test_parse_address_rejects(entry: str) -> None:
    """Anything that isn't an IP address (with an optional port) is not an address."""
    assert parse_address(entry) is None


def test_invalid_network_is_a_value_error() -> None:
    """A bad CIDR is reported, not silently dropped."""
    with pytest.raises(ValueError, match="does not appear"):
        TrustedProxies(["10.0.0.300/8"])
