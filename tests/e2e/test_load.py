"""Load and leaks: 2,000 concurrent tunnels through one server, then thousands more that
end cleanly, by reset and by timeout; file descriptors, asyncio tasks and memory
return to their baseline.

Everything runs in this process (TunnelServer, TunnelClient, targets and the
applications) so the leak check can count tasks as well as descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from wstun.client.app import TunnelClient
from wstun.client.config import ClientConfig
from wstun.client.forward import Forward
from wstun.client.pool import PooledDialer
from wstun.common.protocol import Target
from wstun.common.runtime import run
from wstun.server.app import TunnelServer
from wstun.server.config import ServerConfig
from wstun.server.policy import Policy

T = TypeVar("T")

TUNNELS = 2000
ROUND_TRIPS = 3
LEAK_ROUNDS = {"clean": 1000, "reset": 500, "idle-timeout": 500}
#: The second forward's idle timeout: long enough that a loaded machine echoes the first
#: ping within it (the test asserts the echo), short enough to cut 500 tunnels quickly.
IDLE_TIMEOUT = 1.0
POOL = 2  # the client's default --pool
DEADLINE = 240.0  # the whole test; every wait below is bounded by it
MiB = 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def gather_limited(jobs: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs with at most ``limit`` in flight (connects beyond that would
    only overflow listen backlogs and retry SYNs); results in job order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


class Rig:
    """Echo target, one server, one client with two forwards: plain and idle-timeout."""

    async def start(self) -> None:
        self.target = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024)
        tport = self.target.sockets[0].getsockname()[1]
        policy = Policy.from_patterns([f"127.0.0.1:{tport}"])
        self.servers = []
        ports = []
        for idle in (None, IDLE_TIMEOUT):
            server = TunnelServer(
                ServerConfig(
                    listen=Target("127.0.0.1", 0),
                    policy=policy,
                    idle_timeout=idle,
                    ping_interval=None,
                )
            )
            ((_, port),) = await server.start()
            self.servers.append(server)
            ports.append(port)
        forward = Forward(Target("127.0.0.1", 0), Target("127.0.0.1", tport))
        self.clients = []
        self.local = []
        for port in ports:
            client = TunnelClient(
                ClientConfig(
                    url=f"ws://127.0.0.1:{port}/",
                    forwards=(forward,),
                    ping_interval=None,
                    pool=POOL,
                )
            )
            ((_, (_, lport)),) = await client.start()
            self.clients.append(client)
            self.local.append(lport)

    async def stop(self) -> None:
        for client in self.clients:
            await client.stop()
        for server in self.servers:
            await server.stop()
        self.target.close()
        await self.target.wait_closed()

    def idle(self) -> bool:
        return all(s.limits.total == 0 for s in self.servers) and not any(
            c._tunnels for c in self.clients
        )

    async def close_pools(self) -> None:
        """Idle pooled WebSockets are not a leak: close them before counting."""
        for client in self.clients:
            if isinstance(client.dialer, PooledDialer):
                await client.dialer.close_idle()


async def settle(rig: Rig, fds: int, tasks: int) -> tuple[int, int]:
    """Wait until no tunnel is open and descriptors and tasks are back at the
    baseline (closing transports take a few loop turns); return what is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        await rig.close_pools()  # a tunnel still closing may just have given one back
        gc.collect()
        if rig.idle() and open_fds() <= fds and len(asyncio.all_tasks()) <= tasks:
            break
        await asyncio.sleep(0.1)  # no event marks "every descriptor closed"
    return open_fds(), len(asyncio.all_tasks())


async def load_tunnel(
    port: int, seed: int, connecting: asyncio.Semaphore, opened: asyncio.Barrier
) -> int:
    """One application: open, wait until all are open, echo round trips, half-close."""
    rng = random.Random(seed)
    async with connecting:  # a connect storm would only overflow listen backlogs
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"!")  # the tunnel is up end to end once the echo is back
        assert await reader.readexactly(1) == b"!"
    moved = 0
    try:
        await asyncio.wait_for(opened.wait(), DEADLINE)
        for _ in range(ROUND_TRIPS):
            message = rng.randbytes(rng.randint(1, 8192))
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
            moved += len(message)
        writer.write_eof()
        assert await reader.read() == b""
    finally:
        writer.close()
    return moved


async def clean_tunnel(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.write_eof()
        assert await reader.read() == b""
    finally:
        writer.close()


async def reset_tunnel(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def timed_out_tunnel(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        with contextlib.suppress(ConnectionResetError):  # cut by the idle timeout
            assert await reader.read() == b""
    finally:
        writer.close()


async def scenario() -> int:
    raise_fd_limit(8 * TUNNELS + 1024)
    rig = Rig()
    await rig.start()
    try:
        fds, tasks = open_fds(), len(asyncio.all_tasks())

        # 2,000 tunnels open at once, each doing echo round trips.
        opened, connecting = asyncio.Barrier(TUNNELS), asyncio.Semaphore(100)
        moved = await asyncio.wait_for(
            asyncio.gather(
                *(load_tunnel(rig.local[0], i, connecting, opened) for i in range(TUNNELS))
            ),
            DEADLINE,
        )
        assert len(moved) == TUNNELS
        assert all(m > 0 for m in moved)
        assert await settle(rig, fds, tasks) == (fds, tasks)
        rss_after_load = rss_kib()

        # Thousands more, ending every way a tunnel ends.
        kinds = {
            "clean": lambda: clean_tunnel(rig.local[0]),
            "reset": lambda: reset_tunnel(rig.local[0]),
            "idle-timeout": lambda: timed_out_tunnel(rig.local[1]),
        }
        for kind, count in LEAK_ROUNDS.items():
            await asyncio.wait_for(gather_limited([kinds[kind]] * count, 200), DEADLINE)
        assert await settle(rig, fds, tasks) == (fds, tasks)
        growth = rss_kib() - rss_after_load
        assert growth < 32 * 1024, f"RSS grew {growth} KiB over {sum(LEAK_ROUNDS.values())} tunnels"
    finally:
        await rig.stop()
    return 0


def test_2000_concurrent_tunnels_then_no_leaks() -> None:
    """2,000 concurrent echo tunnels with exact data; then fds, tasks and memory are back."""
    assert run(scenario) == 0
