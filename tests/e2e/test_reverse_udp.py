"""Reverse UDP (``-R .../udp``) end to end: real wstun-server and wstun-client processes.

app --UDP--> wstun-server's port --data channel (one per flow)--> wstun-client --UDP--> service

The "laptop" services are dnsmasq (queried with dig on the server's port)
and a UDP echo in this process; the application sends to the port the
server listens on for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
from pathlib import Path

from .conftest import Process, UdpEcho, Wstun
from .test_pre_upgrade import back_to, fd_count
from .test_udp import (
    MAX_DATAGRAM,
    TXT_STRINGS,
    UDP_TIMEOUT,
    counts,
    dig_a,
    dig_big_txt,
    distinct_udp_ports,
    exchange,
    expect_echo,
    flow_lines,
    nothing_pending,
    sender,
    start_dnsmasq,
    timeouts,
    udp_sockets_closed,
    udp_sockets_to,
)

TIMEOUT = 20.0
ALLOCATED = r"reverse 127\.0\.0\.1:(\d+)/udp on the server -> "


async def reverse_udp(
    wstun: Wstun,
    service: int,
    *server_args: str,
    client_args: tuple[str, ...] = (),
    allow: str = "127.0.0.1:*/udp",
) -> tuple[Process, Process, int]:
    """A server allowing ``allow`` and a client with ``-R 0:127.0.0.1:service/udp``, both
    with a short --udp-timeout; returns both and the server's UDP port for the client."""
    server, sport = await wstun.server("--allow-listen", allow, *timeouts(), *server_args)
    client = wstun.spawn(
        [
            wstun.client_cmd,
            "-R",
            f"0:127.0.0.1:{service}/udp",
            f"ws://127.0.0.1:{sport}/",
            *timeouts(),
            *client_args,
        ]
    )
    (match,) = await client.wait_for(ALLOCATED)
    return server, client, int(match.group(1))


def assert_reverse_flows(flows: list[dict[str, str]]) -> None:
    for flow in flows:
        assert flow["kind"] == "reverse", flow
        assert flow["end"] in ("timeout", "closed"), flow
        assert (flow["dropped_up"], flow["dropped_down"]) == ("0", "0"), flow


# ------------------------------------------------------------ real DNS peers


async def test_dig_through_a_reverse_udp_port(wstun: Wstun, tmp_path: Path) -> None:
    """dnsmasq on the client's side answers dig on the server's port: an A record and a
    TXT answer over 512 bytes (EDNS0, not truncated), each one flow, logged on both sides
    with the same counts."""
    _dnsmasq, dns_port = await start_dnsmasq(wstun, tmp_path)
    server, client, port = await reverse_udp(wstun, dns_port)

    assert await dig_a(port, "internal.example") == "10.1.2.3"
    strings, size = await dig_big_txt(port)
    assert strings == TXT_STRINGS
    assert size > 512

    client_flows = await flow_lines(client, "c", 2)
    server_flows = await flow_lines(server, "s", 2)
    assert_reverse_flows(client_flows + server_flows)
    for flow in client_flows:
        assert flow["target"] == f"127.0.0.1:{dns_port}/udp", flow
    by_peer = {flow["peer"]: flow for flow in server_flows}
    for flow in client_flows:
        # The application's address as the server saw it, on both sides.
        assert counts(by_peer[flow["peer"]]) == counts(flow)
        assert (flow["datagrams_up"], flow["datagrams_down"]) == ("1", "1"), flow
    assert sorted(int(flow["down"]) for flow in client_flows)[-1] == size


async def test_fifty_concurrent_digs_from_fifty_ports(wstun: Wstun, tmp_path: Path) -> None:
    """50 sources at once on the server's port, with 2 idle data channels to start from:
    the server asks for more (demand), and every query gets its answer on the first try."""
    dnsmasq, dns_port = await start_dnsmasq(wstun, tmp_path)
    server, client, port = await reverse_udp(wstun, dns_port, "--connect-timeout", "15")
    queries = 50
    sources = distinct_udp_ports(queries)

    async def one(i: int) -> None:
        if i % 2:
            strings, size = await dig_big_txt(port, sources[i])
            assert (strings, size > 512) == (TXT_STRINGS, True)
        else:
            assert await dig_a(port, f"n{i}.internal.example", sources[i]) == "10.1.2.3"

    await asyncio.gather(*(one(i) for i in range(queries)))

    server_flows = await flow_lines(server, "s", queries)
    client_flows = await flow_lines(client, "c", queries)
    assert {flow["peer"] for flow in server_flows} == {f"127.0.0.1:{p}" for p in sources}
    assert_reverse_flows(client_flows + server_flows)
    for i in range(0, queries, 2):
        assert len(dnsmasq.matches(rf"query\[A\] n{i}\.internal\.example from")) == 1
    assert len(dnsmasq.matches(r"query\[TXT\] big\.example from")) == queries // 2


