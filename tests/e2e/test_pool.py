"""The client's pool of warm wstun.v2 WebSockets (``--pool N``), end to end.

Real wstun-client and wstun-server processes on loopback. Which WebSocket a
tunnel rode is read off the server's per-tunnel line: ``peer=`` is the
WebSocket's TCP source port, the same for every tunnel on one WebSocket.
The peers that a real wstun-server can't play (a v1-only server, a server
that answers ``open`` wrongly) are small websockets servers in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from .conftest import Process, Wstun, echo_target, free_port
from .test_socks import connect, greeting, request, socks_client
from .test_tunnel import expect_reset

TIMEOUT = 10.0
READY = r"pool: ready, \d+ idle"
SERVER_LINE = r"tunnel closed id=s\d+ peer=127\.0\.0\.1:(\d+) target=(\S+) .*end=(\S+)"


async def echo_once(port: int, payload: bytes = b"ping") -> None:
    """One short tunnel as an application: payload, half-close, the whole echo back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == payload
    finally:
        writer.close()


async def server_lines(server: Process, count: int) -> list[tuple[int, str, str]]:
    """The server's first ``count`` tunnel lines: (WebSocket port, target, end)."""
    lines = await server.wait_for(SERVER_LINE, count=count)
    return [(int(m.group(1)), m.group(2), m.group(3)) for m in lines]


