"""Reverse tunnels (``-R``) end to end: real wstun-server and wstun-client processes.

The "laptop" service is an asyncio server in this process; the application
on the "server host" connects to the port the server listens on for the
client. The peers a real process can't play (a lease id from another
session, a client that breaks the control protocol, a server without
reverse tunnels) are raw websockets connections in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .conftest import (
    Process,
    Wstun,
    both_ways_target,
    echo_target,
    free_port,
    greets_then_half_closes,
    send_and_receive,
    sha,
)
from .test_pre_upgrade import back_to, fd_count

TIMEOUT = 30.0
LINE = (
    r"tunnel closed id={side}\d+ kind=reverse peer=\S+ target=\S+ up=(\d+) down=(\d+) .*end=(\S+)"
)
ON_SERVER = r"reverse 127\.0\.0\.1:\d+ on the server -> "
ALLOCATED = r"allocated port (\d+) on the server"
REVERSE = "wstun.reverse.v1"


async def reverse(
    wstun: Wstun,
    service: int,
    *server_args: str,
    client_args: tuple[str, ...] = (),
    allow: str = "127.0.0.1:*",
) -> tuple[Process, Process, int]:
    """A server allowing ``allow`` and a client with ``-R 0:127.0.0.1:service``;
    returns both and the port the server listens on for the client."""
    server, sport = await wstun.server("--allow-listen", allow, *server_args)
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"0:127.0.0.1:{service}", f"ws://127.0.0.1:{sport}/", *client_args]
    )
    (match,) = await client.wait_for(ALLOCATED)
    await client.wait_for(ON_SERVER)
    return server, client, int(match.group(1))


async def echo(port: int, payload: bytes = b"ping", host: str = "127.0.0.1") -> bytes:
    """As an application: payload, half-close, everything back."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


async def expect_reset(port: int) -> None:
    """As an application: connect, send a little, and see a reset (never a clean EOF)."""

    async def connect_and_read() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"hello")
            return await asyncio.wait_for(reader.read(), TIMEOUT)
        finally:
            writer.close()

    with pytest.raises(ConnectionResetError):
        await connect_and_read()


# ----------------------------------------------------------------- the data path


@pytest.mark.parametrize("size", [0, 1024 * 1024, 64 * 1024 * 1024], ids=str)
async def test_payloads_both_directions_at_once(wstun: Wstun, target, size: int) -> None:
    """Random payloads cross both ways at once through -R, byte-exact; both sides log
    the tunnel with kind=reverse and the exact payload counts (up: app to service)."""
    up, down = os.urandom(size), os.urandom(size)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    service = await target(both_ways_target(down, received))
    server, client, port = await reverse(wstun, service)

    answer = await send_and_receive(port, up)

    assert sha(answer) == sha(down)
    assert sha(await asyncio.wait_for(received, TIMEOUT)) == sha(up)
    for proc, side in ((server, "s"), (client, "c")):
        (line,) = await proc.wait_for(LINE.format(side=side))
        assert (int(line.group(1)), int(line.group(2)), line.group(3)) == (size, size, "eof")


