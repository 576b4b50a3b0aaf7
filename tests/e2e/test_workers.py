"""``wstun-server --workers N``: N processes share one port and stop together."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest

from .conftest import Process, Wstun, echo_target, echo_through, free_port
from .test_http import upgrade
from .test_limits import HoldOpen, raw_tunnels

TIMEOUT = 60.0


async def workers(wstun: Wstun, *args: str) -> Process:
    """wstun-server --workers 2 on 127.0.0.1:0, once both workers listen."""
    server = wstun.spawn([wstun.server_cmd, "--listen", "127.0.0.1:0", "--workers", "2", *args])
    await server.wait_for(r"listening on 127\.0\.0\.1:\d+", count=2)
    return server


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_share_the_port_and_carry_tunnels(wstun: Wstun, target) -> None:
    """Two workers listen on one port; 20 tunnels echo byte-exact; SIGTERM stops all."""
    port = await target(echo_target())
    server = await workers(wstun, "--allow", f"127.0.0.1:{port}")
    listening = server.matches(r"listening on 127\.0\.0\.1:(\d+)")
    assert len({int(m.group(1)) for m in listening}) == 1
    sport = int(listening[0].group(1))
    (started,) = server.matches(r"started 2 workers on port \d+: pids \[(\d+), (\d+)\]")
    pids = [int(started.group(1)), int(started.group(2))]
    _, lport = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    payloads = [os.urandom(100_000 + i) for i in range(20)]
    answers = await asyncio.gather(*(echo_through(lport, p) for p in payloads))
    assert answers == payloads
    closed = await server.wait_for(r"tunnel closed .* end=eof", count=20)
    assert len(closed) == 20
    assert server.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in pids)
    assert len(server.matches(r"wstun\.server: shutting down$")) == 2  # one per worker


async def test_a_worker_that_dies_stops_the_server(wstun: Wstun) -> None:
    """When one worker is killed the other is stopped and the server exits non-zero."""
    server = await workers(wstun, "--allow", "127.0.0.1:1")
    (started,) = server.matches(r"pids \[(\d+), (\d+)\]")
    os.kill(int(started.group(1)), signal.SIGKILL)
    code = await asyncio.to_thread(server.popen.wait, TIMEOUT)
    assert code != 0
    assert re.search(r"worker \d+ exited with", server.log)
    assert not alive(int(started.group(2)))


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("--max-connections", "too many connections (server limit 4)"),
        ("--max-per-client", "too many connections from 127.0.0.1 (limit 4 per client)"),
    ],
)
async def test_limits_hold_for_all_workers_together(
    wstun: Wstun, target, option: str, reason: str
) -> None:
    """--workers 2 with a limit of 4: of 12 tunnels held open at once, spread by the
    kernel over both workers, exactly 4 are upgraded and the others get 503; once
    they close, 4 open again."""
    hold = HoldOpen()
    port = await target(hold)
    server = await workers(wstun, "--allow", f"127.0.0.1:{port}", option, "4")
    (listening,) = server.matches(r"listening on 127\.0\.0\.1:(\d+)")[:1]
    sport = int(listening.group(1))
    path = f"/?to=127.0.0.1:{port}"
    async with raw_tunnels(sport, path, 12) as statuses:
        assert sorted(statuses) == [101] * 4 + [503] * 8
    await hold.wait_left(4)
    await server.wait_for(r"tunnel closed id=s\d+", count=4)
    assert len(server.matches(r"status=503 reason=" + re.escape(reason))) == 8
    async with raw_tunnels(sport, path, 6) as statuses:
        assert sorted(statuses) == [101] * 4 + [503] * 2
    await hold.wait_left(4)


async def test_one_metrics_endpoint_adds_up_every_worker(wstun: Wstun, target) -> None:
    """--workers 2 --metrics-listen: one /metrics whose counts are the whole server's
    (a known workload over both workers), and whose gauges drop back to zero."""
    port = await target(echo_target())
    mport = free_port()
    server = await workers(
        wstun, "--allow", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}"
    )
    (listening,) = server.matches(r"listening on 127\.0\.0\.1:(\d+)")[:1]
    sport = int(listening.group(1))
    _, lport = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "--pool", "0")
    payloads = [os.urandom(1000 * (i + 1)) for i in range(20)]
    answers = await asyncio.gather(*(echo_through(lport, p) for p in payloads))
    assert answers == payloads
    await server.wait_for(r"tunnel closed .* end=eof", count=20)
    await raw_request(sport, "/?to=127.0.0.1:1")  # refused by the policy: 403
    await server.wait_for(r"status=403")
    text = await scrape(mport)
    total = sum(len(p) for p in payloads)
    assert 'wstun_server_tunnels_opened_total{kind="forward",proto="tcp"} 20.0' in text
    assert (
        f'wstun_server_payload_bytes_total{{direction="up",kind="forward",proto="tcp"}} {total}.0'
        in text
    )
    assert 'wstun_server_tunnels_active{kind="forward",proto="tcp"} 0.0' in text
    assert 'wstun_server_handshake_failures_total{status="403"} 1.0' in text
    code = server.stop(signal.SIGTERM)
    print(server.log)
    assert code == 0


async def raw_request(port: int, path: str) -> int:
    """An upgrade request to ``path``; the status of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: x",
            *(f"{k}: {v}" for k, v in upgrade(None).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), TIMEOUT)).decode()
    writer.close()
    await writer.wait_closed()
    return text
