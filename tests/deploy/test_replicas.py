"""Three wstun-server replicas behind real nginx with the repository's template.

app --TCP--> wstun-client --WS--> nginx (upstream wstun_servers, least_conn)
    --WS--> one of three wstun-servers --TCP--> target

Which replica carries a tunnel is read from the kernel: the target sees the
connection's source port, and /proc says which server process owns the socket
with that port. nginx logs every request's upstream tries (addresses and
statuses) to its stderr, next to its error log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import Nginx, Process, Wstun, sha

TIMEOUT = 60.0
GRACE = 5.0
CLOSED = r"tunnel closed id=s\d+ .*up=(\d+) down=(\d+) .*end=(\S+)"
REJECTED = r"rejected peer=\S+ status=503 reason=server is shutting down"
# Every request, once it ends: an upgrade or not (the client's startup check
# isn't), its status and each upstream try in order.
UPSTREAM_LOG = (
    "log_format wstun_tries 'wstun-access upgrade=$http_upgrade status=$status "
    "upstream=$upstream_addr tries=$upstream_status';\n"
    "access_log /dev/stderr wstun_tries;"
)
UPGRADE_LOGGED = r"^wstun-access upgrade=websocket "


def access_line(status: int, *tries: tuple[str, str]) -> str:
    """nginx's line for an upgrade that ended with ``status`` after these
    (upstream address, status) tries, as an exact pattern."""
    addresses = ", ".join(address for address, _ in tries)
    statuses = ", ".join(tried for _, tried in tries)
    line = f"wstun-access upgrade=websocket status={status} upstream={addresses} tries={statuses}"
    return f"^{re.escape(line)}$"


def requests(proxy: Process) -> list[tuple[int, list[tuple[str, str]]]]:
    """Every upgrade nginx logged: its status and its (upstream address, status) tries."""
    return [
        (int(m.group(1)), list(zip(m.group(2).split(", "), m.group(3).split(", "), strict=True)))
        for m in proxy.matches(UPGRADE_LOGGED + r"status=(\d+) upstream=(.*) tries=(.*)$")
    ]


def sockets_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of process ``pid``'s TCP sockets connected to port ``remote_port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed while we look
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class App:
    """One application connection through the client: a tunnel to the echo target."""

    def __init__(self, tag: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.tag = tag
        self.reader = reader
        self.writer = writer
        self.sent = bytearray()
        self.received = bytearray()

    async def exchange(self, data: bytes) -> None:
        """Send ``data`` and read its echo (so the tunnel carried it both ways)."""

        async def send() -> None:
            self.writer.write(data)
            await self.writer.drain()

        _, echo = await asyncio.wait_for(
            asyncio.gather(send(), self.reader.readexactly(len(data))), TIMEOUT
        )
        self.sent += data
        self.received += echo

    async def finish(self, data: bytes) -> None:
        """Send the rest and EOF, and read the echo to its EOF."""

        async def send() -> None:
            self.writer.write(data)
            await self.writer.drain()
            self.writer.write_eof()

        _, rest = await asyncio.wait_for(asyncio.gather(send(), self.reader.read()), TIMEOUT)
        self.sent += data
        self.received += rest

    def close(self) -> None:
        self.writer.close()


class Replicas:
    """Three replicas (path /tunnel, --grace 5), nginx over them, one client (--pool 0)."""

    def __init__(self, wstun: Wstun, nginx: Nginx) -> None:
        self.wstun = wstun
        self.nginx = nginx
        self.servers: list[Process] = []
        self.ports: list[int] = []
        self._client: Process | None = None
        self.local = 0
        self.target_port = 0
        self.apps: list[App] = []
        self.sources: dict[int, int] = {}  # tag -> the target's peer port

    async def start(self, target) -> None:
        async def tagged_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # The app's first 4 bytes name it: note which source port carries it.
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                tag = await reader.readexactly(4)
                self.sources[int.from_bytes(tag)] = writer.get_extra_info("peername")[1]
                writer.write(tag)
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
                writer.write_eof()
            writer.close()

        self.target_port = await target(tagged_echo)
        args = ("--path", "/tunnel", "--allow", f"127.0.0.1:{self.target_port}")
        started = await asyncio.gather(
            *(self.wstun.server(*args, "--grace", f"{GRACE:g}") for _ in range(3))
        )
        self.servers = [server for server, _ in started]
        self.ports = [port for _, port in started]
        nport = await self.nginx.start_replicas(self.ports, http_extra=UPSTREAM_LOG)
        self._client, self.local = await self.wstun.client(
            f"ws://127.0.0.1:{nport}/tunnel/", f"127.0.0.1:{self.target_port}", "--pool", "0"
        )

    @property
    def client(self) -> Process:
        assert self._client is not None
        return self._client

    @property
    def proxy(self) -> Process:
        assert self.nginx.process is not None
        return self.nginx.process

    def address(self, replica: int) -> str:
        return f"127.0.0.1:{self.ports[replica]}"

    async def open(self) -> App:
        """A new application connection whose tunnel reached the target."""
        tag = len(self.apps)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.local)
        app = App(tag, reader, writer)
        self.apps.append(app)
        writer.write(tag.to_bytes(4))
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == tag.to_bytes(4)
        return app

    def replica_of(self, apps: list[App]) -> list[int]:
        """Which replica (index) carries each app's tunnel, from the kernel's sockets."""
        owner = {
            port: index
            for index, server in enumerate(self.servers)
            if server.popen.poll() is None
            for port in sockets_to(server.popen.pid, self.target_port)
        }
        return [owner[self.sources[app.tag]] for app in apps]

    def spread(self, apps: list[App]) -> dict[int, list[App]]:
        by_replica: dict[int, list[App]] = {0: [], 1: [], 2: []}
        for app, replica in zip(apps, self.replica_of(apps), strict=True):
            by_replica[replica].append(app)
        return by_replica

    async def half_way(
        self, count: int, half: int
    ) -> tuple[list[App], dict[int, bytes], dict[int, list[App]]]:
        """``count`` tunnels, each with the first ``half`` of its ``2 * half`` random bytes
        moved both ways: the apps, their payloads by tag, and which replica has which."""
        apps = [await self.open() for _ in range(count)]
        payloads = {app.tag: os.urandom(2 * half) for app in apps}
        await asyncio.gather(*(app.exchange(payloads[app.tag][:half]) for app in apps))
        return apps, payloads, self.spread(apps)

    def close_all(self) -> None:
        for app in self.apps:
            app.close()


@pytest.fixture
async def replicas(wstun: Wstun, nginx: Nginx, target):
    running = Replicas(wstun, nginx)
    await running.start(target)
    try:
        yield running
    finally:
        running.close_all()


async def test_least_conn_spreads_tunnels_over_every_replica(replicas: Replicas) -> None:
    """30 tunnels held open land 10 on each replica; when one replica's 10 end, the
    next 10 all go to it (least_conn, not round robin); every replica logs its own."""
    first = [await replicas.open() for _ in range(30)]
    for app in first:
        await app.exchange(os.urandom(1000))
    spread = replicas.spread(first)
    assert [len(spread[replica]) for replica in range(3)] == [10, 10, 10]

    for app in spread[0]:
        await app.finish(b"")
        app.close()
    # nginx has let go of them (it logs a request as it frees it): replica 0 holds none.
    await replicas.proxy.wait_for(access_line(101, (replicas.address(0), "101")), count=10)
    second = [await replicas.open() for _ in range(10)]
    assert replicas.replica_of(second) == [0] * 10

    for app in [*spread[1], *spread[2], *second]:
        await app.exchange(b"last words")
        await app.finish(b"")
    for replica, count in enumerate((20, 10, 10)):
        lines = await replicas.servers[replica].wait_for(CLOSED, count=count)
        assert len(lines) == count
        assert all(line.group(3) == "eof" for line in lines)
    for app in replicas.apps:
        assert app.received == app.sent
    assert not replicas.proxy.matches(r"\[(error|warn)\]")


async def test_killed_replica_resets_its_tunnels_and_new_ones_go_on(replicas: Replicas) -> None:
    """SIGKILL one replica mid-transfer: its tunnels' apps see a reset, the others'
    tunnels finish byte-exact (2 MiB each way), and each new tunnel gets through,
    nginx moving on from the refused replica; a relayed tunnel is never retried."""
    half = 1 << 20
    apps, payloads, spread = await replicas.half_way(9, half)
    assert [len(spread[replica]) for replica in range(3)] == [3, 3, 3]

    killed, dead = replicas.servers[0], replicas.address(0)
    killed.popen.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(killed.popen.wait, TIMEOUT) == -signal.SIGKILL
    for app in spread[0]:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(app.reader.read(), TIMEOUT)
    # Relayed when the replica died, they ended there: never retried elsewhere.
    await replicas.proxy.wait_for(access_line(101, (dead, "101")), count=3)

    # The dead replica now carries the fewest tunnels: least_conn tries it first each time.
    new = [await replicas.open() for _ in range(4)]
    for app in new:
        await app.exchange(os.urandom(65536))
    landed = replicas.replica_of(new)
    assert 0 not in landed

    survivors = [*spread[1], *spread[2]]
    await asyncio.gather(*(app.finish(payloads[app.tag][half:]) for app in survivors))
    for app in survivors:
        assert sha(bytes(app.received)) == sha(payloads[app.tag])
    for app in new:
        await app.finish(b"")
        assert app.received == app.sent

    await replicas.proxy.wait_for(UPGRADE_LOGGED, count=len(apps) + len(new))
    moved_on = [tries for status, tries in requests(replicas.proxy) if len(tries) > 1]
    assert len(moved_on) == len(new)
    for tries in moved_on:
        assert tries in (
            [(dead, "502"), (replicas.address(1), "101")],
            [(dead, "502"), (replicas.address(2), "101")],
        )
    refused = r"connect\(\) failed \(111: Connection refused\) .*upstream: \"http://"
    assert len(replicas.proxy.matches(refused + re.escape(dead))) == len(new)
    # Each survivor's line is written once its side of the tunnel is over: wait for them.
    closed = [
        line
        for index in (1, 2)
        for line in await replicas.servers[index].wait_for(
            CLOSED, count=len(spread[index]) + landed.count(index)
        )
    ]
    tunnel = 4 + 2 * half  # the tag, then the payload
    assert Counter(line.groups() for line in closed) == {
        (str(tunnel), str(tunnel), "eof"): len(survivors),
        (str(4 + 65536), str(4 + 65536), "eof"): len(new),
    }
    assert not replicas.client.matches(r"refused: \d+")


async def test_draining_replica_finishes_its_tunnels_new_ones_go_elsewhere(
    replicas: Replicas,
) -> None:
    """SIGTERM one replica (--grace 5) mid-transfer: its tunnels finish byte-exact
    within the grace; new tunnels reach the others, nginx retrying the draining
    replica's 503s so that no client ever sees one; it exits 0 when done."""
    half = 1 << 20
    apps, payloads, spread = await replicas.half_way(9, half)
    assert [len(spread[replica]) for replica in range(3)] == [3, 3, 3]

    draining = replicas.servers[1]
    draining.popen.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await draining.wait_for(rf"draining: 3 tunnel\(s\) open, grace {GRACE:g}s")

    # Held open, the new tunnels soon outnumber the draining replica's 3:
    # least_conn then tries it first, and it answers 503.
    new = [await replicas.open() for _ in range(6)]
    for app in new:
        await app.exchange(os.urandom(65536))
    assert 1 not in replicas.replica_of(new)

    await asyncio.gather(*(app.finish(payloads[app.tag][half:]) for app in apps))
    for app in apps:
        assert sha(bytes(app.received)) == sha(payloads[app.tag])
    assert await asyncio.to_thread(draining.popen.wait, TIMEOUT) == 0
    await asyncio.to_thread(draining.stop)  # exited: this reads the rest of its log
    assert time.monotonic() - signalled < GRACE
    assert not draining.matches("grace period over")
    tunnel = 4 + 2 * half  # the tag, then the payload
    closed = draining.matches(CLOSED)
    assert [line.groups() for line in closed] == [(str(tunnel), str(tunnel), "eof")] * 3

    for app in new:
        await app.finish(b"")
        assert app.received == app.sent
    await replicas.proxy.wait_for(UPGRADE_LOGGED, count=len(apps) + len(new))
    logged = requests(replicas.proxy)
    assert [status for status, _ in logged] == [101] * len(logged), logged
    retried = [tries for _, tries in logged if (replicas.address(1), "503") in tries]
    rejected = draining.matches(REJECTED)
    assert len(rejected) == len(retried) >= 1
    for tries in retried:
        assert tries[-1][1] == "101"
        assert tries[-1][0] != replicas.address(1)
    # Not after a comma: a timestamp's milliseconds (",503 INFO") are no status.
    assert not replicas.client.matches(r"(?<!,)\b503\b")
