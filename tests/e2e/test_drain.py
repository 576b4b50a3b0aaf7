"""Graceful drain: on SIGTERM new tunnels are refused, open ones finish within --grace."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from .conftest import Handler, Process, Wstun, sha
from .test_http import request, upgrade
from .test_tunnel import CLOSED, TIMEOUT, expect_reset


def held_target(payload: bytes, release: asyncio.Event, arrived: asyncio.Event) -> Handler:
    """A target that waits for the app's first byte, then for ``release``, then answers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        arrived.set()
        await release.wait()
        writer.write(payload)
        await writer.drain()
        writer.close()

    return handler


async def exit_code(proc: Process) -> int:
    return await asyncio.to_thread(proc.popen.wait, TIMEOUT)


async def test_server_drain_finishes_open_tunnel_and_refuses_new_ones(wstun: Wstun, target) -> None:
    """SIGTERM: open tunnel completes byte-exact; new upgrades and /healthz get 503; exit 0."""
    payload = os.urandom(2 * 1024 * 1024)
    release, arrived = asyncio.Event(), asyncio.Event()
    port = await target(held_target(payload, release, arrived))
    server, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--grace", "60", "--path", "/tunnel"
    )
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/tunnel", f"127.0.0.1:{port}")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        writer.write(b"x")
        await asyncio.wait_for(arrived.wait(), TIMEOUT)

        server.popen.send_signal(signal.SIGTERM)
        await server.wait_for(r"draining: 1 tunnel\(s\) open, grace 60s")

        assert await request(sport, "/healthz", {}) == (503, "draining\n")
        assert await request(sport, "/tunnel/healthz", {}) == (503, "draining\n")
        assert await request(sport, f"/tunnel?to=127.0.0.1:{port}", upgrade(None)) == (
            503,
            "server is shutting down\n",
        )
        await expect_reset(wstun, local)  # a new tunnel through the client is refused too
        await client.wait_for(r"refused: 503 server is shutting down")

        release.set()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    assert sha(answer) == sha(payload)
    assert await exit_code(server) == 0
    (line,) = server.matches(CLOSED.format(side="s"))
    assert (line.group(2), line.group(3)) == (str(len(payload)), "eof")
    assert not server.matches("grace period over")


async def test_server_grace_over_closes_with_1001(wstun: Wstun, target) -> None:
    """A tunnel still open when --grace runs out is closed with 1001; the app sees a reset."""
    release, arrived = asyncio.Event(), asyncio.Event()
    port = await target(held_target(b"never sent", release, arrived))
    server, client, local = await wstun.tunnel(port, "--grace", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        writer.write(b"x")
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        server.popen.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        release.set()
    assert await exit_code(server) == 0
    await server.wait_for(r"grace period over: closing 1 tunnel\(s\)")
    (line,) = await client.wait_for(CLOSED.format(side="c"))
    assert line.group(3) == "error"
    assert "peer closed the WebSocket with 1001" in line.string


async def test_client_drain_stops_listening_and_finishes_open_tunnel(wstun: Wstun, target) -> None:
    """Client SIGTERM: the listener closes at once, the open tunnel completes, exit 0."""
    payload = os.urandom(1024 * 1024)
    release, arrived = asyncio.Event(), asyncio.Event()
    port = await target(held_target(payload, release, arrived))
    _, client, local = await wstun.tunnel(port, client_args=("--grace", "60"))
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        writer.write(b"x")
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        client.popen.send_signal(signal.SIGTERM)
        await client.wait_for(r"draining: 1 tunnel\(s\) open, grace 60s")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", local)
        release.set()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    assert sha(answer) == sha(payload)
    assert await exit_code(client) == 0
    (line,) = client.matches(CLOSED.format(side="c"))
    assert line.group(3) == "eof"
