"""Bad input over raw sockets: each gets its exact answer, and nothing changes for anyone else.

One server takes the whole battery; afterwards a normal tunnel still moves a
payload byte-exact, the process is alive, its memory stayed bounded and its
log holds no traceback and no secret from a query string.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from pathlib import Path

import pytest

from .conftest import Process, Wstun, echo_target, sha
from .test_tunnel import TIMEOUT, send_and_receive

TOKEN = "battery-token"
SECRET = "qs-secret-4711"
MiB = 1024 * 1024


def upgrade_head(path: str, *, token: str | None = TOKEN, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: wstun.v1\r\n{auth}{extra}\r\n"
    ).encode()


async def http_answer(port: int, data: bytes) -> tuple[int, str]:
    """Send raw bytes; the status and body of the answer (0, "" if the server just closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionResetError):
            await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        except ConnectionResetError:
            return 0, ""
    finally:
        writer.close()
    if not answer:
        return 0, ""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def frame(
    opcode: int, payload: bytes, *, mask: bool = True, rsv: int = 0, length: int | None = None
) -> bytes:
    """One client frame; ``length`` may claim more than ``payload`` holds."""
    n = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    head = bytes([0x80 | rsv << 4 | opcode])
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


async def close_code_after(port: int, path: str, data: bytes) -> int:
    """Upgrade, send ``data`` as raw frame bytes, return the server's close code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(upgrade_head(path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        writer.write(data)
        while True:  # skip pings and data until the close frame
            b0, b1 = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            if b0 & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big")
    finally:
        writer.close()


def rss_kib(proc: Process) -> int:
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
async def battery_server(wstun: Wstun, target, tmp_path: Path) -> tuple[Process, int, int, int]:
    """A server with a token, an echo target and a target that never stops sending."""

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            chunk = os.urandom(65536)
            while True:
                writer.write(chunk)
                await writer.drain()
        writer.close()

    echo_port, fire_port = await target(echo_target()), await target(firehose)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server, port = await wstun.server(
        "--allow", f"127.0.0.1:{echo_port}", "--allow", f"127.0.0.1:{fire_port}",
        "--token-file", str(token_file), "--handshake-timeout", "1",
        "--ping-interval", "0.5", "--ping-timeout", "1",
    )  # fmt: skip
    return server, port, echo_port, fire_port


HTTP_CASES = [
    # (name, raw request, status, body fragment); {echo} is the echo target's port.
    (
        "garbage bytes",
        b"\x00\xff\xfe\x16\x03\x01 garbage\r\n\r\n",
        400,
        "invalid HTTP request line",
    ),
    (
        "TLS hello on a plain port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
        0,
        "",
    ),
    ("request line without version", b"GET /\r\n\r\n", 400, "invalid HTTP request line"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "unsupported protocol"),
    ("non-ASCII path", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not ASCII"),
    ("header without colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, "invalid HTTP header line"),
    ("request line over 8 KiB", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "8192"),
    ("header over 8 KiB", b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, "8192"),
    (
        "too many headers",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(200)) + b"\r\n",
        431,
        "128 headers",
    ),
    ("plain GET", b"GET /?to=127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\n", 426, "upgrade"),
    ("POST upgrade", b"POST" + upgrade_head("/?to=127.0.0.1:{echo}")[3:], 405, "use GET"),
    (
        "upgrade without key",
        b"GET /?to=127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        400,
        "missing Sec-WebSocket-Key",
    ),
    ("query not UTF-8", upgrade_head("/?to=%ff%fe"), 400, "not valid UTF-8"),
    ("query over 2 KiB", upgrade_head("/?to=127.0.0.1:{echo}&x=" + "a" * 3000), 400, "2048"),
    ("query with 100 fields", upgrade_head("/?" + "&".join(["a=1"] * 100)), 400, "16 fields"),
    ("token in the query", upgrade_head(f"/?to=127.0.0.1:{{echo}}&token={SECRET}"), 400, "URL"),
    (
        "server token in the query",
        upgrade_head(f"/?to=127.0.0.1:{{echo}}&x={TOKEN}", token=None),
        400,
        "credentials",
    ),
    ("empty target", upgrade_head("/?to="), 400, "empty target"),
    ("target without port", upgrade_head("/?to=db.internal"), 400, "expected HOST:PORT"),
    ("port 0", upgrade_head("/?to=127.0.0.1:0"), 400, "between 1 and 65535"),
    ("port 70000", upgrade_head("/?to=127.0.0.1:70000"), 400, "between 1 and 65535"),
    ("IPv6 without ]", upgrade_head("/?to=[::1:80"), 400, "missing ']'"),
    ("IPv6 without :port", upgrade_head("/?to=[::1]80"), 400, "expected ':PORT'"),
    ("bad IPv6", upgrade_head("/?to=[zz::1]:80"), 400, "invalid IPv6"),
    ("two targets", upgrade_head("/?to=a:1&to=b:2"), 400, "more than one"),
    ("no token", upgrade_head("/?to=127.0.0.1:{echo}", token=None), 401, "missing bearer"),
    ("disallowed target", upgrade_head("/?to=127.0.0.1:1"), 403, "target not allowed"),
    ("metadata address", upgrade_head("/?to=169.254.169.254:80"), 403, "not allowed"),
    ("connect and leave", b"", 0, ""),
    ("half a request, then silence (slowloris)", b"GET / HTTP/1.1\r\nHost: x\r\n", 0, ""),
]

FRAME_CASES = [
    ("text message", frame(0x1, b"hello"), 1003),
    ("frame over --max-message-size", frame(0x2, b"x" * 16, length=2 * MiB), 1009),
    ("unmasked client frame", frame(0x2, b"hello", mask=False), 1002),
    ("reserved opcode", frame(0x3, b"hello"), 1002),
    ("reserved bits set", frame(0x2, b"hello", rsv=0b100), 1002),
]


async def test_bad_input_battery(
    wstun: Wstun, battery_server: tuple[Process, int, int, int]
) -> None:
    """Every bad input gets its exact answer; a good tunnel still works; no traceback, no leak."""
    server, port, echo_port, fire_port = battery_server
    baseline = rss_kib(server)

    for name, raw, status, fragment in HTTP_CASES:
        got = await http_answer(port, raw.replace(b"{echo}", str(echo_port).encode()))
        assert got[0] == status, (name, got)
        assert fragment in got[1], (name, got)
        if got[1]:
            assert got[1].count("\n") == 1, (name, got)

    for name, data, code in FRAME_CASES:
        assert await close_code_after(port, f"/?to=127.0.0.1:{echo_port}", data) == code, name

    # A client that never reads, from a target that never stops: ended by the
    # keepalive (it answers no ping), with memory bounded meanwhile.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_head(f"/?to=127.0.0.1:{fire_port}"))
    await server.wait_for(rf"tunnel closed .*target=127\.0\.0\.1:{fire_port} .*keepalive timeout")
    writer.close()

    # Many slowloris handshakes at once are all dropped.
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
    for _, w in slow:
        w.write(b"GET / HTTP/1.1\r\n")
    for r, w in slow:
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
        w.close()

    # Everyone else is unaffected: a real tunnel moves a payload byte-exact.
    env = {**os.environ, "WSTUN_TOKEN": TOKEN}
    _, local = await wstun.client(f"ws://127.0.0.1:{port}/", f"127.0.0.1:{echo_port}", env=env)
    payload = os.urandom(4 * MiB)
    assert sha(await send_and_receive(local, payload)) == sha(payload)

    assert server.popen.poll() is None
    assert rss_kib(server) - baseline < 64 * 1024
    log = server.log
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert SECRET not in log
    assert f"x={TOKEN}" not in log
    assert await http_answer(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == (200, "ok\n")


async def test_debug_log_hides_query_and_credentials(wstun: Wstun, target) -> None:
    """Even at --log-level debug, neither a query string nor a bearer token is logged."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    port = await target(handler)
    server = wstun.spawn(
        [wstun.server_cmd, "--listen", "127.0.0.1:0", "--allow", f"127.0.0.1:{port}",
         "--log-level", "debug"]
    )  # fmt: skip
    # websockets logs its own "listening" line at debug level: take ours.
    (match,) = await server.wait_for(r"wstun\.server: listening on 127\.0\.0\.1:(\d+)")
    sport = int(match.group(1))
    status, _ = await http_answer(
        sport, upgrade_head(f"/?to=127.0.0.1:{port}&token={SECRET}", token=TOKEN)
    )
    assert status == 400
    await server.wait_for(r"< GET /\?<query hidden> HTTP/1\.1")
    await server.wait_for(r"< Authorization: <hidden>")
    assert SECRET not in server.log
    assert TOKEN not in server.log
