"""-D end to end: real curl, and a SOCKS5 conformance table over raw sockets.

app --SOCKS5--> wstun-client -D --WS--> wstun-server --TCP--> target
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http.server
import ipaddress
import os
import re
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .conftest import Process, Wstun, free_port, sha

TIMEOUT = 30.0
CURL = "/usr/bin/curl"


def closed_line(target: str) -> str:
    """The server's per-tunnel line for ``target``: groups up, down, end."""
    return rf"tunnel closed id=s\d+ .*target={re.escape(target)} up=(\d+) down=(\d+) .*end=(\S+)"


async def socks_client(wstun: Wstun, url: str, *args: str) -> tuple[Process, int]:
    """wstun-client -D 0 URL; returns the process and its SOCKS port."""
    proc = wstun.spawn([wstun.client_cmd, "-D", "0", url, *args])
    (match,) = await proc.wait_for(r"SOCKS5 proxy on 127\.0\.0\.1:(\d+) via")
    return proc, int(match.group(1))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything until EOF, then close."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


# ------------------------------------------------------------------ curl


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """Python's HTTP server on 127.0.0.1 serving a random 1 MiB page."""
    page = os.urandom(1024 * 1024)
    (tmp_path / "page.bin").write_bytes(page)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], page
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def curl(*args: str) -> bytes:
    """Run the real curl; fail the test with its stderr if it fails."""
    proc = await asyncio.create_subprocess_exec(
        CURL, "--silent", "--show-error", "--fail", "--max-time", "30", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out


@pytest.mark.parametrize(
    ("mode", "extra", "seen_by_server"),
    [
        ("--socks5-hostname", (), "localhost"),  # the name travels; the server resolves it
        ("--socks5", ("--ipv4",), "127.0.0.1"),  # curl resolves, sends an IPv4 address
    ],
)
async def test_curl_fetches_a_page_byte_exact(
    wstun: Wstun,
    http_server: tuple[int, bytes],
    mode: str,
    extra: tuple[str, ...],
    seen_by_server: str,
) -> None:
    """curl through -D gets the page byte-exact; the server dials what curl named."""
    port, page = http_server
    server, sport = await wstun.server(
        "--allow", f"localhost:{port}", "--allow", f"127.0.0.1:{port}"
    )
    _, socks = await socks_client(wstun, f"ws://127.0.0.1:{sport}/")

    body = await curl(mode, f"127.0.0.1:{socks}", *extra, f"http://localhost:{port}/page.bin")

    assert sha(body) == sha(page)
    (line,) = await server.wait_for(closed_line(f"{seen_by_server}:{port}"))
    assert int(line.group(2)) > len(page)  # the page plus HTTP headers
    assert line.group(3) == "eof"


async def test_curl_refused_target_is_a_socks_error(wstun: Wstun, http_server) -> None:
    """A target the server forbids: curl reports the SOCKS5 'not allowed' reply (2)."""
    port, _ = http_server
    _, sport = await wstun.server("--allow", "127.0.0.1:1")
    client, socks = await socks_client(wstun, f"ws://127.0.0.1:{sport}/")
    proc = await asyncio.create_subprocess_exec(
        CURL, "--silent", "--show-error", "--socks5-hostname", f"127.0.0.1:{socks}",
        f"http://localhost:{port}/page.bin",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 97  # CURLE_PROXY
    assert out == b""
    assert b"(2)" in err  # curl prints the reply code
    await client.wait_for(rf"tunnel to localhost:{port} refused: 403 .*SOCKS5 reply 0x02")


# ----------------------------------------------------- raw-socket client


def greeting(*methods: int) -> bytes:
    return bytes([5, len(methods), *methods])


def request(host: str, port: int, command: int = 1, address_type: int | None = None) -> bytes:
    """A SOCKS5 request, built by hand (independently of client/socks.py)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode()
        encoded = bytes([address_type or 3, len(name) & 0xFF]) + name
    else:
        encoded = bytes([address_type or (1 if address.version == 4 else 4)]) + address.packed
    return bytes([5, command, 0]) + encoded + struct.pack("!H", port)


def credentials(user: str, password: str) -> bytes:
    return bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode()


@dataclasses.dataclass
class Conn:
    """A raw TCP connection to the SOCKS port."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, size: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(size), TIMEOUT)

    async def reply(self) -> int:
        """Read a whole reply (any address type); returns its code."""
        head = await self.recv(4)
        assert head[0] == 5, head
        assert head[2] == 0, head
        size = {1: 4, 4: 16}.get(head[3])
        if size is None:
            assert head[3] == 3
            size = (await self.recv(1))[0]
        await self.recv(size + 2)
        return head[1]

    async def rest(self) -> bytes:
        """Everything until EOF; a reset fails the test (closes must be clean)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    async def echo_check(self) -> None:
        """The tunnel works both ways and honours half-close."""
        await self.send(b"ping")
        assert await self.recv(4) == b"ping"
        self.writer.write_eof()
        assert await self.rest() == b""


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Conn(reader, writer)
    finally:
        writer.close()


@dataclasses.dataclass
class Setup:
    client: Process
    server: Process
    socks: int
    echo: int  # echo target on 127.0.0.1 (and "localhost")
    echo6: int  # echo target on ::1
    closed: int  # nothing listens
    silent: int  # never accepts (504)
    echo6_server: asyncio.Server


async def start_setup(wstun: Wstun, target, unanswering_port: int, *client_args: str) -> Setup:
    echo_port = await target(echo)
    echo6_server = await asyncio.start_server(echo, "::1", 0)
    echo6 = echo6_server.sockets[0].getsockname()[1]
    closed = free_port()
    server, sport = await wstun.server(
        "--allow", f"127.0.0.1:{echo_port}", "--allow", f"localhost:{echo_port}",
        "--allow", f"[::1]:{echo6}", "--allow", f"127.0.0.1:{closed}",
        "--allow", f"127.0.0.1:{unanswering_port}",
        "--connect-timeout", "0.5",
    )  # fmt: skip
    client, socks = await socks_client(wstun, f"ws://127.0.0.1:{sport}/", *client_args)
    return Setup(client, server, socks, echo_port, echo6, closed, unanswering_port, echo6_server)


@pytest.fixture
async def setup(wstun: Wstun, target, unanswering_port: int) -> AsyncIterator[Setup]:
    """Server, echo targets and a -D client without authentication."""
    s = await start_setup(wstun, target, unanswering_port)
    yield s
    s.echo6_server.close()
    assert "Traceback" not in s.client.log


# ------------------------------------------------------ the conformance table


@pytest.mark.parametrize(
    ("host", "port_name"),
    [("127.0.0.1", "echo"), ("::1", "echo6"), ("localhost", "echo")],
    ids=["ipv4", "ipv6", "domain"],
)
async def test_connect_each_address_type(setup: Setup, host: str, port_name: str) -> None:
    """CONNECT to an IPv4 address, an IPv6 address and a name: success, then data."""
    port = getattr(setup, port_name)
    async with connect(setup.socks) as conn:
        await conn.send(greeting(0))
        assert await conn.recv(2) == b"\x05\x00"
        await conn.send(request(host, port))
        assert await conn.reply() == 0
        await conn.echo_check()
    shown = f"[{host}]" if ":" in host else host
    await setup.server.wait_for(closed_line(f"{shown}:{port}"))


async def test_request_and_payload_in_one_write(setup: Setup) -> None:
    """A client that sends greeting, request and payload at once loses nothing."""
    async with connect(setup.socks) as conn:
        await conn.send(greeting(0) + request("127.0.0.1", setup.echo) + b"early")
        assert await conn.recv(2) == b"\x05\x00"
        assert await conn.reply() == 0
        assert await conn.recv(5) == b"early"
        await conn.echo_check()


@pytest.mark.parametrize(
    ("make_request", "code", "log"),
    [
        (lambda s: request("127.0.0.1", 1), 0x02, r"refused: 403 target not allowed"),
        (lambda s: request("127.0.0.1", s.closed), 0x05, r"refused: 502 .*connection refused"),
        (lambda s: request("127.0.0.1", s.silent), 0x06, r"refused: 504 .*did not answer"),
        (lambda s: request("bad_name!", 7), 0x08, r"refused: 400 bad target: invalid host name"),
        (lambda s: request("a" * 255, 7), 0x08, r"refused: 400 bad target: invalid host name"),
        (lambda s: request("127.0.0.1", s.echo, command=2), 0x07, r"BIND is not supported"),
        (lambda s: request("127.0.0.1", s.echo, command=3), 0x07, r"UDP ASSOCIATE is not"),
        (lambda s: request("127.0.0.1", s.echo, command=9), 0x07, r"command 0x09 is not"),
        (lambda s: request("127.0.0.1", s.echo, address_type=5), 0x08, r"address type 0x05"),
        (lambda s: b"\x05\x01\x00\x03\x00\x00\x07", 0x08, r"empty domain name"),
    ],
    ids=[
        "403-not-allowed", "502-refused", "504-timeout", "400-bad-name", "400-255-char-name",
        "bind", "udp-associate", "unknown-command", "unknown-address-type", "empty-name",
    ],
)  # fmt: skip
async def test_failures_map_to_reply_codes(setup: Setup, make_request, code: int, log: str) -> None:
    """Each refusal is its SOCKS5 reply code, sent before a clean close, and logged."""
    async with connect(setup.socks) as conn:
        await conn.send(greeting(0))
        assert await conn.recv(2) == b"\x05\x00"
        await conn.send(make_request(setup))
        assert await conn.reply() == code
        assert await conn.rest() == b""  # a clean close after the reply, not a reset
    await setup.client.wait_for(log)


async def test_unreachable_server_is_general_failure(wstun: Wstun) -> None:
    """With no wstun-server answering, CONNECT gets 0x01 and the client says why."""
    client, socks = await socks_client(wstun, f"ws://127.0.0.1:{free_port()}/")
    async with connect(socks) as conn:
        await conn.send(greeting(0) + request("127.0.0.1", 7))
        assert await conn.recv(2) == b"\x05\x00"
        assert await conn.reply() == 0x01
        assert await conn.rest() == b""
    await client.wait_for(r"tunnel to 127\.0\.0\.1:7 failed: can't reach server")


@pytest.mark.parametrize(
    "methods",
    [(0x02,), (0x01,), (0x80, 0xFE), ()],
    ids=["userpass-only", "gssapi-only", "private", "none"],
)
async def test_no_acceptable_method(setup: Setup, methods: tuple[int, ...]) -> None:
    """A greeting without 'no authentication' gets 0xFF and a clean close."""
    async with connect(setup.socks) as conn:
        await conn.send(greeting(*methods))
        assert await conn.recv(2) == b"\x05\xff"
        assert await conn.rest() == b""
    await setup.client.wait_for(r"no acceptable method")


SELECTED = b"\x05\x00"  # method selection: no authentication
FAILED = b"\x05\x01\x00\x01" + bytes(6)  # reply 0x01, bound 0.0.0.0:0


@pytest.mark.parametrize(
    ("data", "answer", "log"),
    [
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00", b"", r"SOCKS4 request; only SOCKS5"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", r"not a SOCKS5 greeting \(first byte 0x47\)"),
        (b"\x05\x03\x00", b"", r"in the middle of the greeting"),
        (greeting(0) + b"\x05\x01\x00\x01\x7f\x00", SELECTED, r"in the middle of the request"),
        (
            greeting(0) + b"\x05\x01\x00\x03\x14example.com\x00\x50",
            SELECTED,
            r"in the middle of the request",
        ),
        (
            greeting(0) + b"\x06\x01\x00\x01\x7f\x00\x00\x01\x00\x07",
            SELECTED + FAILED,
            r"bad request version 0x06",
        ),
    ],
    ids=[
        "socks4", "http", "truncated-greeting", "truncated-ipv4",
        "name-shorter-than-its-length", "bad-request-version",
    ],
)  # fmt: skip
async def test_bad_or_truncated_input_closes_cleanly(
    setup: Setup, data: bytes, answer: bytes, log: str
) -> None:
    """Non-SOCKS5 or truncated input: no tunnel, a clean close, one log line."""
    async with connect(setup.socks) as conn:
        await conn.send(data)
        conn.writer.write_eof()
        assert await conn.rest() == answer
    await setup.client.wait_for(log)
    assert not setup.server.matches(r"tunnel closed|rejected")


# ------------------------------------------------------------- auth (RFC 1929)


@pytest.fixture
async def auth_setup(
    wstun: Wstun, target, unanswering_port: int, tmp_path: Path
) -> AsyncIterator[Setup]:
    """As ``setup``, but the -D port wants user 'alice' with password 'sesame'."""
    password_file = tmp_path / "socks-password"
    password_file.write_text("sesame\n")
    s = await start_setup(
        wstun, target, unanswering_port,
        "--socks-user", "alice", "--socks-password-file", str(password_file),
    )  # fmt: skip
    yield s
    s.echo6_server.close()
    assert "Traceback" not in s.client.log


async def test_right_password_opens_the_tunnel(auth_setup: Setup) -> None:
    """The right username and password: status 0, then CONNECT works."""
    async with connect(auth_setup.socks) as conn:
        await conn.send(greeting(0, 2))
        assert await conn.recv(2) == b"\x05\x02"
        await conn.send(credentials("alice", "sesame"))
        assert await conn.recv(2) == b"\x01\x00"
        await conn.send(request("127.0.0.1", auth_setup.echo))
        assert await conn.reply() == 0
        await conn.echo_check()


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "wrong"), ("bob", "sesame"), ("alice", "sesame\n")]
)
async def test_wrong_credentials_are_refused(auth_setup: Setup, user: str, password: str) -> None:
    """A wrong username or password: status 1, then a clean close; nothing is dialled."""
    async with connect(auth_setup.socks) as conn:
        await conn.send(greeting(2))
        assert await conn.recv(2) == b"\x05\x02"
        await conn.send(credentials(user, password) + request("127.0.0.1", auth_setup.echo))
        assert await conn.recv(2) == b"\x01\x01"
        assert await conn.rest() == b""
    await auth_setup.client.wait_for(rf"wrong username or password for '{user}'")
    assert not auth_setup.server.matches(r"tunnel closed")


async def test_auth_required_but_not_offered(auth_setup: Setup) -> None:
    """With auth configured, a client offering only 'no authentication' gets 0xFF."""
    async with connect(auth_setup.socks) as conn:
        await conn.send(greeting(0))
        assert await conn.recv(2) == b"\x05\xff"
        assert await conn.rest() == b""


# ------------------------------------------------------------ -L and -D together


async def test_several_d_and_l_in_one_client(wstun: Wstun, target) -> None:
    """Two -D ports and one -L in one process all tunnel."""
    echo_port = await target(echo)
    _, sport = await wstun.server("--allow", f"127.0.0.1:{echo_port}")
    client = wstun.spawn([
        wstun.client_cmd, "-D", "0", "-L", f"0:127.0.0.1:{echo_port}", "-D", "127.0.0.1:0",
        f"ws://127.0.0.1:{sport}/",
    ])  # fmt: skip
    socks_ports = [
        int(m.group(1))
        for m in await client.wait_for(r"SOCKS5 proxy on 127\.0\.0\.1:(\d+)", count=2)
    ]
    (forward,) = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->")
    for socks in socks_ports:
        async with connect(socks) as conn:
            await conn.send(greeting(0) + request("127.0.0.1", echo_port))
            assert await conn.recv(2) == b"\x05\x00"
            assert await conn.reply() == 0
            await conn.echo_check()
    async with connect(int(forward.group(1))) as conn:
        await conn.echo_check()
