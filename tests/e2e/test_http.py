"""What wstun-server answers over plain HTTP: statuses and one-line reasons."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from .conftest import Wstun, echo_target, free_port

TOKEN = "e2e-token"


async def request(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """Send one GET and return the status and the body (for non-101 answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, ""
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, (await reader.readexactly(length)).decode()
    finally:
        writer.close()


async def refused(local: int) -> None:
    """As an application: a connection the client can't tunnel ends without data (the
    reset may come so fast that it fails the connect call already)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
    except ConnectionResetError:
        return
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        pass
    finally:
        writer.close()


def upgrade(token: str | None = TOKEN) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@pytest.fixture
async def server(wstun: Wstun, target, tmp_path: Path) -> tuple[int, int, int]:
    """A server at /tunnel with a token, allowing an open and a closed port."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    open_port = await target(handler)
    closed_port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    _, port = await wstun.server(
        "--path", "/tunnel", "--token-file", str(token_file),
        "--allow", f"127.0.0.1:{open_port}", "--allow", f"127.0.0.1:{closed_port}",
    )  # fmt: skip
    return port, open_port, closed_port


@pytest.mark.parametrize(
    ("path", "headers", "status", "reason"),
    [
        ("/healthz", {}, 200, "ok"),
        ("/tunnel/healthz", {}, 200, "ok"),
        (
            "/other?to=127.0.0.1:{open}",
            upgrade(),
            404,
            "no tunnel endpoint at /other; the tunnel endpoint is /tunnel",
        ),
        ("/tunnel?to=127.0.0.1:{open}", {}, 426, "upgrade required"),
        (
            "/tunnel?to=127.0.0.1:{open}",
            upgrade(None),
            401,
            "missing bearer token: this server needs one; give the client --token-file FILE "
            "or set WSTUN_TOKEN",
        ),
        ("/tunnel?to=127.0.0.1:{open}", upgrade("wrong"), 401, "invalid token: the client's"),
        ("/tunnel?to=nohost", upgrade(), 400, "bad target: expected HOST:PORT"),
        ("/tunnel?to=127.0.0.1:0", upgrade(), 400, "between 1 and 65535"),
        ("/tunnel", upgrade(), 400, "no target"),
        ("/tunnel?to=127.0.0.1:1", upgrade(), 403, "target not allowed: 127.0.0.1:1"),
        ("/tunnel?to=127.0.0.1:1", upgrade(), 403, "(no rule allows port 1)"),
        ("/tunnel?to=127.0.0.1:{closed}", upgrade(), 502, "connection refused"),
        ("/tunnel?to=127.0.0.1:{open}", upgrade(), 101, ""),
        ("/tunnel/?to=127.0.0.1:{open}", upgrade(), 101, ""),
    ],
)
async def test_status_and_reason(
    server: tuple[int, int, int], path: str, headers: dict[str, str], status: int, reason: str
) -> None:
    """Each refusal is its HTTP status with a one-line reason; good requests upgrade."""
    port, open_port, closed_port = server
    got_status, body = await request(port, path.format(open=open_port, closed=closed_port), headers)
    assert got_status == status
    assert reason in body
    if body:
        assert body.count("\n") == 1
        assert body.endswith("\n")


async def test_dial_timeout_is_504(wstun: Wstun, unanswering_port: int) -> None:
    """A target that never accepts within --connect-timeout gets 504 with the reason."""
    _, port = await wstun.server(
        "--allow", f"127.0.0.1:{unanswering_port}", "--connect-timeout", "0.5"
    )
    status, body = await request(port, f"/?to=127.0.0.1:{unanswering_port}", upgrade(None))
    assert status == 504
    assert body == f"target 127.0.0.1:{unanswering_port} did not answer within 0.5s\n"


async def test_refusals_read_well_on_the_client(wstun: Wstun, target, tmp_path) -> None:
    """The client's failure line carries the server's way out: the token, the name rule."""
    port = await target(echo_target())
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server, sport = await wstun.server(
        "--token-file", str(token_file), "--allow", f"localhost:{port}"
    )
    # No token: the line says how to give one.
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    await refused(local)
    (line,) = await client.wait_for(r"WARNING wstun\.client: (tunnel to .*)")
    assert line.group(1) == (
        f"tunnel to 127.0.0.1:{port} refused: 401 missing bearer token: this server needs "
        "one; give the client --token-file FILE or set WSTUN_TOKEN"
    )
    # An address under a rule that names the host: the line says why.
    env = {**os.environ, "WSTUN_TOKEN": TOKEN}
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", env=env)
    await refused(local)
    (line,) = await client.wait_for(r"WARNING wstun\.client: (tunnel to .*)")
    assert line.group(1) == (
        f"tunnel to 127.0.0.1:{port} refused: 403 target not allowed: 127.0.0.1:{port} (the "
        f"rules for port {port} name hosts, and an address is allowed only by an address or "
        "network rule: ask with the host's name)"
    )
    # The rules themselves are in the server's log only.
    await server.wait_for(rf"rejected .*status=403 .*\(allow localhost:{port}; deny \(none\)\)")


async def test_startup_says_who_may_connect_and_what_to(wstun: Wstun, tmp_path) -> None:
    """The server's first lines say whether a token is needed and how many rules there are."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server, _ = await wstun.server("--token-file", str(token_file), "--allow", "db:5432")
    await server.wait_for(r"INFO wstun\.server: token required: clients send it with")
    await server.wait_for(r"INFO wstun\.server: targets: 1 allow rule\(s\), 0 deny rule\(s\)")
    open_server, _ = await wstun.server("--to", "127.0.0.1:1")
    await open_server.wait_for(r"WARNING wstun\.server: no token: anyone who reaches this port")
    await open_server.wait_for(r"targets: 1 allow rule\(s\), 0 deny rule\(s\), default target")


async def test_startup_check_of_the_server(wstun: Wstun, target, tmp_path) -> None:
    """The client checks the server once at startup, opening no tunnel: up, refusing, down."""
    dialled: list[bytes] = []
    port = await target(echo_target(dialled))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server, sport = await wstun.server(
        "--path", "/tunnel", "--token-file", str(token_file), "--allow", f"127.0.0.1:{port}"
    )
    url = f"ws://127.0.0.1:{sport}/tunnel/"
    env = {**os.environ, "WSTUN_TOKEN": TOKEN}
    good, _ = await wstun.client(url, f"127.0.0.1:{port}", env=env)
    await good.wait_for(r"INFO wstun\.client: server ok \(ok: token accepted\)")
    bad, _ = await wstun.client(url, f"127.0.0.1:{port}", env={**env, "WSTUN_TOKEN": "wrong"})
    (line,) = await bad.wait_for(r"WARNING wstun\.client: (server check .*)")
    assert line.group(1) == (
        "server check refused: 401 invalid token: the client's --token-file or WSTUN_TOKEN "
        "holds another token than the server's; tunnels will be tried anyway"
    )
    wrong_path, _ = await wstun.client(f"ws://127.0.0.1:{sport}/other/", f"127.0.0.1:{port}")
    (line,) = await wrong_path.wait_for(r"WARNING wstun\.client: (server check .*)")
    assert "404 no tunnel endpoint at /other/healthz; the tunnel endpoint is /tunnel" in line[1]
    down, _ = await wstun.client(f"ws://127.0.0.1:{free_port()}/", f"127.0.0.1:{port}")
    (line,) = await down.wait_for(r"WARNING wstun\.client: (server check .*)")
    assert line.group(1).startswith("server check failed: can't reach server: connection refused")
    # None of the checks opened a tunnel or dialled the target.
    assert not server.matches("tunnel closed")
    assert dialled == []
    for client in (good, bad, wrong_path, down):
        assert client.popen.poll() is None  # a failed check doesn't stop the client


async def test_quiet_and_verbose(wstun: Wstun) -> None:
    """-q leaves warnings only; -v adds debug lines (here the refused tunnel's report)."""
    url = f"ws://127.0.0.1:{free_port()}/"
    quiet = wstun.spawn([wstun.client_cmd, "-q", "-L", "0:db:5432", url])
    await quiet.wait_for(r"WARNING wstun\.client: server check failed")
    assert " INFO " not in quiet.log
    verbose = wstun.spawn([wstun.client_cmd, "-v", "-L", "0:db:5432", url])
    (match,) = await verbose.wait_for(r"INFO wstun\.client: forwarding 127\.0\.0\.1:(\d+) ")
    await refused(int(match.group(1)))
    await verbose.wait_for(r"DEBUG wstun\.client: tunnel closed .* end=refused")