async def reset_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the first bytes, then resets the connection (RST, not FIN)."""
    await reader.read(1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_the_pool_fills_and_later_tunnels_need_no_upgrade(wstun: Wstun, target) -> None:
    """After the first tunnel shows the server speaks v2, the pool fills, and every later
    tunnel rides one of its warm WebSockets, byte-exact, each logged as its own tunnel."""
    port = await target(echo_target())
    server, client, local = await wstun.tunnel(port, client_args=("-v", "--pool", "2"))

    await echo_once(local)  # a fresh WebSocket, the target in the URL
    await client.wait_for(READY)
    for size in (1, 1000, 100_000, 3):
        await echo_once(local, bytes(range(256)) * (size // 256) + b"x" * (size % 256))

    lines = await server_lines(server, 5)
    assert all(end == "eof" for _, _, end in lines)
    assert len(client.matches(r"pool: open 127\.0\.0\.1:\d+ on a warm WebSocket")) == 4
    # Five tunnels over at most three WebSockets: the first and the pool's two.
    assert len({ws for ws, _, _ in lines}) <= 3
    await client.wait_for(r"tunnel closed id=c\d+ .*end=eof", count=5)


async def test_steady_concurrent_connections_stop_needing_upgrades(wstun: Wstun, target) -> None:
    """Rounds of 6 connections at once on a pool of 1: after the first round, the
    WebSockets that come back are kept for the next (6 at once lately, so 7), and
    the later rounds open no new ones, where keeping only twice the pool's size
    would upgrade for 4 of every 6."""
    port = await target(echo_target())
    server, client, local = await wstun.tunnel(port, client_args=("-v", "--pool", "1"))
    await echo_once(local)
    await client.wait_for(READY)
    done = 1
    for _ in range(5):
        await asyncio.gather(*(echo_once(local, b"round %d" % i) for i in range(6)))
        done += 6
        # Each tunnel's WebSocket is back in the pool before its line is logged.
        await client.wait_for(r"tunnel closed id=c\d+ .*end=eof", count=done)
    lines = await server_lines(server, done)
    assert all(end == "eof" for _, _, end in lines)
    first_round = {ws for ws, _, _ in lines[:7]}
    new_later = {ws for ws, _, _ in lines[7:]} - first_round
    # Only a few: the pool's refills during round one, which carried no tunnel
    # then. Taking back no more than twice the pool's size, it is about 20.
    assert len(new_later) <= 5, (len(first_round), len(new_later))
    assert len(first_round | new_later) <= 12


async def test_idle_websockets_close_after_the_idle_limit(wstun: Wstun, target) -> None:
    """--pool-idle: a warm WebSocket no connection took is closed, and not replaced
    until a connection comes; that one still works, and the pool fills again."""
    port = await target(echo_target())
    server, client, local = await wstun.tunnel(
        port, client_args=("-v", "--pool", "1", "--pool-idle", "0.5")
    )
    await echo_once(local)
    await client.wait_for(READY)
    # Two: the first tunnel's WebSocket, kept, and the refill's.
    await client.wait_for(r"pool: a WebSocket was idle for 0\.5s; closing it", count=2)
    assert not client.matches(r"replacing it")
    await echo_once(local, b"after the idle limit")
    await client.wait_for(READY, count=2)
    lines = await server_lines(server, 2)
    assert [end for _, _, end in lines] == ["eof", "eof"]


async def test_a_tunnel_that_failed_never_gives_its_websocket_back(wstun: Wstun, target) -> None:
    """A tunnel cut by a reset closes its WebSocket; no later tunnel rides it."""
    echo_port = await target(echo_target())
    reset_port = await target(reset_target)
    server, sport = await wstun.server(
        "--allow", f"127.0.0.1:{echo_port}", "--allow", f"127.0.0.1:{reset_port}"
    )
    url = f"ws://127.0.0.1:{sport}/"
    # Two listeners, one pool: one client process, one dialer.
    client = wstun.spawn(
        [wstun.client_cmd, "-L", f"0:127.0.0.1:{echo_port}", "-L", f"0:127.0.0.1:{reset_port}",
         url, "-v", "--pool", "1"]
    )  # fmt: skip
    ports = [int(m.group(1)) for m in await client.wait_for(
        r"forwarding 127\.0\.0\.1:(\d+) ->", count=2
    )]  # fmt: skip
    echo_local, reset_local = ports

    await echo_once(echo_local)
    await client.wait_for(READY)
    reader, writer = await asyncio.open_connection("127.0.0.1", reset_local)
    writer.write(b"x")
    with pytest.raises(ConnectionResetError):  # the app sees the target's reset
        await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    (failed,) = [line for line in await server_lines(server, 2) if line[2] != "eof"]
    for _ in range(4):
        await echo_once(echo_local)
    later = (await server_lines(server, 6))[2:]
    assert all(end == "eof" for _, _, end in later)
    assert failed[0] not in {ws for ws, _, _ in later}


@pytest.mark.parametrize(
    ("make_request", "code", "log"),
    [
        (lambda s: request("127.0.0.1", 1), 0x02, r"refused: 403 target not allowed: [^\n]*"),
        (lambda s: request("127.0.0.1", s), 0x05, r"refused: 502 [^\n]*connection refused[^\n]*"),
        (lambda s: request("bad_name!", 7), 0x08, r"refused: 400 bad target: [^\n]*"),
    ],
    ids=["403-not-allowed", "502-refused", "400-bad-name"],
)
async def test_a_refusal_in_band_is_the_refusal_over_http(
    wstun: Wstun, target, make_request, code: int, log: str
) -> None:
    """The same SOCKS reply code and the same log line, warm WebSocket or fresh upgrade;
    and the warm WebSocket stays in the pool after a refusal."""
    echo_port = await target(echo_target())
    closed = free_port()
    _, sport = await wstun.server(
        "--allow", f"127.0.0.1:{echo_port}", "--allow", f"127.0.0.1:{closed}"
    )
    url = f"ws://127.0.0.1:{sport}/"
    seen = []
    for pool in ("2", "0"):
        client, socks = await socks_client(wstun, url, "-v", "--pool", pool)
        async with connect(socks) as conn:  # an ordinary tunnel: the pool learns of v2
            await conn.send(greeting(0) + request("127.0.0.1", echo_port))
            assert await conn.recv(2) == b"\x05\x00"
            assert await conn.reply() == 0
            await conn.echo_check()
        if pool != "0":
            await client.wait_for(READY)
        async with connect(socks) as conn:
            await conn.send(greeting(0))
            assert await conn.recv(2) == b"\x05\x00"
            await conn.send(make_request(closed))
            assert await conn.reply() == code
            assert await conn.rest() == b""
        (line,) = await client.wait_for(log)
        seen.append(line.group(0))
        if pool != "0":
            assert client.matches(r"pool: open \S+ on a warm WebSocket")
            # Still warm: the next tunnel needs no upgrade either.
            async with connect(socks) as conn:
                await conn.send(greeting(0) + request("127.0.0.1", echo_port))
                assert await conn.recv(2) == b"\x05\x00"
                assert await conn.reply() == 0
                await conn.echo_check()
            # Waited for, not read at once: the log reader may still be a line behind.
            await client.wait_for(r"pool: open \S+ on a warm WebSocket", count=2)
            assert len(client.matches(r"pool: open \S+ on a warm WebSocket")) == 2
        client.stop()
    assert seen[0] == seen[1]


async def test_the_drain_of_the_server_costs_no_connection(wstun: Wstun, target) -> None:
    """The server closes the idle pool at once when it drains (1001); the client takes
    the next tunnel on a fresh WebSocket and reports the server's 503 as over HTTP."""
    port = await target(echo_target())
    server, client, local = await wstun.tunnel(port, "--grace", "5", client_args=("-v",))
    await echo_once(local)
    await client.wait_for(READY)
    server.popen.terminate()
    await client.wait_for(r"pool: an idle WebSocket was closed \(1001 server is shutting down\)")
    assert server.popen.wait(TIMEOUT) == 0


