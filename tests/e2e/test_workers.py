"""``wstun-server --workers N``: N processes share one port and stop together."""

from __future__ import annotations

import asyncio
import os
import re
import signal

from .conftest import Process, Wstun, echo_target, echo_through

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
