"""The server resolves names itself and dials only the addresses the policy kept."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from wstun.common.protocol import Target
from wstun.server.app import TunnelServer
from wstun.server.config import ServerConfig
from wstun.server.policy import Policy
from wstun.server.targets import Resolver, resolve

Start = Callable[..., Awaitable[int]]


async def upgrade_status(port: int, path: str) -> tuple[int, str]:
    """Send one WebSocket upgrade; the status and (for refusals) the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        body = b"" if status == 101 else await asyncio.wait_for(reader.read(), 10)
        return status, body.decode()
    finally:
        writer.close()


@pytest.fixture
async def start_server() -> AsyncIterator[Start]:
    """Start in-process TunnelServers on 127.0.0.1:0; returns each one's port."""
    servers: list[TunnelServer] = []

    async def start(policy: Policy, resolver: Resolver = resolve) -> int:
        config = ServerConfig(listen=Target("127.0.0.1", 0), policy=policy, ping_interval=None)
        server = TunnelServer(config, resolver=resolver)
        servers.append(server)
        ((_, port),) = await server.start()
        return port

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def target_port() -> AsyncIterator[tuple[int, asyncio.Queue[str]]]:
    """A TCP target on 127.0.0.1 that queues the address each connection came to."""
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.put_nowait(writer.get_extra_info("sockname")[0])
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()
    await server.wait_closed()


async def test_name_resolving_into_denied_cidr_is_403(
    start_server: Start, target_port: tuple[int, asyncio.Queue[str]]
) -> None:
    """localhost is allowed by name, but its addresses are denied: 403, nothing dialled."""
    port, seen = target_port
    policy = Policy.from_patterns(["localhost:*"], deny=["127.0.0.0/8:*", "[::1]:*"])
    sport = await start_server(policy)
    status, body = await upgrade_status(sport, f"/?to=localhost:{port}")
    assert status == 403
    assert body.startswith(f"target not allowed: localhost:{port} (denied by ")
    assert seen.empty()


async def test_only_checked_addresses_are_dialled(
    start_server: Start, target_port: tuple[int, asyncio.Queue[str]]
) -> None:
    """An injected resolver's answer is checked and exactly the kept address dialled."""
    port, seen = target_port
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        asked.append((host, port))
        return ["10.0.0.7", "127.0.0.1"]

    policy = Policy.from_patterns(["db.test:*"], deny=["10.0.0.0/8:*"])
    sport = await start_server(policy, resolver)
    status, _ = await upgrade_status(sport, f"/?to=db.test:{port}")
    assert status == 101
    assert asked == [("db.test", port)]
    assert await asyncio.wait_for(seen.get(), 10) == "127.0.0.1"
    assert seen.empty()


async def test_name_no_rule_can_reach_is_not_resolved(start_server: Start) -> None:
    """A name no rule could allow is refused without asking the resolver."""
    asked: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return ["127.0.0.1"]

    sport = await start_server(Policy.from_patterns(["db.test:5432"]), resolver)
    assert (await upgrade_status(sport, "/?to=other.test:5432"))[0] == 403
    assert asked == []


async def test_unresolvable_name_is_502(start_server: Start) -> None:
    """A name that doesn't resolve is a 502 saying so."""
    sport = await start_server(Policy.from_patterns(["*.invalid:*"]))
    status, body = await upgrade_status(sport, "/?to=no-such-host.invalid:80")
    assert status == 502
    assert "name does not resolve" in body