async def test_application_half_close_then_answer(wstun: Wstun, target) -> None:
    """nc -N on the server host: the service reads to EOF, then answers in full."""
    body = os.urandom(300_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()
        writer.write(sha(request).encode() + body)
        await writer.drain()
        writer.close()

    _, _, port = await reverse(wstun, await target(handler))
    request = b"GET / HTTP/1.0\r\n\r\n" * 1000
    assert await send_and_receive(port, request) == sha(request).encode() + body


async def test_service_half_close_first(wstun: Wstun, target) -> None:
    """The mirror: the laptop's service half-closes first; the application keeps sending."""
    greeting = os.urandom(100_000)
    handler, received = greets_then_half_closes(greeting)
    _, _, port = await reverse(wstun, await target(handler))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == greeting
        late = os.urandom(200_000)
        writer.write(late)
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(received, TIMEOUT) == late
    finally:
        writer.close()


async def test_a_reset_from_the_service_reaches_the_application(wstun: Wstun, target) -> None:
    """The laptop's service resets mid-stream: the application on the server host sees a
    reset, and both sides log the tunnel as an error."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(os.urandom(100_000))
        await writer.drain()
        await reader.readexactly(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server, client, port = await reverse(wstun, await target(handler))
    await expect_reset(port)
    (line,) = await client.wait_for(LINE.format(side="c"))
    assert line.group(3) == "error"
    assert "connection reset" in line.string
    (line,) = await server.wait_for(LINE.format(side="s"))
    assert line.group(3) == "error"
    assert "1011" in line.string


async def test_a_refused_service_is_a_reset_and_both_sides_say_why(wstun: Wstun, target) -> None:
    """Nothing listens on the laptop's HOST:HOSTPORT: the application sees a reset, both
    sides log the reason, and the next connection still works (the channel is reused)."""
    closed = free_port()
    server, client, port = await reverse(wstun, closed)
    for _ in range(2):
        await expect_reset(port)
    reason = rf"127\.0\.0\.1:{closed}: connection refused"
    await client.wait_for(rf"reverse 127\.0\.0\.1:{port}: connection from \S+ reset: {reason}")
    await server.wait_for(rf"the client refused it: 502 {reason}", count=2)
    assert not server.matches("protocol error"), server.log


async def test_many_connections_reuse_warm_channels(wstun: Wstun, target) -> None:
    """Sequential connections ride the data channels kept open: far fewer WebSockets
    than connections, every one byte-exact."""
    _, client, port = await reverse(wstun, await target(echo_target()), client_args=("-v",))
    for i in range(20):
        payload = os.urandom(1000 + i)
        assert await echo(port, payload) == payload
    await client.wait_for(LINE.format(side="c"), count=20)
    opened = client.matches(r"websockets\.client: = connection is OPEN")
    assert len(opened) <= 8, f"{len(opened)} WebSockets for 20 connections"


async def test_steady_concurrent_connections_stop_opening_channels(wstun: Wstun, target) -> None:
    """Rounds of 6 connections at once with --reverse-channels 1: the channels that
    come back after the first round are kept (as many as were busy, plus one), so
    the later rounds open next to none, where keeping only twice
    --reverse-channels opened about 4 for every round."""
    _, client, port = await reverse(
        wstun, await target(echo_target()), client_args=("-v", "--reverse-channels", "1")
    )
    opened = r"websockets\.client: = connection is OPEN"
    done = 0
    for round_ in range(5):
        payloads = [os.urandom(500 + i) for i in range(6)]
        assert await asyncio.gather(*(echo(port, p) for p in payloads)) == payloads
        done += 6
        # A channel goes back to the idle ones before its tunnel's line is logged.
        await client.wait_for(LINE.format(side="c"), count=done)
        if round_ == 0:
            after_first = len(client.matches(opened))
    later = len(client.matches(opened)) - after_first
    assert later <= 4, f"{later} data channels opened after the first round"


# ----------------------------------------------------------------- ownership


async def test_a_second_client_is_refused_while_the_first_goes_on(wstun: Wstun, target) -> None:
    """409 for the second client (retried, logged once); the first keeps its port."""
    service = await target(echo_target())
    server, client, port = await reverse(wstun, service)
    url = client.argv[3]
    second = wstun.spawn([wstun.client_cmd, "-R", f"{port}:127.0.0.1:{service}", url])
    await second.wait_for(
        rf"can't listen: refused: 409 127\.0\.0\.1:{port} is held by another client; retrying"
    )
    assert await echo(port, b"still mine") == b"still mine"
    await server.wait_for(LINE.format(side="s"))
    assert len(second.matches("is held by another client")) == 1  # once, not per attempt


async def test_a_port_another_process_holds_is_a_clear_409(wstun: Wstun, target) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        held = sock.getsockname()[1]
        _, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
        client = wstun.spawn(
            [wstun.client_cmd, "-R", f"{held}:127.0.0.1:1", f"ws://127.0.0.1:{sport}/"]
        )
        await client.wait_for(
            rf"refused: 409 can't listen on 127\.0\.0\.1:{held}: address in use; retrying"
        )


class CuttableRelay:
    """A TCP relay between client and server whose connections the test can cut."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Every relayed connection dropped at once, both ways (a network blip)."""
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_cut_and_healed_connection_gets_its_port_back_at_once(wstun: Wstun, target) -> None:
    """The client's connections are all cut: it reconnects with its lease and has the same
    port back at once; the server never freed it."""
    service = await target(echo_target())
    server, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    relay = CuttableRelay(sport)
    try:
        rport = await relay.start()
        client = wstun.spawn(
            [wstun.client_cmd, "-R", f"0:127.0.0.1:{service}", f"ws://127.0.0.1:{rport}/"]
        )
        port = int((await client.wait_for(ALLOCATED))[0].group(1))
        await client.wait_for(ON_SERVER)
        assert await echo(port) == b"ping"
        relay.cut()
        await client.wait_for(rf"reverse 127\.0\.0\.1:{port} lost: ")
        await client.wait_for(
            rf"reverse 127\.0\.0\.1:{port} back on 127\.0\.0\.1:{port} after 1 attempt$"
        )
        try:
            assert await echo(port, b"again") == b"again"
        except ConnectionResetError:
            pytest.fail(server.log + "\n----\n" + client.log)
        assert not server.matches("port closed"), server.log
        assert not client.matches("can't listen"), client.log
    finally:
        relay.close()


async def test_a_killed_client_started_again_gets_the_port_when_the_grace_ends(
    wstun: Wstun, target
) -> None:
    """SIGKILL: the server keeps the port for --reverse-grace; the client started again
    gets 409 meanwhile and the port as soon as the grace ends, with no restart by hand;
    connections during the grace wait, then get a reset."""
    service = await target(echo_target())
    server, client, port = await reverse(
        wstun, service, "--reverse-grace", "3", "--connect-timeout", "1"
    )
    client.stop(signal.SIGKILL)
    await server.wait_for(r"control channel of \S+ lost .*keeping the port for 3s")
    await expect_reset(port)  # no client to carry it: reset after --connect-timeout
    again = wstun.spawn([wstun.client_cmd, "-R", f"{port}:127.0.0.1:{service}", client.argv[3]])
    await again.wait_for(r"refused: 409 .* is held by another client; retrying")
    await again.wait_for(ON_SERVER)
    (closed,) = server.matches(r"(\S+ \S+) INFO wstun.server: reverse \S+: port closed \(lease")
    assert await echo(port, b"new owner") == b"new owner"
    stamp = again.matches(r"^(\S+ \S+) INFO wstun.client: reverse \S+ on the server")[0]
    freed = time.strptime(closed.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S")
    taken = time.strptime(stamp.group(1).split(",")[0], "%Y-%m-%d %H:%M:%S")
    assert time.mktime(taken) - time.mktime(freed) <= 2, "the port waited past the grace"


async def test_a_client_stopped_with_sigterm_frees_its_port_at_once(wstun: Wstun, target) -> None:
    service = await target(echo_target())
    server, client, port = await reverse(wstun, service)
    assert client.stop(signal.SIGTERM) == 0
    await server.wait_for(r"port closed \(released by the client\)")
    again = wstun.spawn([wstun.client_cmd, "-R", f"{port}:127.0.0.1:{service}", client.argv[3]])
    await again.wait_for(ON_SERVER)
    assert not again.matches("refused: 409"), again.log
    assert await echo(port) == b"ping"


# ------------------------------------------------- the control protocol, raw


def session() -> str:
    return secrets.token_urlsafe(16)


@contextlib.asynccontextmanager
async def raw(sport: int) -> AsyncIterator[ClientConnection]:
    async with connect(
        f"ws://127.0.0.1:{sport}/", subprotocols=[Subprotocol(REVERSE)], open_timeout=TIMEOUT
    ) as ws:
        assert ws.subprotocol == REVERSE
        yield ws


async def answer(ws: ClientConnection) -> dict[str, object]:
    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(message, str)
    data = json.loads(message)
    assert isinstance(data, dict)
    return data


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


async def test_a_lease_id_from_another_session_is_refused(wstun: Wstun) -> None:
    """A lease comes back only with its own session: another client process holding
    the id gets 403, for listen and for attach alike; the owner then takes it back."""
    server, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    mine = session()
    async with raw(sport) as ws:
        await ws.send(
            json.dumps({"type": "listen", "bind": "127.0.0.1", "port": 0, "session": mine})
        )
        got = await answer(ws)
        assert got["type"] == "listening"
        lease, port = got["lease"], got["port"]
    await server.wait_for("control channel of .* lost")
    for message in (
        {"type": "listen", "bind": "127.0.0.1", "port": port, "session": session(), "lease": lease},
        {"type": "attach", "lease": lease, "session": session()},
    ):
        async with raw(sport) as ws:
            await ws.send(json.dumps(message))
            refused = await answer(ws)
            assert (refused["type"], refused["status"]) == ("refused", 403), refused
    async with raw(sport) as ws:
        back = {
            "type": "listen",
            "bind": "127.0.0.1",
            "port": port,
            "session": mine,
            "lease": lease,
        }
        await ws.send(json.dumps(back))
        got = await answer(ws)
        assert (got["type"], got["port"], got["lease"]) == ("listening", port, lease)
    assert lease not in server.log  # never logged whole


SESSION = "s" * 22


def listen_text(**fields: object) -> str:
    return json.dumps(
        {"type": "listen", "bind": "127.0.0.1", "port": 0, "session": SESSION, **fields}
    )


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([b"\x00binary"], "payload before listen or attach"),
        (["not json"], "control message is not JSON"),
        (['{"type":"dance"}'], "unknown control message type 'dance'"),
        ([listen_text(session="x" * 1100)], "over 1024 bytes"),
        ([listen_text(port="9000")], "listen: port"),
        ([listen_text(session="short")], "not a valid id"),
        (['{"type":"release"}'], "unexpected release as the first message"),
        (["LISTEN", listen_text()], "unexpected listen on a control channel"),
        (["LISTEN", b"payload"], "payload on a control channel"),
    ],
    ids=["binary-first", "not-json", "unknown-type", "oversized", "wrong-field-type", "bad-id",
         "release-first", "listen-twice", "payload-on-control"],
)  # fmt: skip
async def test_a_control_message_that_breaks_the_rules_closes_with_1002(
    wstun: Wstun, messages: list[str | bytes], reason: str
) -> None:
    """Each kind of bad input: a 1002 close naming the problem, never a traceback, and the
    server goes on serving."""
    server, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    async with raw(sport) as ws:
        for message in messages:
            if message == "LISTEN":
                listen = {"type": "listen", "bind": "127.0.0.1", "port": 0, "session": session()}
                await ws.send(json.dumps(listen))
                assert (await answer(ws))["type"] == "listening"
            else:
                await ws.send(message)
        code, why = await closed_with(ws)
    assert code == 1002
    assert reason in why, why
    assert "Traceback" not in server.log
    async with raw(sport) as ws:  # still serving
        await ws.send(
            json.dumps({"type": "listen", "bind": "127.0.0.1", "port": 0, "session": session()})
        )
        assert (await answer(ws))["type"] == "listening"


