"""Through real nginx with the repository's config, in front of a real wstun-server.

app --TCP--> wstun-client --WS--> nginx /tunnel/ --WS--> wstun-server --TCP--> target
"""

from __future__ import annotations

import asyncio
import os
import subprocess

from ..e2e.conftest import both_ways_target, greets_then_half_closes, send_and_receive
from ..e2e.test_pool import READY, echo_once
from .conftest import Nginx, Process, Wstun, echo_target, sha

TIMEOUT = 60.0
CLOSED = r"tunnel closed id={side}\d+ .*up=(\d+) down=(\d+) .*end=(\S+)"


async def behind_nginx(
    wstun: Wstun,
    nginx: Nginx,
    target_port: int,
    *,
    read_timeout: str = "60s",
    ping: str = "20",
    client_args: tuple[str, ...] = (),
) -> tuple[Process, Process, int]:
    """Server (path /tunnel) behind nginx, and a client through nginx; its local port."""
    server, sport = await wstun.server(
        "--path", "/tunnel", "--allow", f"127.0.0.1:{target_port}", "--ping-interval", ping
    )
    port = await nginx.start(sport, read_timeout=read_timeout)
    client, local = await wstun.client(
        f"ws://127.0.0.1:{port}/tunnel/", f"127.0.0.1:{target_port}", "--ping-interval", ping,
        *client_args,
    )  # fmt: skip
    return server, client, local


async def test_both_ways_at_once_byte_exact(wstun: Wstun, nginx: Nginx, target) -> None:
    """4 MiB each way at once through nginx, byte-exact, with exact logged counts."""
    up, down = os.urandom(4 << 20), os.urandom(4 << 20)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(both_ways_target(down, received))
    # nginx logs a WebSocket when it closes, and a pooled one stays open: --pool 0.
    server, client, local = await behind_nginx(wstun, nginx, port, client_args=("--pool", "0"))
    answer = await send_and_receive(local, up)

    assert sha(answer) == sha(down)
    assert sha(await asyncio.wait_for(received, TIMEOUT)) == sha(up)
    for proc, side in ((server, "s"), (client, "c")):
        (line,) = await proc.wait_for(CLOSED.format(side=side))
        assert line.groups() == (str(len(up)), str(len(down)), "eof")
    assert '"GET /tunnel/?to=127.0.0.1' in nginx.access_log


