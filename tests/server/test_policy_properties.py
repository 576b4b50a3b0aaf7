"""Property tests of target parsing and policy matching."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wstun.common.errors import TargetError
from wstun.common.protocol import Target, format_target, parse_target
from wstun.server.policy import BUILTIN_DENY, Policy, parse_rule

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.integers(min_value=1, max_value=65535)


@settings(max_examples=300)
@given(host=hosts, port=ports)
def test_format_then_parse_round_trips(host: str, port: int) -> None:
    """parse_target(format_target(h, p)) gives back (h, p) for every valid host and port."""
    assert parse_target(format_target(host, port)) == Target(host, port)


@settings(max_examples=500)
@given(text=st.text(max_size=60))
def test_parse_target_accepts_or_says_why(text: str) -> None:
    """Any text either parses into a valid target or raises TargetError, nothing else."""
    try:
        target = parse_target(text)
    except TargetError:
        return  # any other exception fails the test
    assert 1 <= target.port <= 65535
    assert parse_target(str(target)) == target


@settings(max_examples=300)
@given(host=st.one_of(hostnames, ipv4), port=st.integers(min_value=-5, max_value=70000))
def test_ports_outside_range_are_refused(host: str, port: int) -> None:
    """Ports 1..65535 parse; anything else is a TargetError."""
    text = f"{host}:{port}"
    if 1 <= port <= 65535:
        assert parse_target(text).port == port
    else:
        with pytest.raises(TargetError):
            parse_target(text)


networks = st.one_of(
    st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(0, 32).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))
    ),
    st.ip_addresses(v=6).flatmap(
        lambda a: st.integers(0, 128).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))
    ),
)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


def rule_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network, low: int, high: int) -> str:
    host = f"[{network}]" if network.version == 6 else str(network)
    return f"{host}:{low}-{high}"


def builtin_denied(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(rule.matches_address(address) for rule in BUILTIN_DENY)


@settings(max_examples=500)
@given(
    network=networks,
    address=addresses,
    low=ports,
    span=st.integers(0, 1000),
    port=ports,
)
def test_cidr_rule_matches_exactly_its_network_and_ports(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    low: int,
    span: int,
    port: int,
) -> None:
    """A CIDR allow rule keeps an address iff ipaddress says it is inside and the port fits."""
    high = min(low + span, 65535)
    assume(not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped))
    policy = Policy.from_patterns([rule_text(network, low, high)])
    target = Target(str(address), port)
    inside = address.version == network.version and address in network
    expected = inside and low <= port <= high
    assert policy.decide(target, [str(address)]).allowed == expected


@settings(max_examples=300)
@given(
    name=hostnames,
    resolved=st.lists(addresses, min_size=1, max_size=5, unique=True),
    denied=networks,
    port=ports,
)
def test_deny_wins_and_only_resolved_addresses_are_kept(
    name: str,
    resolved: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    denied: ipaddress.IPv4Network | ipaddress.IPv6Network,
    port: int,
) -> None:
    """Under *:* with one deny CIDR: kept = resolved minus denied minus built-in denials."""
    assume(not any(isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped for a in resolved))
    policy = Policy.from_patterns(["*:*"], deny=[rule_text(denied, 1, 65535)])
    decision = policy.decide(Target(name, port), [str(a) for a in resolved])
    expected = tuple(
        str(a)
        for a in resolved
        if not (a.version == denied.version and a in denied) and not builtin_denied(a)
    )
    assert decision.addresses == expected
    assert decision.allowed == bool(expected)


@settings(max_examples=300)
@given(suffix=hostnames, prefix=st.lists(label, min_size=0, max_size=3), port=ports)
def test_wildcard_matches_proper_subdomains_only(suffix: str, prefix: list[str], port: int) -> None:
    """*.suffix matches names with at least one more label, and never the suffix itself."""
    rule = parse_rule(f"*.{suffix}:*")
    name = ".".join([*prefix, suffix])
    assert rule.matches_name(name) == bool(prefix)
    assert rule.matches_name(name.upper() + ".") == bool(prefix)
    assert not rule.matches_name("x" + suffix)