async def test_too_many_leases_from_one_client_is_503(wstun: Wstun) -> None:
    _, sport = await wstun.server("--allow-listen", "127.0.0.1:*", "--reverse-max-leases", "2")
    async with contextlib.AsyncExitStack() as stack:
        answers = []
        for _ in range(3):
            ws = await stack.enter_async_context(raw(sport))
            await ws.send(
                json.dumps({"type": "listen", "bind": "127.0.0.1", "port": 0, "session": session()})
            )
            answers.append(await answer(ws))
    assert [a["type"] for a in answers] == ["listening", "listening", "refused"]
    assert answers[2]["status"] == 503
    assert "too many reverse listeners from 127.0.0.1 (limit 2 per client)" in str(
        answers[2]["reason"]
    )


async def test_leases_asked_for_at_once_keep_to_the_limit(wstun: Wstun) -> None:
    """Three listens sent before any answer (a client with three -R starting up): two
    get their port, one gets the 503, as one after another."""
    _, sport = await wstun.server("--allow-listen", "127.0.0.1:*", "--reverse-max-leases", "2")
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(raw(sport)) for _ in range(3)]
        listen = {"type": "listen", "bind": "127.0.0.1", "port": 0}
        for ws in sockets:
            await ws.send(json.dumps({**listen, "session": session()}))
        answers = await asyncio.gather(*(answer(ws) for ws in sockets))
    assert sorted(a["type"] for a in answers) == ["listening", "listening", "refused"]
    (refused,) = (a for a in answers if a["type"] == "refused")
    assert refused["status"] == 503
    assert "too many reverse listeners from 127.0.0.1 (limit 2 per client)" in str(
        refused["reason"]
    )