# ------------------------------------------------------------ datagrams


async def test_datagrams_whole_once_and_in_order_and_flows_never_mix(
    wstun: Wstun, udp_echo: UdpEcho
) -> None:
    """Empty to 65,507-byte datagrams come back whole, once and in order, from three
    sources interleaved; each source gets its own echoes only."""
    _server, client, port = await reverse_udp(wstun, udp_echo.port)
    rng = random.Random(12)
    lengths = [0, 1, 512, 1472, 9000, MAX_DATAGRAM, 0, 60_000, 3]

    def run() -> None:
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(sender(port)) for _ in range(3)]
            for length in lengths:
                for sock in socks:
                    payload = rng.randbytes(length)
                    sock.send(payload)
                    expect_echo(sock, payload)
            for sock in socks:
                mark = b"sentinel" + rng.randbytes(16)
                sock.send(mark)
                expect_echo(sock, mark)
                assert nothing_pending(sock)

    await asyncio.to_thread(run)
    # Three flows, three sockets to the service: one per source.
    assert len(udp_echo.sources) == 3
    client_flows = await flow_lines(client, "c", 3)
    for flow in client_flows:
        assert int(flow["datagrams_up"]) == int(flow["datagrams_down"]) == len(lengths) + 1


async def test_datagrams_sent_before_the_client_answers_are_not_lost(
    wstun: Wstun, udp_echo: UdpEcho
) -> None:
    """A source's first burst (sent before any channel answered) arrives whole: the
    server queues it and sends it ahead with the open."""
    server, _client, port = await reverse_udp(wstun, udp_echo.port)

    def burst() -> None:
        with sender(port) as sock:
            payloads = [bytes([i]) * (100 + i) for i in range(20)]
            for payload in payloads:
                sock.send(payload)
            for payload in payloads:
                expect_echo(sock, payload)

    await asyncio.to_thread(burst)
    (flow,) = await flow_lines(server, "s")
    assert (flow["datagrams_up"], flow["datagrams_down"]) == ("20", "20"), flow


# ------------------------------------------------------------ the end of a flow


async def test_flow_timeout_closes_both_ends_and_frees_the_clients_socket(
    wstun: Wstun, udp_echo: UdpEcho
) -> None:
    """After --udp-timeout both sides log the flow's end, the client's socket to the
    service is closed and both processes are back to their descriptor counts; the port
    takes a new flow after."""
    server, client, port = await reverse_udp(wstun, udp_echo.port)
    assert await exchange(port, b"warm") == b"warm"  # the data channels are settled after
    await flow_lines(client, "c")
    await flow_lines(server, "s")
    server_baseline, client_baseline = fd_count(server), fd_count(client)

    assert await exchange(port, b"ping") == b"ping"
    assert udp_sockets_to(client, udp_echo.port) == 1

    (_, client_flow) = await flow_lines(client, "c", 2)
    (_, server_flow) = await flow_lines(server, "s", 2)
    assert "timeout" in (client_flow["end"], server_flow["end"])
    assert float(client_flow["duration"].rstrip("s")) >= UDP_TIMEOUT * 0.9
    assert counts(client_flow) == counts(server_flow)
    assert await udp_sockets_closed(client, udp_echo.port) == 0
    assert await back_to(server, server_baseline) <= server_baseline
    assert await back_to(client, client_baseline) <= client_baseline


async def test_a_service_not_listening_is_counted_and_the_flow_goes_on(wstun: Wstun) -> None:
    """The service's port is closed (ICMP port unreachable): the flow is not ended by it,
    the client counts it, and the flow ends by its timeout."""
    (dead,) = distinct_udp_ports(1)
    _server, client, port = await reverse_udp(wstun, dead)
    with sender(port) as sock:
        for _ in range(3):
            sock.send(b"anyone?")
        (flow,) = await flow_lines(client, "c")
    assert flow["end"] == "timeout", flow
    assert int(flow["unreachable"]) >= 1, flow
    assert int(flow["datagrams_up"]) == 3, flow


