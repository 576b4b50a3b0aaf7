"""-R end to end over real sessions and real faults: ssh, a frozen client, a cut network.

app --TCP--> wstun-server's reverse port --WS data channel--> wstun-client --TCP--> service

The "laptop" runs wstun-client -R and the service (sshd, an echo service);
the "server side" connects to the port the server holds for the client.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Process, Wstun, echo_target, echo_through, sha
from .test_stdio import (
    run,
    ssh_keys,  # noqa: F401  (a fixture, used by its name)
    ssh_options,
    ssh_sessions,
    start_sshd,
)

TIMEOUT = 60.0

#: A tunnel's line, either side: (id, peer, target, up, down, end).
CLOSED = (
    r"tunnel closed id=({side}\d+) kind=reverse peer=(\S+) target=(\S+) "
    r"up=(\d+) down=(\d+) .*end=(\S+)"
)


async def reverse_client(
    wstun: Wstun, url: str, service: str, *args: str, argv_prefix: tuple[str, ...] = ()
) -> tuple[Process, int]:
    """wstun-client -R 0:SERVICE URL; returns the process and the port the server gave."""
    proc = wstun.spawn([*argv_prefix, wstun.client_cmd, "-R", f"0:{service}", url, *args])
    (allocated,) = await proc.wait_for(
        r"reverse 127\.0\.0\.1:0: allocated port (\d+) on the server"
    )
    port = int(allocated.group(1))
    await proc.wait_for(rf"reverse 127\.0\.0\.1:{port} on the server -> {re.escape(service)} via ")
    return proc, port


# --------------------------------------------------------------- real ssh


async def test_ssh_and_scp_through_a_reverse_port(
    wstun: Wstun,
    tmp_path: Path,
    ssh_keys: tuple[Path, Path, str],  # noqa: F811  (the fixture imported above)
) -> None:
    """sshd behind the client; ssh and scp to the server's reverse port (no ProxyCommand):
    a command, 1 MiB up with cat, back down with cat, and up with scp, byte-exact."""
    host_key, user_key, host_pub = ssh_keys
    sshd, sshd_port = await start_sshd(wstun, tmp_path, host_key)
    server, sport = await wstun.server("--allow-listen", "127.0.0.1:9000-9100")
    client, port = await reverse_client(wstun, f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{sshd_port}")
    assert 9000 <= port <= 9100  # picked within the listen rule
    await server.wait_for(rf"reverse 127\.0\.0\.1:{port}: listening for 127\.0\.0\.1:\d+ \(lease")

    # Only our sshd's key is trusted, under the reverse port's name: the session
    # really reaches it through the port the server holds.
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    opts = ssh_options(tmp_path, user_key, "none")  # ProxyCommand=none: a plain TCP dial
    size = 1024 * 1024 + 7
    await ssh_sessions(opts, port, tmp_path, size)

    # Four sessions: four reverse tunnels, each ended cleanly on both sides. The
    # client's target is sshd; the server's peer is the ssh the client's line names.
    server_lines = await server.wait_for(CLOSED.format(side="s"), count=4)
    client_lines = await client.wait_for(CLOSED.format(side="c"), count=4)
    assert [line.group(6) for line in server_lines] == ["eof"] * 4, server.log
    assert [line.group(6) for line in client_lines] == ["eof"] * 4, client.log
    assert {line.group(3) for line in client_lines} == {f"127.0.0.1:{sshd_port}"}
    assert sorted(line.group(2) for line in server_lines) == sorted(
        line.group(2) for line in client_lines
    )
    # The big transfers are counted where they went: up for cat > and scp, down for cat.
    ups = sorted(int(line.group(4)) for line in server_lines)
    downs = sorted(int(line.group(5)) for line in server_lines)
    assert ups[-1] > size  # the cat upload and the scp one (1 MiB + 3)
    assert ups[-2] > size
    assert downs[-1] > size  # the cat download
    await sshd.wait_for(r"Accepted publickey for", count=4)
    assert len(sshd.matches(r"Accepted publickey for")) == 4
    assert not server.matches(r"lost|port closed"), server.log
    assert not client.matches(r"lost:|retrying"), client.log


# --------------------------------------------------------- a frozen client


async def test_frozen_client_noticed_by_keepalive_then_back_on_same_port(
    wstun: Wstun, target: Callable[..., Awaitable[int]]
) -> None:
    """SIGSTOP the client: the server notices within ping interval + timeout and keeps
    the port; a connection made meanwhile waits; SIGCONT: the client takes the same port
    back, the waiting connection is carried and new ones work."""
    service = await target(echo_target())
    server, sport = await wstun.server(
        "--allow-listen", "127.0.0.1:*",
        "--ping-interval", "1", "--ping-timeout", "1", "--reverse-grace", "30",
    )  # fmt: skip
    client, port = await reverse_client(wstun, f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{service}")
    (listening,) = await server.wait_for(
        rf"reverse 127\.0\.0\.1:{port}: listening for (127\.0\.0\.1:\d+) \(lease"
    )
    client_peer = listening.group(1)
    before = os.urandom(100_000)
    assert sha(await echo_through(port, before, TIMEOUT)) == sha(before)

    lost_pattern = (
        rf"reverse 127\.0\.0\.1:{port}: control channel of {client_peer} lost "
        r"\(keepalive timeout: nothing received from the peer for [\d.]+s\); "
        r"keeping the port for 30s"
    )
    stopped_at = time.monotonic()
    client.popen.send_signal(signal.SIGSTOP)
    try:
        await server.wait_for(lost_pattern, timeout=TIMEOUT)
        noticed = time.monotonic() - stopped_at
        # The spec's bound: interval + timeout (2 s), plus 3 s for scheduling.
        assert noticed < 2 + 3, f"noticed after {noticed:.1f}s"
        assert not server.matches(r"port closed"), server.log
        # The port is still held: a connection made while the client is away is
        # accepted and waits (it sends nothing yet) for the client to come back.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        client.popen.send_signal(signal.SIGCONT)

    try:
        await client.wait_for(r"reverse 127\.0\.0\.1:\d+ lost: .*; retrying")
        (back,) = await client.wait_for(
            r"reverse 127\.0\.0\.1:\d+ back on 127\.0\.0\.1:(\d+) after (\d+) attempts?"
        )
        assert int(back.group(1)) == port, client.log
        during = os.urandom(200_000)
        writer.write(during)
        await writer.drain()
        writer.write_eof()
        assert sha(await asyncio.wait_for(reader.read(), TIMEOUT)) == sha(during)
    finally:
        writer.close()
    after = os.urandom(300_000)
    assert sha(await echo_through(port, after, TIMEOUT)) == sha(after)

    server_lines = await server.wait_for(CLOSED.format(side="s"), count=3)
    assert [line.group(6) for line in server_lines] == ["eof"] * 3, server.log
    client_lines = await client.wait_for(CLOSED.format(side="c"), count=3)
    assert [line.group(6) for line in client_lines] == ["eof"] * 3, client.log
    assert not server.matches(r"port closed|reset"), server.log
    assert len(server.matches(r"listening for ")) == 1  # one lease all along
    assert client.popen.poll() is None


# --------------------------------------------------------- network namespaces

requires_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2's ip",
)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: the server's side and the laptop's side."""

    server_ns: str
    client_ns: str
    server_ip: str
    client_dev: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns_pair(wstun: Wstun) -> Iterator[NetnsPair]:
    """Namespaces named after this process, 10.231.X.1/24 (server) <-> 10.231.X.2/24.

    On teardown the processes are stopped (by pid) before the namespaces go.
    """
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"wstunR{os.getpid()}"
    a, b = f"{tag}srv", f"{tag}cli"
    subnet = f"10.231.{os.getpid() % 200 + 20}"
    try:
        try:
            _ip("netns", "add", a)
            _ip("netns", "add", b)
            _ip("-n", a, "link", "add", "vra", "type", "veth", "peer", "name", "vrb", "netns", b)
            _ip("-n", a, "addr", "add", f"{subnet}.1/24", "dev", "vra")
            _ip("-n", b, "addr", "add", f"{subnet}.2/24", "dev", "vrb")
            for ns, dev in ((a, "vra"), (b, "vrb")):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            pytest.skip(
                f"this machine doesn't allow network namespaces with veth: {exc} {detail!r}"
            )
        yield NetnsPair(a, b, f"{subnet}.1", "vrb")
    finally:
        wstun.stop_all()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


