"""Faults between the parts: server restarts, a silently cut network, a slow local reader.

A target that is down at start (502) and one that dies mid-stream (the app
sees a reset) are in test_tunnel.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from .conftest import Process, Wstun, echo_target, sha
from .test_tunnel import CLOSED, TIMEOUT, expect_reset, send_and_receive


async def test_server_restart_mid_stream(wstun: Wstun, target) -> None:
    """Server killed mid-stream: the app sees an error, the client keeps listening and
    new connections work once the server is back on the same port."""
    port = await target(echo_target())
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"before"
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    (line,) = await client.wait_for(CLOSED.format(side="c"))
    assert line.group(3) == "error"

    await expect_reset(wstun, local)  # server down: refused quickly, client still up
    await client.wait_for(r"failed: can't reach server: connection refused")

    proc = wstun.spawn(
        [wstun.server_cmd, "--listen", f"127.0.0.1:{sport}", "--allow", f"127.0.0.1:{port}"]
    )
    await proc.wait_for(rf"listening on 127\.0\.0\.1:{sport}")
    payload = os.urandom(1024 * 1024)
    assert sha(await send_and_receive(local, payload)) == sha(payload)
    assert client.popen.poll() is None


async def test_slow_local_reader_is_not_a_dead_peer(wstun: Wstun, target) -> None:
    """An app reading slowly for many ping intervals keeps its tunnel; data arrives exact."""
    # More than every socket buffer on the way can hold, so the backlog
    # reaches the WebSocket layers and the client stops reading its socket.
    payload = os.urandom(48 * 1024 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    port = await target(handler)
    pings = ("--ping-interval", "0.2", "--ping-timeout", "0.4")
    server, client, local = await wstun.tunnel(port, *pings, client_args=pings)
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    received = bytearray()
    try:
        # ~3 s of slow reading at first: about 15 ping intervals with the
        # tunnel's buffers full in both processes; then read the rest at once.
        for _ in range(60):
            received += await asyncio.wait_for(reader.read(16 * 1024), TIMEOUT)
            await asyncio.sleep(0.05)  # the slow application, not a synchronisation
        received += await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    assert sha(bytes(received)) == sha(payload)
    for proc, side in ((server, "s"), (client, "c")):
        (line,) = await proc.wait_for(CLOSED.format(side=side))
        assert line.group(3) == "eof", line.string
    assert not server.matches("keepalive")
    assert not client.matches("keepalive")


# --------------------------------------------------------- network namespaces

CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces, client and server, joined by a veth pair 10.231.0.1 <-> .2."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"wstun{os.getpid()}"
    a, b = f"{tag}a", f"{tag}b"
    try:
        try:
            _ip("netns", "add", a)
            _ip("netns", "add", b)
            _ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
            _ip("-n", a, "addr", "add", "10.231.0.1/30", "dev", "va")
            _ip("-n", b, "addr", "add", "10.231.0.2/30", "dev", "vb")
            for ns, dev in ((a, "va"), (b, "vb")):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            pytest.skip(
                f"this machine doesn't allow network namespaces with veth: {exc} {detail!r}"
            )
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def connect_in_netns(ns: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:port inside ``ns``, made from a throwaway thread."""
    result: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock.setblocking(False)
            result.set_result(sock)
        except BaseException as exc:
            result.set_exception(exc)

    thread = threading.Thread(target=run)  # dies with its namespace switch
    thread.start()
    thread.join(TIMEOUT)
    return result.result(0)


ECHO_TARGET = """
import asyncio, sys
async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        print("target saw reset", file=sys.stderr, flush=True)
    w.close()
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 7000)
    print("target ready", file=sys.stderr, flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


async def test_silently_cut_network_ends_tunnel_by_keepalive(
    wstun: Wstun, netns_pair: tuple[str, str]
) -> None:
    """The link between client and server goes down without a FIN or RST: both sides'
    keepalive ends the tunnel, the app and the target see resets."""
    a, b = netns_pair
    pings = ("--ping-interval", "0.5", "--ping-timeout", "1")
    tgt = wstun.spawn(["ip", "netns", "exec", b, sys.executable, "-c", ECHO_TARGET])
    await tgt.wait_for("target ready")
    server = wstun.spawn(
        ["ip", "netns", "exec", b, wstun.server_cmd, "--listen", "10.231.0.2:0",
         "--allow", "127.0.0.1:7000", *pings]
    )  # fmt: skip
    (match,) = await server.wait_for(r"listening on 10\.231\.0\.2:(\d+)")
    client = wstun.spawn(
        ["ip", "netns", "exec", a, wstun.client_cmd, "-L", "0:127.0.0.1:7000",
         f"ws://10.231.0.2:{match.group(1)}/", *pings]
    )  # fmt: skip
    (match,) = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->")
    sock = await asyncio.to_thread(connect_in_netns, a, int(match.group(1)))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"alive?")
        assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"alive?"

        _ip("-n", b, "link", "set", "vb", "down")  # silence: no FIN, no RST

        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    for proc, side in ((client, "c"), (server, "s")):
        (line,) = await proc.wait_for(CLOSED.format(side=side))
        assert line.group(3) == "error"
        assert "keepalive timeout: nothing received from the peer" in line.string
    await tgt.wait_for("target saw reset")
    stop_in_order: list[Process] = [client, server, tgt]
    for proc in stop_in_order:
        assert proc.stop() in (0, -signal.SIGTERM)