# ------------------------------------------------------- peers wstun can't play

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(handler: Handler, subprotocols: list[str]) -> AsyncIterator[int]:
    """A websockets server on 127.0.0.1 speaking only ``subprotocols``; its port."""

    def pick(ws: ServerConnection, offered: object) -> Subprotocol | None:
        # The server's preference, as wstun-server's, not the client's order.
        assert isinstance(offered, list)
        return next((Subprotocol(n) for n in subprotocols if n in offered), None)

    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol(name) for name in subprotocols],
        select_subprotocol=pick,
        ping_interval=None,
    ) as server:
        yield server.sockets[0].getsockname()[1]


async def client_close(ws: ServerConnection) -> tuple[int, str]:
    """Read until the client closes ``ws``; the code and reason it closed with."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


def target_of(ws: ServerConnection) -> str | None:
    assert ws.request is not None
    values = parse_qs(urlsplit(ws.request.path).query).get("to")
    return values[0] if values else None


async def relay_v1(ws: ServerConnection, target: str) -> None:
    """One tunnel as wstun.v1 says: binary payload, an empty message as each EOF."""
    host, _, port = target.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def up() -> None:
        while (message := await ws.recv()) != b"":
            assert isinstance(message, bytes)
            writer.write(message)
        writer.write_eof()

    async def down() -> None:
        while data := await reader.read(65536):
            await ws.send(data)
        await ws.send(b"")

    await asyncio.gather(up(), down())
    writer.close()


async def test_a_v2_client_with_a_v1_server_opens_one_websocket_per_tunnel(
    wstun: Wstun, target
) -> None:
    """Against a server that speaks only wstun.v1 the client works as before: every
    tunnel its own upgrade with its target in the URL, and no pool."""
    port = await target(echo_target())
    upgrades: list[tuple[str | None, str | None]] = []

    async def v1_server(ws: ServerConnection) -> None:
        upgrades.append((target_of(ws), ws.subprotocol))
        destination = target_of(ws)
        assert destination is not None, "a v1 server needs the target in the URL"
        await relay_v1(ws, destination)

    async with fake_server(v1_server, ["wstun.v1"]) as sport:
        client, local = await wstun.client(
            f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "-v", "--pool", "2"
        )
        for _ in range(3):
            await echo_once(local)
        await client.wait_for(r"tunnel closed id=c\d+ .*end=eof", count=3)
    assert upgrades == [(f"127.0.0.1:{port}", "wstun.v1")] * 3
    assert not client.matches(r"pool: ")


BAD_ANSWERS = {
    "not-json": ("{", "control message is not JSON"),
    "not-an-object": ("[1]", "control message is not a JSON object"),
    "unknown-type": ('{"type": "hello"}', "unknown control message type 'hello'"),
    "no-type": ('{"status": 200}', "control message without a valid type"),
    "open-from-server": ('{"type": "open", "target": "127.0.0.1:1"}', "unexpected open"),
    "status-not-int": (
        '{"type": "refused", "status": "403", "reason": "x"}',
        "refused: status must be an HTTP status code",
    ),
    "too-long": (
        json.dumps({"type": "refused", "status": 403, "reason": "x" * 2000}),
        "control message over 1024 bytes",
    ),
    "payload-first": (b"payload", "payload before the answer to open"),
}


@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
async def test_a_bad_answer_to_open_closes_with_1002(
    wstun: Wstun, target, answer: tuple[str | bytes, str]
) -> None:
    """A server that answers ``open`` wrongly: the client closes that WebSocket with 1002
    and the reason, the application sees a reset, the client says why, and the next
    tunnel still works."""
    message, reason = answer
    port = await target(echo_target())
    closes: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    idle_ready = asyncio.Event()

    async def bad_v2_server(ws: ServerConnection) -> None:
        destination = target_of(ws)
        if destination is not None:  # an ordinary tunnel, then the WebSocket is idle
            await relay_v1(ws, destination)
        else:
            idle_ready.set()
        try:
            opening = json.loads(await ws.recv())
        except ConnectionClosed:
            return
        assert opening == {"type": "open", "target": f"127.0.0.1:{port}"}
        await ws.send(message)
        await closes.put(await client_close(ws))

    async with fake_server(bad_v2_server, ["wstun.v2", "wstun.v1"]) as sport:
        client, local = await wstun.client(
            f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "-v", "--pool", "1"
        )
        await echo_once(local)
        await asyncio.wait_for(idle_ready.wait(), TIMEOUT)
        await client.wait_for(READY)
        await expect_reset(wstun, local)
        code, why = await asyncio.wait_for(closes.get(), TIMEOUT)
        assert code == 1002
        assert reason in why
        await client.wait_for(r"bad answer from server: " + re.escape(why[:20]))
    assert "Traceback" not in client.log


async def test_a_server_speaking_on_an_idle_websocket_breaks_the_protocol(
    wstun: Wstun, target
) -> None:
    """Nothing may come from the server on an idle WebSocket: 1002, and it is replaced."""
    port = await target(echo_target())
    closes: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    # The idle (target-less) WebSockets, as the server's handler gets each.
    idle: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def chatty_v2_server(ws: ServerConnection) -> None:
        destination = target_of(ws)
        if destination is not None:
            await relay_v1(ws, destination)
            await ws.close()
            return
        await idle.put(ws)
        await closes.put(await client_close(ws))

    async with fake_server(chatty_v2_server, ["wstun.v2", "wstun.v1"]) as sport:
        client, local = await wstun.client(
            f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "-v", "--pool", "1"
        )
        await echo_once(local)
        first = await asyncio.wait_for(idle.get(), TIMEOUT)
        await client.wait_for(READY)
        await first.send('{"type": "opened"}')
        assert await asyncio.wait_for(closes.get(), TIMEOUT) == (
            1002,
            "a control message while idle",
        )
        # The pool opens another in its place (the client says so before the server's
        # handler has it: wait for the handler).
        await client.wait_for(READY, count=2)
        second = await asyncio.wait_for(idle.get(), TIMEOUT)
        assert second is not first


# ------------------------------------------------------------- early payload


async def test_the_request_goes_ahead_of_the_answer(wstun: Wstun, target) -> None:
    """On a warm WebSocket the application's first bytes follow the ``open`` without
    waiting for ``opened`` (one round trip per request), and count in the tunnel's line."""
    port = await target(echo_target())
    ahead: list[bytes] = []

    async def patient_v2_server(ws: ServerConnection) -> None:
        destination = target_of(ws)
        if destination is not None:  # the first tunnel, the target in the URL
            await relay_v1(ws, destination)
        with contextlib.suppress(ConnectionClosed):
            opening = json.loads(await ws.recv())
            # Answer only once the request is here: a client that waits would hang.
            early = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert isinstance(early, bytes)
            ahead.append(early)
            await ws.send('{"type": "opened"}')
            host, _, tport = opening["target"].rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(tport))
            writer.write(early)
            while (message := await ws.recv()) != b"":
                assert isinstance(message, bytes)
                writer.write(message)
            writer.write_eof()
            while data := await reader.read(65536):
                await ws.send(data)
            await ws.send(b"")
            writer.close()
            await ws.wait_closed()

    async with fake_server(patient_v2_server, ["wstun.v2", "wstun.v1"]) as sport:
        client, local = await wstun.client(
            f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "-v", "--pool", "1"
        )
        await echo_once(local)
        await client.wait_for(READY)
        request = b"GET / HTTP/1.0\r\n\r\n"
        await echo_once(local, request)
        (line,) = (await client.wait_for(r"tunnel closed id=c2 .*up=(\d+) down=(\d+)"))[:1]
    assert ahead == [request]
    assert line.groups() == (str(len(request)), str(len(request)))


