"""WebSocketDialer's words for a failed connect, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import errno

import pytest

from wstun.client.config import ClientConfig
from wstun.client.diagnose import proxy_for
from wstun.client.dialer import WebSocketDialer
from wstun.common.streams.internals import environment_proxy


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
    ],
    ids=["refused", "net-unreachable", "host-unreachable"],
)
async def test_a_connect_that_never_connected_sends_no_scheme_probe(error: OSError) -> None:
    """When the TCP connect itself failed, nothing answered that could be the wrong
    scheme: the dialer must not send the port a TLS ClientHello to ask (a plain server
    that came back meanwhile would log a TLS handshake from a ws:// client)."""
    connections: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dialer = WebSocketDialer(ClientConfig(url=f"ws://127.0.0.1:{port}/", proxy=None))
        explained = await dialer._explain(error)
    finally:
        server.close()
        await server.wait_closed()
    assert explained.status == 0
    assert explained.reason.startswith("can't reach server: ")
    # A probe is awaited inside _explain, and waits for the port's answer: had one been
    # sent, the listener would have recorded it by now.
    assert connections == []


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({"https_proxy": "http://127.0.0.1:3128"}, "wss://tunnel.test/", "http://127.0.0.1:3128"),
        ({"http_proxy": "http://127.0.0.1:3128"}, "ws://tunnel.test/", "http://127.0.0.1:3128"),
        ({"http_proxy": "http://127.0.0.1:3128"}, "wss://tunnel.test/", None),
        (
            {"https_proxy": "http://127.0.0.1:3128", "socks_proxy": "socks5h://127.0.0.1:1080"},
            "wss://tunnel.test/",
            "socks5h://127.0.0.1:1080",
        ),
        (
            {"https_proxy": "http://127.0.0.1:3128", "no_proxy": "tunnel.test"},
            "wss://tunnel.test/",
            None,
        ),
    ],
)
def test_the_startup_check_and_tunnels_take_one_proxy_rule(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str, expected: str | None
) -> None:
    """The proxy from the environment is the same for the startup check, the scheme
    probes and the tunnels (websockets' rule: a SOCKS proxy first)."""
    for name in ("http_proxy", "https_proxy", "socks_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(url, True) == expected
    assert environment_proxy(url) == expected


async def test_the_startup_check_does_not_go_around_a_socks_proxy() -> None:
    """With a SOCKS proxy the check, which speaks HTTP CONNECT only, is skipped and
    says so, rather than going to the server directly where tunnels won't."""
    dialer = WebSocketDialer(
        ClientConfig(url="ws://tunnel.test/", proxy="socks5h://user:secret@127.0.0.1:1")
    )
    said = await dialer.probe()
    assert said == "server not checked at startup (through the SOCKS proxy socks5h://127.0.0.1:1)"