# ----------------------------------------------------- rules and bind addresses


async def test_default_deny_stops_the_forward_and_the_client_exits_1(wstun: Wstun) -> None:
    """No --allow-listen: a clear 403, once; the forward stops; nothing left: exit 1."""
    server, sport = await wstun.server()
    port = free_port()
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"{port}:127.0.0.1:1", f"ws://127.0.0.1:{sport}/"]
    )
    await client.wait_for(
        rf"reverse 127\.0\.0\.1:{port}: refused: 403 listening not allowed: 127\.0\.0\.1:{port}; "
        "this forward stops"
    )
    assert await asyncio.to_thread(client.popen.wait, TIMEOUT) == 1
    await server.wait_for(r"rejected peer=\S+ status=403 reason=listening not allowed")


@pytest.mark.parametrize(
    ("bind", "allowed"),
    [("127.0.0.1", True), ("0.0.0.0", False), ("127.0.0.2", False)],
)
async def test_bind_addresses_and_port_ranges(
    wstun: Wstun, target, bind: str, allowed: bool
) -> None:
    """Only the allowed address and port range: the rest is 403 with the address."""
    service = await target(echo_target())
    low = free_port()
    _, sport = await wstun.server("--allow-listen", f"127.0.0.1:{low}-{low + 1}")
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"{bind}:{low}:127.0.0.1:{service}", "-R",
         f"127.0.0.1:{low + 2}:127.0.0.1:{service}", f"ws://127.0.0.1:{sport}/"]
    )  # fmt: skip
    await client.wait_for(rf"403 listening not allowed: 127\.0\.0\.1:{low + 2}; this forward stops")
    if allowed:
        await client.wait_for(rf"reverse {bind}:{low} on the server")
        assert await echo(low) == b"ping"
    else:
        await client.wait_for(rf"403 listening not allowed: {bind}:{low}; this forward stops")
        assert await asyncio.to_thread(client.popen.wait, TIMEOUT) == 1


