"""The real client address: X-Forwarded-For from a trusted proxy, ignored from anyone else.

nginx connects to wstun-server from 127.0.0.2 (proxy_bind), so the proxy's
address and the client's (127.0.0.1) differ on loopback.
"""

from __future__ import annotations

import asyncio

import pytest

from .conftest import Nginx, Wstun, echo_target, scrape

TIMEOUT = 60.0
PROXY_ADDRESS = "127.0.0.2"


async def one_tunnel(local: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", local)
    writer.write(b"ping")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"ping"
    writer.close()


@pytest.mark.parametrize(
    ("trusted", "client_header", "expected_peer"),
    [
        # nginx appends the client's address; that is the client.
        ((f"{PROXY_ADDRESS}/32",), None, "127.0.0.1:0"),
        # A client behind a trusted proxy can't forge its address: the walk stops
        # at the first untrusted hop from the right (the client itself).
        ((f"{PROXY_ADDRESS}/32",), "203.0.113.9", "127.0.0.1:0"),
        # Two trusted hops (an outer proxy at 127.0.0.1, then nginx): the address
        # the outer proxy forwarded is the client.
        ((f"{PROXY_ADDRESS}/32", "127.0.0.1/32"), "203.0.113.9", "203.0.113.9:0"),
    ],
    ids=["forwarded", "forged-behind-proxy", "two-trusted-hops"],
)
async def test_trusted_proxy_states_the_client_address(
    wstun: Wstun, nginx: Nginx, target, trusted, client_header, expected_peer
) -> None:
    """Via trusted nginx, the logged client address is the forwarded one, and metrics say so."""
    port = await target(echo_target())
    trust = [arg for net in trusted for arg in ("--trusted-proxy", net)]
    server, sport = await wstun.server(
        "--path", "/tunnel", "--allow", f"127.0.0.1:{port}", *trust,
        "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    nport = await nginx.start(sport, http_extra=f"proxy_bind {PROXY_ADDRESS};")
    header = ("--header", f"X-Forwarded-For: {client_header}") if client_header else ()
    # --pool 0: exactly two requests to count, no idle WebSockets opened ahead.
    client, local = await wstun.client(
        f"ws://127.0.0.1:{nport}/tunnel/", f"127.0.0.1:{port}", *header, "--pool", "0"
    )
    await client.wait_for(r"server ok")  # the client's check at startup: a request too

    await one_tunnel(local)

    (line,) = await server.wait_for(r"tunnel closed id=s\d+ peer=(\S+) ")
    assert line.group(1) == expected_peer
    metrics = await scrape(server)
    source = (("source", "x-forwarded-for"),)
    assert metrics[("wstun_server_client_address_total", source)] == 2  # check + tunnel
    assert metrics[("wstun_server_client_address_total", (("source", "peer"),))] == 0


async def test_forged_headers_from_an_untrusted_peer_are_ignored(wstun: Wstun, target) -> None:
    """A client talking to the server directly can't choose its logged address."""
    port = await target(echo_target())
    server, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--trusted-proxy", f"{PROXY_ADDRESS}/32",
        "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    client, local = await wstun.client(
        f"ws://127.0.0.1:{sport}/",
        f"127.0.0.1:{port}",
        "--header", "X-Forwarded-For: 203.0.113.9",
        "--header", "X-Real-IP: 198.51.100.1",
        "--pool", "0",  # exactly two requests to count
    )  # fmt: skip
    await client.wait_for(r"server ok")  # the client's check at startup: a request too

    await one_tunnel(local)

    (line,) = await server.wait_for(r"tunnel closed id=s\d+ peer=127\.0\.0\.1:(\d+) ")
    assert int(line.group(1)) > 0  # the TCP peer's own port: not a forwarded address
    assert "203.0.113.9" not in server.log
    assert "198.51.100.1" not in server.log
    metrics = await scrape(server)
    assert metrics[("wstun_server_client_address_total", (("source", "peer"),))] == 2
    assert metrics[("wstun_server_client_address_total", (("source", "x-forwarded-for"),))] == 0
