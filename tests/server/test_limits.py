"""Connection limits: slots in total and per client address."""

from __future__ import annotations

import pytest

from wstun.server.limits import ConnectionLimits, client_host


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("127.0.0.1:5000", "127.0.0.1"),
        ("[::1]:5000", "::1"),
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("-", "-"),
    ],
)
def test_client_host(peer: str, host: str) -> None:
    """The address part of a peer, with or without a port."""
    assert client_host(peer) == host


async def test_limits_count_and_release() -> None:
    """Per-client and total limits refuse with their reason; releasing frees the slot."""
    limits = ConnectionLimits(max_total=3, max_per_client=2)
    assert limits.acquire("a") is None
    assert limits.acquire("a") is None
    refused = limits.acquire("a")
    assert refused is not None
    assert refused.status == 503
    assert refused.reason == "too many connections from a (limit 2 per client)"
    assert limits.acquire("b") is None
    refused = limits.acquire("c")
    assert refused is not None
    assert refused.reason == "too many connections (server limit 3)"
    for client in ("a", "a", "b"):
        limits.release(client)
    assert limits.total == 0
    assert not limits.per_client
    await limits.wait_empty()