async def test_port_zero_picks_a_port_the_rules_allow(wstun: Wstun, target) -> None:
    service = await target(echo_target())
    low = free_port()
    _, _, port = await reverse(wstun, service, allow=f"127.0.0.1:{low}-{low + 20}")
    assert low <= port <= low + 20
    assert await echo(port) == b"ping"


async def test_an_ipv6_bind(wstun: Wstun, target) -> None:
    service = await target(echo_target())
    _, sport = await wstun.server("--allow-listen", "[::1]:*")
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"[::1]:0:127.0.0.1:{service}", f"ws://127.0.0.1:{sport}/"]
    )
    port = int((await client.wait_for(ALLOCATED))[0].group(1))
    await client.wait_for(r"reverse \[::1\]:\d+ on the server")
    assert await echo(port, b"over v6", host="::1") == b"over v6"


async def test_a_server_without_reverse_tunnels_is_said_clearly(wstun: Wstun) -> None:
    """A wstun server from before reverse tunnels (400 no target) and a plain WebSocket
    server (no subprotocol picked): the client says the server can't, and exits 1."""

    def old_wstun(connection: ServerConnection, request: Request) -> Response:
        body = b"no target: add ?to=HOST:PORT (the server has no default)\n"
        return Response(400, "Bad Request", Headers([("Content-Length", str(len(body)))]), body)

    async def plain(ws: ServerConnection) -> None:
        await ws.wait_closed()

    for kind, options in (("old", {"process_request": old_wstun}), ("plain", {})):
        async with serve(plain, "127.0.0.1", 0, **options) as fake:  # type: ignore[arg-type]
            sport = fake.sockets[0].getsockname()[1]
            client = wstun.spawn(
                [wstun.client_cmd, "-R", "9000:127.0.0.1:1", f"ws://127.0.0.1:{sport}/"]
            )
            await client.wait_for("the server does not support reverse tunnels")
            assert await asyncio.to_thread(client.popen.wait, TIMEOUT) == 1, kind


