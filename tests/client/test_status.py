"""The status line's text, from counts (no terminal needed)."""

from __future__ import annotations

import pytest

from wstun.client.status import ClientCounts, Snapshot, format_bytes, status_text
from wstun.common.report import TunnelReport


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"), (5e12, "5000.0 GB")],
)
def test_format_bytes(count: float, text: str) -> None:
    """Sizes in powers of 1000, as link rates are written."""
    assert format_bytes(count) == text


def test_counts_and_rates() -> None:
    """Open tunnels, bytes each way (ended ones included), rates since the last draw."""
    counts = ClientCounts()
    ended = TunnelReport("c1", "127.0.0.1:1", "db:5432", up=2_000_000, down=500)
    counts.tunnel_opened(ended)
    counts.tunnel_ended(ended)
    counts.handshake_failed(403)
    counts.tunnel_opened(TunnelReport("c2", "127.0.0.1:2", "db:5432"))
    before = Snapshot.of(counts, at=10.0)
    assert status_text(before, None) == (
        "wstun: 1 open | up 2.0 MB | down 500 B | 1 failed | ping -"
    )
    counts.done_up += 1_000_000  # as if a tunnel had ended with 1 MB more
    now = Snapshot.of(counts, at=12.0)
    assert status_text(now, before) == (
        "wstun: 1 open | up 3.0 MB 500.0 kB/s | down 500 B 0 B/s | 1 failed | ping -"
    )
