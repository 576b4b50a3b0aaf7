"""/metrics on both sides counts a known workload exactly (payload only, no framing)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from .conftest import Wstun, free_port, scrape

TIMEOUT = 60.0
CLOSED = r"tunnel closed id={side}\d+ "
# (client application -> target, target -> client application) payload sizes
WORKLOAD = [(1_000, 0), (196_615, 5), (1 << 20, 2 << 20)]


async def test_counts_match_a_known_workload(wstun: Wstun, target) -> None:
    """3 tunnels with known payloads and one refusal: every counter matches, on both sides."""
    answers = iter(size for _, size in WORKLOAD)
    received: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(len(await reader.read()))
        writer.write(os.urandom(next(answers)))
        await writer.drain()
        writer.close()

    port = await target(handler)
    server, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0"
    )
    closed = free_port()
    client = wstun.spawn(
        [wstun.client_cmd, f"ws://127.0.0.1:{sport}/", "--metrics-listen", "127.0.0.1:0",
         "-L", f"0:127.0.0.1:{port}", "-L", f"0:127.0.0.1:{closed}"]
    )  # fmt: skip
    forwards = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) -> (\S+)", count=2)
    local = {m.group(2): int(m.group(1)) for m in forwards}
    for up, down in WORKLOAD:  # one after the other, so answers match requests
        reader, writer = await asyncio.open_connection("127.0.0.1", local[f"127.0.0.1:{port}"])
        writer.write(os.urandom(up))
        writer.write_eof()
        assert len(await asyncio.wait_for(reader.read(), TIMEOUT)) == down
        writer.close()
    with contextlib.suppress(ConnectionResetError):  # a refused tunnel resets the app
        _, writer = await asyncio.open_connection("127.0.0.1", local[f"127.0.0.1:{closed}"])
        writer.close()
    await client.wait_for(r"refused: 403")

    await server.wait_for(CLOSED.format(side="s"), count=3)
    await client.wait_for(CLOSED.format(side="c"), count=3)
    assert received == [up for up, _ in WORKLOAD]
    ups, downs = sum(up for up, _ in WORKLOAD), sum(down for _, down in WORKLOAD)
    for process, side in ((server, "server"), (client, "client")):
        metrics = Metrics(await scrape(process), side)
        assert metrics.value("tunnels_opened_total", kind="forward", proto="tcp") == 3
        assert metrics.value("tunnels_active", kind="forward", proto="tcp") == 0
        assert metrics.value("tunnels_ended_total", kind="forward", proto="tcp", end="eof") == 3
        assert metrics.value("tunnels_ended_total", kind="forward", proto="tcp", end="error") == 0
        assert (
            metrics.value("payload_bytes_total", kind="forward", proto="tcp", direction="up") == ups
        )
        assert (
            metrics.value("payload_bytes_total", kind="forward", proto="tcp", direction="down")
            == downs
        )
        assert metrics.value("handshake_failures_total", status="403") == 1
    server_metrics = Metrics(await scrape(server), "server")
    assert server_metrics.value("target_dial_seconds_count") == 3


class Metrics:
    """Scraped samples of one side, looked up by short name and labels."""

    def __init__(self, samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], side: str):
        self.samples, self.side = samples, side

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(f"wstun_{self.side}_{name}", tuple(sorted(labels.items())))]


async def test_metrics_are_off_by_default_and_only_on_their_own_port(wstun: Wstun) -> None:
    """No metrics listener unless asked; the tunnel port doesn't serve /metrics."""
    server, sport = await wstun.server()
    assert not server.matches("metrics on")
    reader, writer = await asyncio.open_connection("127.0.0.1", sport)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), TIMEOUT)
    writer.close()
    assert status.split()[1] in (b"404", b"426")


async def socks_connect(
    port: int, target_port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 CONNECT to 127.0.0.1:target_port through the -D port; returns the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + target_port.to_bytes(2, "big"))
    reply = await asyncio.wait_for(reader.readexactly(10), TIMEOUT)
    assert reply[1] == 0, f"SOCKS5 reply {reply[1]:#04x}"
    return reader, writer


async def test_socks_tunnels_are_counted_like_forwards(wstun: Wstun, target) -> None:
    """-D tunnels show in the client's metrics with their exact payload counts."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data * 2)
        await writer.drain()
        writer.close()

    port = await target(handler)
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    client = wstun.spawn(
        [wstun.client_cmd, f"ws://127.0.0.1:{sport}/", "--metrics-listen", "127.0.0.1:0",
         "-D", "0"]
    )  # fmt: skip
    (match,) = await client.wait_for(r"SOCKS5 proxy on 127\.0\.0\.1:(\d+)")
    sizes = [10, 70_000]
    for size in sizes:
        reader, writer = await socks_connect(int(match.group(1)), port)
        writer.write(os.urandom(size))
        writer.write_eof()
        assert len(await asyncio.wait_for(reader.read(), TIMEOUT)) == 2 * size
        writer.close()
    await client.wait_for(CLOSED.format(side="c"), count=len(sizes))
    metrics = Metrics(await scrape(client), "client")
    assert metrics.value("tunnels_opened_total", kind="forward", proto="tcp") == len(sizes)
    assert metrics.value("tunnels_ended_total", kind="forward", proto="tcp", end="eof") == len(
        sizes
    )
    assert metrics.value("payload_bytes_total", kind="forward", proto="tcp", direction="up") == sum(
        sizes
    )
    assert metrics.value(
        "payload_bytes_total", kind="forward", proto="tcp", direction="down"
    ) == 2 * sum(sizes)