# ----------------------------------------------------------------- operations


async def test_drain_closes_listeners_at_once_and_lets_tunnels_finish(wstun: Wstun, target) -> None:
    """SIGTERM on the server: the reverse port closes at once, an open reverse tunnel
    finishes byte-exact within --grace, and the client hears 1001 and retries."""
    release = asyncio.Event()
    tail = os.urandom(500_000)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(b"head")
        await writer.drain()
        await release.wait()
        writer.write(tail)
        await writer.drain()
        writer.close()

    server, client, port = await reverse(wstun, await target(slow), "--grace", "20")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"head"
        server.popen.send_signal(signal.SIGTERM)
        await server.wait_for(r"port closed \(server is shutting down\)")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await client.wait_for(r"lost: 1001 server is shutting down; retrying")
        release.set()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == tail
    finally:
        writer.close()
    (line,) = await server.wait_for(LINE.format(side="s"))
    assert line.group(3) == "eof"
    assert await asyncio.to_thread(server.popen.wait, TIMEOUT) == 0


async def test_metrics_count_reverse_tunnels_by_kind(wstun: Wstun, target) -> None:
    service = await target(echo_target())
    mport = free_port()
    server, _, port = await reverse(wstun, service, "--metrics-listen", f"127.0.0.1:{mport}")
    for payload in (b"a" * 10, b"b" * 20):
        assert await echo(port, payload) == payload
    # Counted when the server's side of each tunnel ends, as its log line is written.
    await server.wait_for(LINE.format(side="s"), count=2)
    reader, writer = await asyncio.open_connection("127.0.0.1", mport)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), TIMEOUT)).decode()
    writer.close()
    assert "wstun_server_reverse_listeners_active 1.0" in text
    assert 'wstun_server_tunnels_opened_total{kind="reverse",proto="tcp"} 2.0' in text
    assert (
        'wstun_server_payload_bytes_total{direction="up",kind="reverse",proto="tcp"} 30.0' in text
    )
    assert 'wstun_server_tunnels_opened_total{kind="forward",proto="tcp"} 0.0' in text


# ----------------------------------------------------------------- load


async def test_200_concurrent_connections_through_one_reverse_port(wstun: Wstun, target) -> None:
    """200 connections at once through one -R, each byte-exact; once the client has
    left, the server's file descriptors are back where they were."""
    service = await target(echo_target())
    server, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    baseline = fd_count(server)
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"0:127.0.0.1:{service}", f"ws://127.0.0.1:{sport}/"]
    )
    port = int((await client.wait_for(ALLOCATED))[0].group(1))
    await client.wait_for(ON_SERVER)
    payloads = [os.urandom(2000 + i) for i in range(200)]
    answers = await asyncio.wait_for(
        asyncio.gather(*(echo(port, payload) for payload in payloads)), 60
    )
    assert [sha(a) for a in answers] == [sha(p) for p in payloads]
    await server.wait_for(LINE.format(side="s"), count=200)
    assert client.stop(signal.SIGTERM) == 0
    await server.wait_for(r"port closed \(released by the client\)")
    assert await back_to(server, baseline, TIMEOUT) <= baseline


async def test_wstun_remote_from_the_environment(wstun: Wstun, target, tmp_path: Path) -> None:
    service = await target(echo_target())
    _, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    env = {**os.environ, "WSTUN_REMOTE": f"0:127.0.0.1:{service}"}
    client = wstun.spawn([wstun.client_cmd, f"ws://127.0.0.1:{sport}/"], env)
    port = int((await client.wait_for(ALLOCATED))[0].group(1))
    await client.wait_for(ON_SERVER)
    assert await echo(port) == b"ping"


