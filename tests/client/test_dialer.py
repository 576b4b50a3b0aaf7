"""WebSocketDialer's words for a failed connect, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import errno

import pytest

from wstun.client.config import ClientConfig
from wstun.client.dialer import WebSocketDialer


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