async def test_client_sigterm_ends_flows_at_once_and_frees_the_port(
    wstun: Wstun, udp_echo: UdpEcho
) -> None:
    """SIGTERM on the client: an open flow ends at once (not after --udp-timeout), the
    lease is released and the port is free for another client."""
    server, client, port = await reverse_udp(wstun, udp_echo.port, client_args=timeouts(60))
    assert await exchange(port, b"ping") == b"ping"
    assert client.stop(signal.SIGTERM, timeout=5) == 0
    (flow,) = await flow_lines(client, "c")
    assert flow["end"] == "closed", flow
    await server.wait_for(r"reverse 127\.0\.0\.1:\d+/udp: port closed \(released by the client\)")
    again = wstun.spawn(
        [wstun.client_cmd, "-R", f"{port}:127.0.0.1:{udp_echo.port}/udp", client.argv[3]]
    )
    await again.wait_for(ALLOCATED.replace(r"(\d+)", str(port)))
    assert await exchange(port, b"again") == b"again"


async def test_server_drain_ends_flows_at_once(wstun: Wstun, udp_echo: UdpEcho) -> None:
    """SIGTERM on the server: its UDP port closes and the flow ends at once on both sides
    (the server exits well within its --grace)."""
    server, client, port = await reverse_udp(
        wstun, udp_echo.port, "--grace", "30", "--udp-timeout", "60", client_args=timeouts(60)
    )
    assert await exchange(port, b"ping") == b"ping"
    server.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.popen.wait, 10) == 0
    (flow,) = await flow_lines(client, "c")
    assert flow["end"] == "closed", flow
    await client.wait_for(r"reverse 127\.0\.0\.1:\d+/udp lost: 1001 server is shutting down")


# ------------------------------------------------------------ policy and ports


async def test_a_tcp_listen_rule_does_not_allow_udp_and_the_reverse(wstun: Wstun) -> None:
    """``--allow-listen 127.0.0.1:*`` is TCP only: -R .../udp is refused (403, said, the
    client exits 1); a ``/udp`` rule doesn't allow a TCP -R either."""
    _server, sport = await wstun.server("--allow-listen", "127.0.0.1:*")
    client = wstun.spawn([wstun.client_cmd, "-R", "0:127.0.0.1:53/udp", f"ws://127.0.0.1:{sport}/"])
    await client.wait_for(r"403 listening not allowed: 127\.0\.0\.1:0/udp; this forward stops")
    assert await asyncio.to_thread(client.popen.wait, TIMEOUT) == 1

    _server, sport = await wstun.server("--allow-listen", "127.0.0.1:*/udp")
    client = wstun.spawn([wstun.client_cmd, "-R", "0:127.0.0.1:53", f"ws://127.0.0.1:{sport}/"])
    await client.wait_for(r"403 listening not allowed: 127\.0\.0\.1:0; this forward stops")
    assert await asyncio.to_thread(client.popen.wait, TIMEOUT) == 1


async def test_tcp_and_udp_on_the_same_port_are_two_leases(wstun: Wstun, udp_echo: UdpEcho) -> None:
    """-R PORT for TCP and -R PORT/udp are separate listeners: both work at once, from
    one client or from two."""
    (port,) = distinct_udp_ports(1, tcp_too=True)

    async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    tcp_service = await asyncio.start_server(tcp_echo, "127.0.0.1", 0)
    tcp_port = tcp_service.sockets[0].getsockname()[1]
    try:
        _server, sport = await wstun.server(
            "--allow-listen", f"127.0.0.1:{port}", "--allow-listen", f"127.0.0.1:{port}/udp"
        )
        client = wstun.spawn(
            [
                wstun.client_cmd,
                "-R",
                f"{port}:127.0.0.1:{tcp_port}",
                "-R",
                f"{port}:127.0.0.1:{udp_echo.port}/udp",
                f"ws://127.0.0.1:{sport}/",
            ]
        )
        await client.wait_for(rf"reverse 127\.0\.0\.1:{port}/udp on the server")
        await client.wait_for(rf"reverse 127\.0\.0\.1:{port} on the server")
        assert await exchange(port, b"datagram") == b"datagram"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"stream")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"stream"
        writer.close()
    finally:
        tcp_service.close()


async def test_a_udp_port_another_process_holds_is_a_clear_409(wstun: Wstun) -> None:
    """The server's bind fails (another process has the UDP port): 409 address in use,
    retried, and the forward comes up once the port is free."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    _server, sport = await wstun.server("--allow-listen", "127.0.0.1:*/udp")
    client = wstun.spawn(
        [wstun.client_cmd, "-R", f"{port}:127.0.0.1:9/udp", f"ws://127.0.0.1:{sport}/"]
    )
    await client.wait_for(rf"409 can't listen on 127\.0\.0\.1:{port}/udp: address in use; retrying")
    holder.close()
    await client.wait_for(rf"reverse 127\.0\.0\.1:{port}/udp on the server", timeout=TIMEOUT)
