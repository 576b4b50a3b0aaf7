"""End to end through the real wstun-server and wstun-client processes on loopback.

app --TCP--> wstun-client --WS--> wstun-server --TCP--> target
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from pathlib import Path

import pytest

from .conftest import (
    Wstun,
    both_ways_target,
    free_port,
    greets_then_half_closes,
    send_and_receive,
    sha,
)

TIMEOUT = 60.0
CLOSED = r"tunnel closed id={side}\d+ .*up=(\d+) down=(\d+) .*end=(\S+)"


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 64 * 1024 * 1024], ids=str)
async def test_payloads_both_directions_at_once(wstun: Wstun, target, size: int) -> None:
    """Random payloads cross both ways at once, byte-exact, with exact logged counts."""
    up, down = os.urandom(size), os.urandom(size)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(both_ways_target(down, received))
    server, client, local = await wstun.tunnel(port)

    answer = await send_and_receive(local, up)

    assert sha(answer) == sha(down)
    assert sha(await asyncio.wait_for(received, TIMEOUT)) == sha(up)
    for proc, side in ((server, "s"), (client, "c")):
        (line,) = await proc.wait_for(CLOSED.format(side=side))
        assert (int(line.group(1)), int(line.group(2)), line.group(3)) == (size, size, "eof")


async def test_client_half_close_then_answer(wstun: Wstun, target) -> None:
    """nc -N: the app half-closes, the target reads to EOF, then answers in full."""
    answer_body = os.urandom(300_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF: only then answer
        writer.write(sha(request).encode() + answer_body)
        await writer.drain()
        writer.close()

    port = await target(handler)
    _, _, local = await wstun.tunnel(port)
    request = b"GET / HTTP/1.0\r\n\r\n" * 1000

    answer = await send_and_receive(local, request)

    assert answer == sha(request).encode() + answer_body


async def test_target_half_close_first(wstun: Wstun, target) -> None:
    """The target half-closes first; the app reads to EOF and keeps sending."""
    greeting = os.urandom(100_000)
    handler, received = greets_then_half_closes(greeting)
    port = await target(handler)
    _, _, local = await wstun.tunnel(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == greeting
        late = os.urandom(200_000)
        writer.write(late)  # after the other direction's EOF
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(received, TIMEOUT) == late
    finally:
        writer.close()


async def test_refused_target_closes_local_and_logs_502(wstun: Wstun) -> None:
    """A target that refuses: the app's connection ends, the client logs 502 and why."""
    closed_port = free_port()
    _, client, local = await wstun.tunnel(closed_port)
    await expect_reset(wstun, local)
    await client.wait_for(rf"refused: 502 target 127\.0\.0\.1:{closed_port}: connection refused")