#: An echo service on a free 127.0.0.1 port (it logs which) that half-closes after EOF.
ECHO_SERVICE = """
import asyncio, sys
async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.write_eof()
    except ConnectionError:
        pass
    w.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print("echo on", server.sockets[0].getsockname()[1], file=sys.stderr, flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

#: Connects to 127.0.0.1:argv[1], sends stdin, half-closes, writes the answer to stdout.
ECHO_CLIENT = """
import socket, sys
data = sys.stdin.buffer.read()
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30) as s:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    sys.stdout.buffer.write(b"".join(iter(lambda: s.recv(65536), b"")))
"""


async def echo_in_netns(ns: str, port: int, payload: bytes) -> bytes:
    """As an application inside ``ns``: payload to 127.0.0.1:port, the answer to EOF."""
    return await run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_CLIENT, str(port)], payload
    )


@requires_root
async def test_network_cut_then_healed_gets_the_same_port_back(
    wstun: Wstun, netns_pair: NetnsPair
) -> None:
    """The link between client and server goes down silently: the client's keepalive
    notices, and once the link is back the client holds the same port again, no restart."""
    net = netns_pair
    pings = ("--ping-interval", "1", "--ping-timeout", "2")
    in_client_ns = ("ip", "netns", "exec", net.client_ns)
    echo = wstun.spawn([*in_client_ns, sys.executable, "-c", ECHO_SERVICE])
    (match,) = await echo.wait_for(r"echo on (\d+)")
    service = f"127.0.0.1:{match.group(1)}"
    server = wstun.spawn(
        ["ip", "netns", "exec", net.server_ns, wstun.server_cmd,
         "--listen", f"{net.server_ip}:0", "--allow-listen", "127.0.0.1:*",
         "--reverse-grace", "30", *pings]
    )  # fmt: skip
    (match,) = await server.wait_for(rf"listening on {re.escape(net.server_ip)}:(\d+)")
    url = f"ws://{net.server_ip}:{match.group(1)}/"
    client, port = await reverse_client(wstun, url, service, *pings, argv_prefix=in_client_ns)

    before = os.urandom(200_000)
    assert sha(await echo_in_netns(net.server_ns, port, before)) == sha(before)

    _ip("-n", net.client_ns, "link", "set", net.client_dev, "down")  # no FIN, no RST
    cut_at = time.monotonic()
    try:
        (lost,) = await client.wait_for(r"reverse 127\.0\.0\.1:\d+ lost: (.*); retrying")
        noticed = time.monotonic() - cut_at
    finally:
        _ip("-n", net.client_ns, "link", "set", net.client_dev, "up")
    assert lost.group(1).startswith("keepalive timeout: nothing received from the peer"), lost
    assert noticed < 1 + 2 + 3, f"noticed after {noticed:.1f}s"  # interval + timeout + 3 s

    (back,) = await client.wait_for(
        r"reverse 127\.0\.0\.1:\d+ back on 127\.0\.0\.1:(\d+) after (\d+) attempts?",
        timeout=TIMEOUT,
    )
    assert int(back.group(1)) == port, client.log
    after = os.urandom(500_000)
    assert sha(await echo_in_netns(net.server_ns, port, after)) == sha(after)

    server_lines = await server.wait_for(CLOSED.format(side="s"), count=2)
    assert [line.group(6) for line in server_lines] == ["eof", "eof"], server.log
    # The server saw the old control channel go (its keepalive, or a reset once the link
    # is back), or the client took the lease back first. One lease all along: the server
    # kept the port and never closed it.
    assert (
        len(server.matches(rf"reverse 127\.0\.0\.1:{port}: control channel of \S+ lost \("))
        + len(server.matches(rf"reverse 127\.0\.0\.1:{port}: taken back by a new control channel"))
        == 1
    ), server.log
    assert len(server.matches(r"reverse 127\.0\.0\.1:\d+: listening for ")) == 1, server.log
    assert not server.matches(r"port closed"), server.log
    client_lines = await client.wait_for(CLOSED.format(side="c"), count=2)
    assert [line.group(6) for line in client_lines] == ["eof", "eof"], client.log
    assert client.popen.poll() is None
