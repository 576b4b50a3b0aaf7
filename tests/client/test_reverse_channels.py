"""How many idle data channels a ``-R`` lease keeps, and when the extra ones go.

The counting of ``_Channels`` on its own: a stand-in forward (how many
channels it wants, and where closes are started) and stand-in channels that
record being closed. The end-to-end behaviour (steady rounds of concurrent
connections opening next to no channels) is in tests/e2e/test_reverse.py;
the trim runs SURPLUS_IDLE (30 s) after the fact, too long for an e2e test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from wstun.client import reverse
from wstun.client.reuse import KEEP_CEILING
from wstun.common.protocol import CloseCode


class Forward:
    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.started: list[Callable[[], Awaitable[object]]] = []

    def start(self, make: Callable[[], Awaitable[object]]) -> None:
        self.started.append(make)


class Channel:
    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def lease(channels: int) -> tuple[reverse._Channels, Forward]:
    forward = Forward(channels)
    return reverse._Channels(cast(Any, forward), "lease"), forward


async def test_kept_idle_channels_follow_the_tunnels_open_at_once() -> None:
    """At least 2N; after 6 tunnels at once with N = 1, room for 7 (6 + N) less
    those still busy; never more than KEEP_CEILING."""
    channels, _ = lease(1)
    assert channels._keep() == 2
    channels.peak, channels.busy = 6, 0
    assert channels._keep() == 7
    channels.busy = 4
    assert channels._keep() == 3
    channels.peak, channels.busy = 1000, 0
    assert channels._keep() == KEEP_CEILING


async def test_a_trim_closes_only_what_no_tunnel_needed_since_the_last_one() -> None:
    """The first trim after a burst keeps what the burst needed and starts a new
    "lately"; the next one, with no tunnel in between, closes down to 2N."""
    channels, forward = lease(1)
    idle = [Channel() for _ in range(7)]
    channels.idle.update(cast(Any, idle))
    channels.peak = 6
    channels._trim()
    assert len(channels.idle) == 7
    assert forward.started == []
    assert channels.peak == 0
    assert channels._trim_timer is not None  # still more than 2N idle: again later
    channels._trim_timer.cancel()
    channels._trim()
    assert len(channels.idle) == 2
    await asyncio.gather(*(make() for make in forward.started))
    closed = [c.closed_with for c in idle if c.closed_with is not None]
    assert closed == [(CloseCode.NORMAL, "idle")] * 5
    assert channels._trim_timer is None


async def test_a_closed_lease_trims_nothing() -> None:
    channels, forward = lease(1)
    channels.idle.update(cast(Any, [Channel() for _ in range(5)]))
    await channels.close("lease released")
    channels._trim()
    assert forward.started == []