async def test_a_channel_closed_before_it_answers_hands_the_connection_on(wstun: Wstun) -> None:
    """A data channel the client closes with an open unanswered (an idle channel it no
    longer wanted) loses nothing: the connection, with the bytes already sent ahead,
    goes to the next channel."""
    server, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    me = session()
    async with raw(sport) as control:
        await control.send(listen_text(session=me))
        got = await answer(control)
        lease, port = got["lease"], got["port"]
        attach = json.dumps({"type": "attach", "lease": lease, "session": me})
        reader, writer = await asyncio.open_connection("127.0.0.1", int(str(port)))
        try:
            writer.write(b"first bytes")
            async with raw(sport) as first:
                await first.send(attach)
                assert (await answer(first))["type"] == "open"
                assert await asyncio.wait_for(first.recv(), TIMEOUT) == b"first bytes"
            # closed without an answer: the next channel gets the same connection
            async with raw(sport) as second:
                await second.send(attach)
                opened = await answer(second)
                assert opened["type"] == "open"
                assert await asyncio.wait_for(second.recv(), TIMEOUT) == b"first bytes"
                await second.send(json.dumps({"type": "opened"}))
                await second.send(b"answer")
                await second.send(b"")
                assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"answer"
                writer.write_eof()
                assert await asyncio.wait_for(second.recv(), TIMEOUT) == b""
                assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        finally:
            writer.close()
    (line,) = await server.wait_for(LINE.format(side="s"))
    assert (line.group(1), line.group(2), line.group(3)) == ("11", "6", "eof")


async def test_data_channels_come_back_after_opens_failed(wstun: Wstun, target) -> None:
    """At the server's connection limit a replacement data channel is refused (503); once
    slots are free again the client opens channels anew and connections get through."""
    service = await target(echo_target())
    # The control channel and the two idle data channels take every slot.
    server, client, port = await reverse(
        wstun, service, "--max-connections", "3", "--connect-timeout", "8"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"a"
    await client.wait_for(r"can't open a data channel: 503 too many connections")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # a reset: that channel is not reused
    await server.wait_for(LINE.format(side="s"))
    for payload in (b"one", b"two", b"three"):
        assert await echo(port, payload) == payload


async def test_no_port_sharing_across_workers(wstun: Wstun, target) -> None:
    """Reverse listeners never use SO_REUSEPORT: with --workers 2, a second client asking
    for the same port is refused with 409 (by whichever worker it reaches)."""
    service = await target(echo_target())
    _, sport = await wstun.server("--allow-listen", "127.0.0.1:*", "--workers", "2")
    port = free_port()
    url = f"ws://127.0.0.1:{sport}/"
    first = wstun.spawn([wstun.client_cmd, "-R", f"{port}:127.0.0.1:{service}", url])
    await first.wait_for(ON_SERVER)
    for _ in range(3):  # new clients, each reaching either worker
        other = wstun.spawn([wstun.client_cmd, "-R", f"{port}:127.0.0.1:{service}", url])
        (refused,) = await other.wait_for(r"refused: 409 (.*); retrying")
        assert refused.group(1) in (
            f"127.0.0.1:{port} is held by another client",
            f"can't listen on 127.0.0.1:{port}: address in use",
        )
        other.stop()
    assert await echo(port, b"first") == b"first"


async def test_data_channels_find_the_worker_that_holds_the_lease(wstun: Wstun, target) -> None:
    """With --workers 2 a data channel reaches either worker; one that reached the worker
    without the lease is refused with 421 and opened again at once, so every connection
    of a burst, and of the rounds after it, finds a channel (none waits out a timeout)."""
    service = await target(echo_target())
    _, sport = await wstun.server(
        "--allow-listen", "127.0.0.1:*", "--workers", "2", "--connect-timeout", "4"
    )
    client = wstun.spawn(
        [wstun.client_cmd, "-R", "0:127.0.0.1:" + str(service), f"ws://127.0.0.1:{sport}/", "-v"]
    )
    (match,) = await client.wait_for(ALLOCATED)
    port = int(match.group(1))
    for round_ in range(3):
        payloads = [f"round {round_} connection {i}".encode() for i in range(30)]
        got = await asyncio.gather(*(echo(port, payload) for payload in payloads))
        assert got == payloads
    assert client.matches(r"data channel reached another worker; again"), client.log
    assert not client.matches(r"data channel refused"), client.log
