"""Whatever the server side does before the upgrade completes, every local connection ends.

A fault table: each row is a fake server on loopback that fails the upgrade
one way. Through ``-L`` every local connection ends with a reset within
``--connect-timeout`` (+1 s), through ``-D`` the SOCKS5 client gets its reply
code first, through ``-W`` the process exits 1 with one line. The client
logs one clear line per kind of failure, never a traceback, and its file
descriptors come back to their number before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from .conftest import Handler, Process, Wstun

CONNECT_TIMEOUT = 1.0
#: Local connections opened per row and mode.
CONNECTIONS = 5
#: An outcome must come within the connect timeout, plus this.
SLACK = 1.0


async def accept_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
    await writer.drain()
    await reader.read()
    writer.close()


async def half_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgr")
    await writer.drain()
    await reader.read()  # until the client gives up
    writer.close()


async def status_without_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Any plain HTTP server: a 400 for whatever arrives (a TLS ClientHello included)."""
    await reader.read(1)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


@dataclass(frozen=True)
class Row:
    name: str
    handler: Handler
    #: What the client's failure line says.
    line: str
    scheme: str = "ws"
    tls: bool = False


ROWS = [
    Row("accepts and closes", accept_and_close, "closed the connection before answering"),
    Row("resets", reset, "closed the connection before answering"),
    Row("sends garbage", garbage, "did not receive a valid HTTP response"),
    Row("half a response, then silence", half_then_stall, "did not complete the handshake"),
    Row("TLS to a ws:// client", never_answers, "the server speaks TLS: use wss://", tls=True),
    Row("plain HTTP to a wss:// client", plain_http, "answered without TLS: use ws://", "wss"),
    Row("a status without a body", status_without_body, "refused: 403 Forbidden"),
    Row("never answers", never_answers, "did not complete the handshake within 1s"),
]


@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def fake_server(
    server_tls: ssl.SSLContext, target: Callable[..., Awaitable[int]]
) -> Callable[[Row], Awaitable[int]]:
    async def start(row: Row) -> int:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                await row.handler(reader, writer)

        return await target(handler, ssl=server_tls if row.tls else None)

    return start


def fd_count(process: Process) -> int:
    return len(os.listdir(f"/proc/{process.popen.pid}/fd"))


async def back_to(process: Process, baseline: int, timeout: float = 5.0) -> int:
    """The client's descriptor count once it is back at ``baseline`` or below (a socket of
    its startup check may still have been closing when the baseline was taken)."""
    deadline = time.monotonic() + timeout
    while (count := fd_count(process)) > baseline and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling a count: there is no event to wait for
    return count


def client_args(row: Row, port: int) -> list[str]:
    return [f"{row.scheme}://127.0.0.1:{port}/", "--connect-timeout", str(CONNECT_TIMEOUT)]


async def local_outcome(port: int, greeting: bytes = b"") -> tuple[str, bytes, float]:
    """Connect as an application; how the connection ended, what it got, and when."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        if greeting:
            writer.write(greeting)
        received = await asyncio.wait_for(reader.read(), CONNECT_TIMEOUT + SLACK + 5)
        outcome = "eof"
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = "hang"
    finally:
        writer.close()
    return outcome, received, time.monotonic() - started


async def check_log(process: Process, row: Row) -> None:
    await process.wait_for(r"WARNING wstun\.client: tunnel to")  # stderr is read in a thread
    log = process.log
    assert "Traceback" not in log
    assert "never retrieved" not in log
    failures = [line for line in process.lines if "WARNING" in line and "tunnel to" in line]
    assert failures, log
    assert all(row.line in line for line in failures), log
    # Rate-limited: one line for the kind, not one per connection.
    assert len(failures) == 1, log


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_forward(
    wstun: Wstun, fake_server: Callable[[Row], Awaitable[int]], row: Row
) -> None:
    """-L: every local connection is reset within the connect timeout; one line; no fd leak."""
    port = await fake_server(row)
    client = wstun.spawn([wstun.client_cmd, "-L", "0:db.internal:5432", *client_args(row, port)])
    (match,) = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->")
    await client.wait_for(r"server (ok|check)")  # its startup check is over
    baseline = fd_count(client)
    outcomes = await asyncio.gather(
        *(local_outcome(int(match.group(1))) for _ in range(CONNECTIONS))
    )
    for outcome, received, seconds in outcomes:
        assert (outcome, received) == ("reset", b""), outcomes
        assert seconds < CONNECT_TIMEOUT + SLACK, outcomes
    assert await back_to(client, baseline) <= baseline
    await check_log(client, row)


SOCKS_CONNECT = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0bdb.internal\x15\x38"


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_socks(wstun: Wstun, fake_server: Callable[[Row], Awaitable[int]], row: Row) -> None:
    """-D: the SOCKS5 client gets its reply code, then the connection ends; no fd leak."""
    port = await fake_server(row)
    client = wstun.spawn([wstun.client_cmd, "-D", "0", *client_args(row, port)])
    (match,) = await client.wait_for(r"SOCKS5 proxy on 127\.0\.0\.1:(\d+)")
    await client.wait_for(r"server (ok|check)")  # its startup check is over
    baseline = fd_count(client)
    outcomes = await asyncio.gather(
        *(local_outcome(int(match.group(1)), SOCKS_CONNECT) for _ in range(CONNECTIONS))
    )
    # 403 is "not allowed by ruleset"; every failure without an answer is "general failure".
    code = 0x02 if "403" in row.line else 0x01
    for outcome, received, seconds in outcomes:
        assert outcome in ("eof", "reset"), outcomes
        assert received[:2] == b"\x05\x00", outcomes  # method selection
        assert received[2:4] == bytes([0x05, code]), outcomes  # the reply
        assert seconds < CONNECT_TIMEOUT + SLACK + 2, outcomes  # +2: the reply's linger
    assert await back_to(client, baseline) <= baseline
    await check_log(client, row)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_stdio(
    wstun: Wstun, fake_server: Callable[[Row], Awaitable[int]], row: Row, tmp_path: Path
) -> None:
    """-W: exit status 1 and one line on stderr naming the failure, within the timeout."""
    port = await fake_server(row)
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        [wstun.client_cmd, "-W", "db.internal:22", *client_args(row, port)],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=CONNECT_TIMEOUT + SLACK + 10,
    )
    assert time.monotonic() - started < CONNECT_TIMEOUT + SLACK + 2  # + the interpreter's start
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wstun-client: tunnel to db.internal:22 ")
    assert row.line in lines[0]