async def test_target_reset_mid_stream_is_an_error_for_the_app(wstun: Wstun, target) -> None:
    """A target that resets mid-stream: the app sees a reset, never a clean EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(os.urandom(100_000))
        await writer.drain()
        await reader.readexactly(5)  # the app's data arrived: the tunnel is up
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    port = await target(handler)
    server, client, local = await wstun.tunnel(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(b"hello")
    try:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    (line,) = await server.wait_for(CLOSED.format(side="s"))
    assert line.group(3) == "error"
    assert 'reason="target read failed: connection reset by peer"' in line.string
    (line,) = await client.wait_for(CLOSED.format(side="c"))
    assert line.group(3) == "error"
    assert "1011" in line.string


async def expect_reset(wstun: Wstun, local: int) -> None:
    """As an application: connect and see the connection reset (a refused tunnel)."""

    async def connect_and_read() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        try:
            return await asyncio.wait_for(reader.read(), TIMEOUT)
        finally:
            writer.close()

    # The reset can come so fast that it already fails the connect call.
    with pytest.raises(ConnectionResetError):
        await connect_and_read()


async def test_token(wstun: Wstun, target, tmp_path: Path) -> None:
    """The right token opens the tunnel; a wrong one is refused with 401."""
    token_file = tmp_path / "token"
    token_file.write_text("right-token\n")
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(both_ways_target(b"pong", received))
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}", "--token-file", str(token_file))
    url = f"ws://127.0.0.1:{sport}/"

    _, good = await wstun.client(
        url, f"127.0.0.1:{port}", env={**os.environ, "WSTUN_TOKEN": "right-token"}
    )
    assert await send_and_receive(good, b"ping") == b"pong"

    bad_client, bad = await wstun.client(
        url, f"127.0.0.1:{port}", env={**os.environ, "WSTUN_TOKEN": "wrong"}
    )
    await expect_reset(wstun, bad)
    await bad_client.wait_for(r"refused: 401 invalid token")


async def test_disallowed_target_403(wstun: Wstun, target) -> None:
    """A target no rule allows is refused with 403 before anything is dialled."""
    dialled: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.append(True)
        writer.close()

    port = await target(handler)
    _, sport = await wstun.server("--allow", "127.0.0.1:1")
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    await expect_reset(wstun, local)
    await client.wait_for(rf"refused: 403 target not allowed: 127\.0\.0\.1:{port}")
    assert dialled == []


async def test_wrong_path_404(wstun: Wstun, target) -> None:
    """A client pointed at another path than --path gets 404."""
    port = await target(both_ways_target(b"", asyncio.get_running_loop().create_future()))
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}", "--path", "/tunnel")
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/other", f"127.0.0.1:{port}")
    await expect_reset(wstun, local)
    await client.wait_for(r"refused: 404 no tunnel endpoint at /other")


async def test_same_failure_is_not_logged_for_every_connection(wstun: Wstun, target) -> None:
    """20 connections failing the same way give one warning, not twenty."""
    port = await target(both_ways_target(b"", asyncio.get_running_loop().create_future()))
    server, sport = await wstun.server("--allow", "127.0.0.1:1")
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    for _ in range(20):
        await expect_reset(wstun, local)
    await server.wait_for(r"rejected .*status=403", count=20)
    assert client.stop() == 0
    assert len(client.matches(r"refused: 403")) == 1


async def test_sigterm_ends_both_cleanly(wstun: Wstun, target) -> None:
    """SIGTERM with --grace 0: both stop listening, end open tunnels at once, exit 0."""
    arrived = asyncio.Event()
    target_saw: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        arrived.set()
        try:
            target_saw.set_result(await reader.read())
        except ConnectionError as exc:
            target_saw.set_result(exc)
        writer.close()

    port = await target(handler)
    server, client, local = await wstun.tunnel(port, "--grace", "0", client_args=("--grace", "0"))
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(b"x")
    await asyncio.wait_for(arrived.wait(), TIMEOUT)  # the tunnel is open end to end
    try:
        assert client.stop(signal.SIGTERM) == 0
        (line,) = client.matches(CLOSED.format(side="c"))
        assert 'reason="client shutting down"' in line.string
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    (line,) = await server.wait_for(CLOSED.format(side="s"))
    assert line.group(3) == "error"
    # The target's side of the cut tunnel is an error too, not a clean EOF.
    assert isinstance(await asyncio.wait_for(target_saw, TIMEOUT), ConnectionResetError)
    assert server.stop(signal.SIGTERM) == 0
    assert server.matches(r"shutting down")
    with pytest.raises(ConnectionRefusedError):  # the client stopped listening
        await asyncio.open_connection("127.0.0.1", local)


async def test_idle_timeout_cuts_a_quiet_tunnel(wstun: Wstun, target) -> None:
    """--idle-timeout: a tunnel that moves nothing is cut, and the app sees a reset."""
    echoed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        echoed.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    port = await target(handler)
    server, _, local = await wstun.tunnel(port, "--idle-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
        with pytest.raises(ConnectionResetError):  # nothing moves: the server cuts it
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    (line,) = await server.wait_for(CLOSED.format(side="s"))
    assert (line.group(1), line.group(2), line.group(3)) == ("4", "4", "idle-timeout")


async def test_unreachable_server_is_logged_and_local_reset(wstun: Wstun) -> None:
    """With no server listening, the app's connection is reset and the client says why."""
    client, local = await wstun.client(f"ws://127.0.0.1:{free_port()}/", "127.0.0.1:1")
    await expect_reset(wstun, local)
    await client.wait_for(
        r"tunnel to 127\.0\.0\.1:1 failed: can't reach server: connection refused"
    )


async def test_busy_local_port_is_a_clear_startup_error(wstun: Wstun) -> None:
    """A -L port already in use: the client names that forward and exits 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = wstun.spawn(
            [wstun.client_cmd, "-L", f"{port}:db:5432", f"ws://127.0.0.1:{free_port()}/"]
        )
        assert await asyncio.to_thread(proc.popen.wait, 20) == 1
    await proc.wait_for(
        rf"-L 127\.0\.0\.1:{port} -> db:5432: can't listen on 127\.0\.0\.1:{port}: "
        "address already in use"
    )
