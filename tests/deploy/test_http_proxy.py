"""An HTTP CONNECT egress proxy (real tinyproxy) carries the client's WebSocket."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from .conftest import TINYPROXY, Wstun, echo_target, find_peer, free_port, wait_listening

TIMEOUT = 60.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "ws_proxy", "wss_proxy", "all_proxy", "no_proxy")


class Tinyproxy:
    def __init__(self, log: Path, port: int) -> None:
        self.log_file, self.port = log, port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


async def start_tinyproxy(wstun: Wstun, directory: Path, connect_port: int) -> Tinyproxy:
    """tinyproxy on 127.0.0.1 allowing CONNECT to ``connect_port`` only."""
    port = free_port()
    log = directory / "tinyproxy.log"
    conf = directory / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
        f"ConnectPort {connect_port}\nLogLevel Info\n"
        f'LogFile "{log}"\nPidFile "{directory / "tinyproxy.pid"}"\n'
    )
    wstun.spawn([find_peer(TINYPROXY), "-d", "-c", str(conf)])
    await wait_listening(port)
    return Tinyproxy(log, port)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without proxy variables (either case), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    return {**env, **extra}


async def echo_once(local: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()


@pytest.mark.parametrize("how", ["--proxy", "HTTP_PROXY", "HTTPS_PROXY"])
async def test_connect_proxy_carries_the_websocket(
    wstun: Wstun, target, tmp_path: Path, how: str
) -> None:
    """Through tinyproxy, from --proxy or the environment: the tunnel works, the proxy saw it."""
    port = await target(echo_target())
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    proxy = await start_tinyproxy(wstun, tmp_path, sport)
    args: tuple[str, ...] = ("--proxy", proxy.url) if how == "--proxy" else ()
    env = clean_env() if how == "--proxy" else clean_env(**{how: proxy.url})
    client, local = await wstun.client(
        f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", *args, env=env
    )

    payload = os.urandom(200_000)
    assert await echo_once(local, payload) == payload
    assert f"CONNECT 127.0.0.1:{sport}" in proxy.log
    # The startup check went the same way, through the proxy.
    await client.wait_for(r"INFO wstun\.client: server ok \(ok: no token needed\)")


async def test_proxy_refusing_the_port_is_a_clear_failure(
    wstun: Wstun, target, tmp_path: Path
) -> None:
    """A proxy that refuses CONNECT to the server's port: the client says so, nothing is sent."""
    accepted: list[bytes] = []
    port = await target(echo_target(accepted))
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    proxy = await start_tinyproxy(wstun, tmp_path, free_port())
    client, local = await wstun.client(
        f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "--proxy", proxy.url, env=clean_env()
    )

    assert await echo_once(local, b"hello") in (b"", b"<reset>")
    await client.wait_for(rf"tunnel to 127\.0\.0\.1:{port} failed: proxy failed: .*403")
    assert accepted == []


async def test_no_proxy_bypasses_the_environment_proxy(wstun: Wstun, target) -> None:
    """NO_PROXY naming the server: HTTP_PROXY (a dead port here) is not used."""
    port = await target(echo_target())
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    env = clean_env(HTTP_PROXY=f"http://127.0.0.1:{free_port()}", NO_PROXY="127.0.0.1")
    _, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", env=env)
    assert await echo_once(local, b"direct") == b"direct"


async def test_pooled_websockets_go_through_the_proxy_too(
    wstun: Wstun, target, tmp_path: Path
) -> None:
    """With the proxy from the environment (looked up once), the pool's warm WebSockets
    are CONNECTed through tinyproxy like the first one, and carry later tunnels."""
    port = await target(echo_target())
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    proxy = await start_tinyproxy(wstun, tmp_path, sport)
    client, local = await wstun.client(
        f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "-v", "--pool", "2",
        env=clean_env(HTTP_PROXY=proxy.url),
    )  # fmt: skip
    assert await echo_once(local, b"first") == b"first"
    await client.wait_for(r"pool: ready, \d+ idle")
    for n in range(3):
        assert await echo_once(local, b"again %d" % n) == b"again %d" % n
    await client.wait_for(r"pool: open \S+ on a warm WebSocket", count=3)
    await server.wait_for(r"tunnel closed id=s\d+ .*end=eof", count=4)
    # The check, the first tunnel and at least the two idle WebSockets: all CONNECTs.
    assert proxy.log.count(f"CONNECT 127.0.0.1:{sport}") >= 4