async def test_what_went_ahead_to_a_refused_target_reaches_no_other(wstun: Wstun, target) -> None:
    """A request sent ahead to a target the server refuses is dropped: later tunnels on
    the same WebSockets get their own bytes only, and the refusal reads as ever."""
    received: list[bytes] = []
    port = await target(echo_target(received))
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    client = wstun.spawn(
        [wstun.client_cmd, "-L", f"0:127.0.0.1:{port}", "-L", "0:127.0.0.1:1",
         f"ws://127.0.0.1:{sport}/", "-v", "--pool", "1"]
    )  # fmt: skip
    matches = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->", count=2)
    echo_local, refused_local = (int(m.group(1)) for m in matches)
    await echo_once(echo_local, b"first")
    await client.wait_for(READY)

    reader, writer = await asyncio.open_connection("127.0.0.1", refused_local)
    writer.write(b"for the refused target only")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    await client.wait_for(r"tunnel to 127\.0\.0\.1:1 refused: 403 target not allowed")
    # Whichever idle WebSocket carried the refused request, these use them all.
    later = [b"second", b"third", b"fourth"]
    for payload in later:
        await echo_once(echo_local, payload)
    await server_lines(server, 4)
    assert client.matches(r"pool: open 127\.0\.0\.1:1 on a warm WebSocket")
    assert received == [b"first", *later]