async def test_half_close_through_nginx(wstun: Wstun, nginx: Nginx, target) -> None:
    """The app half-closes; the target answers only after EOF, and the answer arrives."""
    answer_body = os.urandom(300_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF: only then answer
        writer.write(sha(request).encode() + answer_body)
        await writer.drain()
        writer.close()

    port = await target(handler)
    _, _, local = await behind_nginx(wstun, nginx, port)
    request = os.urandom(500_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(request)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()

    assert answer == sha(request).encode() + answer_body


async def test_target_half_closes_first_through_nginx(wstun: Wstun, nginx: Nginx, target) -> None:
    """The target half-closes first; the app keeps sending and the target gets it all."""
    greeting = os.urandom(100_000)
    handler, received = greets_then_half_closes(greeting)
    port = await target(handler)
    _, _, local = await behind_nginx(wstun, nginx, port)
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == greeting
    late = os.urandom(200_000)
    writer.write(late)
    await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(received, TIMEOUT) == late
    writer.close()


async def test_health_and_other_paths_through_nginx(wstun: Wstun, nginx: Nginx) -> None:
    """/tunnel/healthz answers 200 through nginx; paths outside /tunnel/ never reach wstun."""
    _, sport = await wstun.server("--path", "/tunnel")
    port = await nginx.start(sport)

    def curl(path: str) -> tuple[str, str]:
        result = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        body, _, status = result.stdout.rpartition("\n")
        return status, body

    assert await asyncio.to_thread(curl, "/tunnel/healthz") == ("200", "ok\n")
    status, body = await asyncio.to_thread(curl, "/other")
    assert status == "404"
    assert "the endpoint is /tunnel/" in body


async def test_pings_keep_an_idle_tunnel_alive(wstun: Wstun, nginx: Nginx, target) -> None:
    """proxy_read_timeout 3s, pings every 1s: a tunnel idle for 10 s still works."""
    port = await target(echo_target())
    _, client, local = await behind_nginx(wstun, nginx, port, read_timeout="3s", ping="1")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"before"

    await asyncio.sleep(10)  # the idle period under test, over three read timeouts

    writer.write(b"after the quiet")
    assert await asyncio.wait_for(reader.readexactly(15), TIMEOUT) == b"after the quiet"
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    (line,) = await client.wait_for(CLOSED.format(side="c"))
    assert line.group(3) == "eof"


async def test_without_pings_nginx_cuts_an_idle_tunnel(wstun: Wstun, nginx: Nginx, target) -> None:
    """proxy_read_timeout 3s and pings off: nginx cuts the quiet tunnel; the app sees it end."""
    port = await target(echo_target())
    _, client, local = await behind_nginx(wstun, nginx, port, read_timeout="3s", ping="0")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"before"

    (line,) = await client.wait_for(CLOSED.format(side="c"), timeout=TIMEOUT)
    assert line.group(3) == "error"
    try:
        tail = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        tail = None
    assert tail is None, "a cut tunnel must reset the app's connection, not end it cleanly"
    writer.close()


async def test_the_pool_through_nginx_replaces_what_its_idle_timeout_cuts(
    wstun: Wstun, nginx: Nginx, target
) -> None:
    """Pooled WebSockets ride nginx; with pings off, nginx's 1 s proxy_read_timeout cuts
    the idle ones again and again; the pool replaces them and no connection fails."""
    port = await target(echo_target())
    server, client, local = await behind_nginx(
        wstun, nginx, port, read_timeout="1s", ping="0", client_args=("-v", "--pool", "2")
    )
    await echo_once(local)
    await client.wait_for(READY)
    await client.wait_for(r"pool: an idle WebSocket was closed \(no close frame\)", count=2)
    for _ in range(6):  # some of them meet a WebSocket just as nginx cuts it
        await echo_once(local)
    await client.wait_for(r"pool: open \S+ on a warm WebSocket")
    lines = await server.wait_for(CLOSED.format(side="s"), count=7)
    assert [line.group(3) for line in lines] == ["eof"] * 7
    assert not client.matches(r"refused|can't|WARNING|ERROR")


async def test_reverse_tunnels_through_nginx(wstun: Wstun, nginx: Nginx, target) -> None:
    """-R through nginx: the control channel and the idle data channels outlive nginx's
    1 s proxy_read_timeout on pings alone, and connections on the reverse port arrive
    byte-exact, the laptop's service answering."""
    port = await target(echo_target())
    server, sport = await wstun.server(
        "--path", "/tunnel", "--allow-listen", "127.0.0.1:*", "--ping-interval", "0.3"
    )
    nport = await nginx.start(sport, read_timeout="1s")
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"0:127.0.0.1:{port}", f"ws://127.0.0.1:{nport}/tunnel/",
         "--ping-interval", "0.3"]
    )  # fmt: skip
    (match,) = await client.wait_for(r"allocated port (\d+) on the server")
    reverse = int(match.group(1))
    payload = os.urandom(1 << 20)
    assert sha(await send_and_receive(reverse, payload)) == sha(payload)
    await asyncio.sleep(3)  # the quiet period under test, three read timeouts
    for size in (0, 10, 100_000):
        data = os.urandom(size)
        assert await send_and_receive(reverse, data) == data
    lines = await server.wait_for(r"tunnel closed id=s\d+ kind=reverse .*end=(\S+)", count=4)
    assert [line.group(1) for line in lines] == ["eof"] * 4
    assert not client.matches(r"lost|WARNING|ERROR"), client.log
