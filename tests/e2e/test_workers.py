"""``wstun-server --workers N``: N processes share one port and stop together."""

from __future__ import annotations

import asyncio
import os
import re
import signal

from .conftest import Wstun

TIMEOUT = 60.0


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_share_the_port_and_carry_tunnels(wstun: Wstun, target) -> None:
    """Two workers listen on one port; 20 tunnels echo byte-exact; SIGTERM stops all."""
    port = await target(echo)
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}", "--workers", "2")
    listening = await server.wait_for(r"listening on 127\.0\.0\.1:(\d+)", count=2)
    assert {int(m.group(1)) for m in listening} == {sport}
    (started,) = server.matches(r"started 2 workers on port \d+: pids \[(\d+), (\d+)\]")
    pids = [int(started.group(1)), int(started.group(2))]
    _, lport = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    payloads = [os.urandom(100_000 + i) for i in range(20)]
    answers = await asyncio.gather(*(round_trip(lport, p) for p in payloads))
    assert answers == payloads
    closed = await server.wait_for(r"tunnel closed .* end=eof", count=20)
    assert len(closed) == 20
    assert server.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in pids)
    assert len(server.matches("shutting down")) == 2


async def test_a_worker_that_dies_stops_the_server(wstun: Wstun) -> None:
    """When one worker is killed the other is stopped and the server exits non-zero."""
    server, _ = await wstun.server("--allow", "127.0.0.1:1", "--workers", "2")
    await server.wait_for("listening on", count=2)
    (started,) = server.matches(r"pids \[(\d+), (\d+)\]")
    os.kill(int(started.group(1)), signal.SIGKILL)
    code = await asyncio.to_thread(server.popen.wait, TIMEOUT)
    assert code != 0
    assert re.search(r"worker \d+ exited with", server.log)
    assert not alive(int(started.group(2)))