async def test_a_503_on_a_warm_websocket_takes_a_fresh_upgrade(wstun: Wstun, target) -> None:
    """A server that refuses an ``open`` with 503 (it began to drain, or is at a limit)
    costs the application nothing: the client upgrades afresh, which a proxy may send
    to another replica, and what went ahead reaches the target once."""
    accepted: list[bytes] = []
    port = await target(echo_target(accepted))
    upgrades: list[str | None] = []
    refused = asyncio.Event()

    async def draining_v2_server(ws: ServerConnection) -> None:
        destination = target_of(ws)
        upgrades.append(destination)
        if destination is not None:  # a tunnel named in the URL: carried
            await relay_v1(ws, destination)
            await ws.close()
            return
        with contextlib.suppress(ConnectionClosed):  # an idle one: refuses its open
            json.loads(await ws.recv())
            await ws.send('{"type": "refused", "status": 503, "reason": "server is shutting down"}')
            refused.set()
            await client_close(ws)

    async with fake_server(draining_v2_server, ["wstun.v2", "wstun.v1"]) as sport:
        client, local = await wstun.client(
            f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "-v", "--pool", "1"
        )
        await echo_once(local, b"first")
        await client.wait_for(READY)
        await echo_once(local, b"second")
        assert refused.is_set()
        await client.wait_for(r"refused on a warm WebSocket \(503 server is shutting down\)")
        await client.wait_for(r"tunnel closed id=c\d+ .*end=eof", count=2)
    assert upgrades.count(f"127.0.0.1:{port}") == 2  # the first, and the fresh one
    assert sorted(accepted) == [b"first", b"second"]
    assert not client.matches(r"status=503|reset")
