"""Limits: total and per-client tunnels (503), client cap per listener, handshake timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import pytest

from .conftest import Wstun
from .test_http import request, upgrade
from .test_tunnel import TIMEOUT, expect_reset


class HoldOpen:
    """A target handler that keeps each connection open until the peer leaves.

    ``arrived`` and ``left`` get one item per connection, so a test can wait
    for connections to be up and, before it ends, for all of them to be gone.
    """

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[None] = asyncio.Queue()
        self.left: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrived.put_nowait(None)
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        self.left.put_nowait(None)

    async def wait_left(self, count: int) -> None:
        for _ in range(count):
            await asyncio.wait_for(self.left.get(), TIMEOUT)


@contextlib.asynccontextmanager
async def raw_tunnels(port: int, path: str, count: int) -> AsyncIterator[list[int]]:
    """Open ``count`` upgrades from 127.0.0.1 and keep them open; yields their statuses."""
    writers: list[asyncio.StreamWriter] = []
    statuses = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            lines = [
                f"GET {path} HTTP/1.1",
                "Host: x",
                *(f"{k}: {v}" for k, v in upgrade(None).items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            statuses.append(int(head.split(b" ", 2)[1]))
        yield statuses
    finally:
        for writer in writers:
            writer.close()


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("--max-connections", "too many connections (server limit 2)"),
        ("--max-per-client", "too many connections from 127.0.0.1 (limit 2 per client)"),
    ],
)
async def test_server_limit_refuses_with_503_then_frees_slots(
    wstun: Wstun, target, option: str, reason: str
) -> None:
    """The third tunnel gets 503 with the reason; once one closes, a new one opens."""
    hold = HoldOpen()
    port = await target(hold)
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}", option, "2")
    path = f"/?to=127.0.0.1:{port}"
    async with raw_tunnels(sport, path, 2) as statuses:
        assert statuses == [101, 101]
        assert await request(sport, path, upgrade(None)) == (503, reason + "\n")
        assert (await request(sport, "/healthz", {}))[0] == 200  # health is not a tunnel
    await hold.wait_left(2)
    await server.wait_for(r"tunnel closed id=s\d+", count=2)
    async with raw_tunnels(sport, path, 1) as statuses:
        assert statuses == [101]
    await hold.wait_left(1)
    await server.wait_for(r"rejected peer=127\.0\.0\.1:\d+ status=503 reason=" + re.escape(reason))


async def test_client_caps_tunnels_per_listener(wstun: Wstun, target) -> None:
    """--max-tunnels 1: a second local connection is reset while the first is open."""
    hold = HoldOpen()
    port = await target(hold)
    _, client, local = await wstun.tunnel(port, client_args=("--max-tunnels", "1"))
    _, first = await asyncio.open_connection("127.0.0.1", local)
    try:
        await asyncio.wait_for(hold.arrived.get(), TIMEOUT)
        await expect_reset(wstun, local)
        await client.wait_for(r"1 tunnels open, the limit; resetting new ones")
    finally:
        first.close()
    await client.wait_for(r"tunnel closed id=c\d+ .*end=eof")
    _, second = await asyncio.open_connection("127.0.0.1", local)
    try:
        await asyncio.wait_for(hold.arrived.get(), TIMEOUT)  # a slot is free again
    finally:
        second.close()
    await hold.wait_left(2)


async def test_handshake_timeout_drops_slow_clients(wstun: Wstun, target) -> None:
    """A client that never finishes its request (slowloris) is dropped after the timeout."""
    _, sport = await wstun.server("--allow", "127.0.0.1:1", "--handshake-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", sport)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        try:
            answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # dropped without an answer
    finally:
        writer.close()
    assert (await request(sport, "/healthz", {}))[0] == 200
