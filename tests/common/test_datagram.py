"""DatagramFlow's way onto the WebSocket: straight on when it can, queued when it can't,
and never ahead of a datagram that came before it. Real WebSockets on 127.0.0.1; the
transport's flow control (full, then drained) is driven by hand, as a full socket
buffer would drive it."""

from __future__ import annotations

import asyncio
import logging

from wstun.common.datagram import DatagramFlow, FlowReport

from .conftest import MakePair

TIMEOUT = 5.0


async def test_a_datagram_after_a_stall_goes_behind_the_queued_ones(make_pair: MakePair) -> None:
    """While the transport is full a datagram waits in the queue; one that comes the
    moment it drains, before the queue has been sent, goes behind it: the peer gets
    them in the order they came."""
    pair = await make_pair("ws-plain")
    client, server = pair.left_ws, pair.right_ws
    assert client is not None
    assert server is not None
    flow = DatagramFlow(client, lambda _: True, FlowReport("c1", "peer", "target"), outbound="up")
    running = asyncio.ensure_future(flow.run(logging.getLogger("test")))
    try:
        flow.from_local(b"0")
        assert await asyncio.wait_for(server.recv(), TIMEOUT) == b"0"

        client.pause_writing()  # the transport's buffer is full
        flow.from_local(b"1")
        client.resume_writing()  # drained; the queue's pump has not run yet
        flow.from_local(b"2")
        flow.from_local(b"3")

        got = [await asyncio.wait_for(server.recv(), TIMEOUT) for _ in range(3)]
        assert got == [b"1", b"2", b"3"]
        assert flow.report.datagrams_up == 4
        assert flow.report.dropped_up == 0
    finally:
        flow.stop("test over")
        await asyncio.wait_for(running, TIMEOUT)
