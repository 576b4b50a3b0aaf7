"""UDP forwarding (``-L .../udp``, ``wstun.udp.v1``) through the real processes on loopback.

app --UDP--> wstun-client --WS (one per source address)--> wstun-server --UDP--> target

Real peers (dnsmasq and dig), datagram properties with hypothesis (whole,
exactly once, in order, flows never mixed), the idle timeout freeing the
server's socket, ICMP port unreachable counted but not fatal, the ``/udp``
policy both ways, and a flood: drops counted, memory bounded, another flow
still quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import re
import shutil
import signal
import socket
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Process, UdpEcho, Wstun, sha
from .test_pre_upgrade import back_to, fd_count

TIMEOUT = 20.0
#: ``--udp-timeout`` for the tests that wait for flows to end.
UDP_TIMEOUT = 1.0
#: Largest UDP payload over IPv4.
MAX_DATAGRAM = 65507
FLOW_LINE = r"flow closed id={side}\d+ proto=udp .* end=\w+"


# Helpers.


def udp_port() -> int:
    """A port free for both UDP and TCP right now (dnsmasq binds both), below the
    ephemeral range: no socket bound to port 0 elsewhere takes it meanwhile."""
    (port,) = distinct_udp_ports(1, tcp_too=True)
    return port


def distinct_udp_ports(count: int, *, tcp_too: bool = False) -> list[int]:
    """``count`` different UDP ports free right now (and TCP ones: ``tcp_too``), below the
    ephemeral range, so that no socket bound to port 0 elsewhere takes one meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = random.SystemRandom().sample(range(10000, low), min(low - 10000, 20 * count))
    ports: list[int] = []
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp_too else (socket.SOCK_DGRAM,)
    for port in candidates:
        try:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    pytest.fail(f"no {count} free UDP ports below {low}")


def flow_fields(match: re.Match[str]) -> dict[str, str]:
    """A ``flow closed`` line's ``key=value`` fields."""
    return dict(re.findall(r"(\w+)=(\S+)", match.string[match.start() :]))


async def flow_lines(process: Process, side: str, count: int = 1) -> list[dict[str, str]]:
    """Wait for ``count`` flow lines from ``process`` (side ``c`` or ``s``); their fields."""
    found = await process.wait_for(FLOW_LINE.format(side=side), count, TIMEOUT)
    return [flow_fields(match) for match in found]


def counts(fields: dict[str, str]) -> dict[str, int]:
    keys = ("up", "down", "datagrams_up", "datagrams_down", "dropped_up", "dropped_down")
    return {key: int(fields[key]) for key in (*keys, "unreachable")}


def udp_sockets_to(process: Process, port: int) -> int:
    """How many of ``process``'s descriptors are UDP sockets connected to 127.0.0.1:port."""
    pid = process.popen.pid
    remote = f"0100007F:{port:04X}"
    inodes = set()
    for row in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = row.split()
        if fields[2] == remote:
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(fd)
            held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


async def udp_sockets_closed(process: Process, port: int, timeout: float = 5.0) -> int:
    """:func:`udp_sockets_to` once it is 0, or after ``timeout`` (a transport closes on
    the loop's turn after its flow's line is out)."""
    deadline = time.monotonic() + timeout
    while (held := udp_sockets_to(process, port)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling a count: there is no event to wait for
    return held


def vm_rss(process: Process) -> int:
    """Resident memory of ``process``, bytes."""
    status = Path(f"/proc/{process.popen.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def sender(port: int, timeout: float = TIMEOUT) -> socket.socket:
    """A blocking UDP socket connected to the client's listener on 127.0.0.1:port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def expect_echo(sock: socket.socket, sent: bytes) -> None:
    """The next datagram on ``sock`` is ``sent``, whole (compared by size and digest)."""
    got = sock.recv(65536)
    assert (len(got), sha(got)) == (len(sent), sha(sent))


def nothing_pending(sock: socket.socket) -> bool:
    """No datagram is waiting on ``sock`` (a check, not a wait)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


async def exchange(port: int, payload: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send one datagram to 127.0.0.1:port from a new socket; the first answer."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        await loop.sock_sendall(sock, payload)
        return await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)


async def udp_tunnel(
    wstun: Wstun,
    target_port: int,
    *,
    server_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = (),
) -> tuple[Process, Process, int]:
    """A server allowing 127.0.0.1:target_port/udp and a client forwarding UDP to it,
    once the client's startup check is done (so fd counts taken after are settled)."""
    server, sport = await wstun.server("--allow", f"127.0.0.1:{target_port}/udp", *server_args)
    client = wstun.spawn(
        [
            wstun.client_cmd,
            "-L",
            f"0:127.0.0.1:{target_port}/udp",
            f"ws://127.0.0.1:{sport}/",
            *client_args,
        ]
    )
    (match,) = await client.wait_for(
        rf"forwarding 127\.0\.0\.1:(\d+)/udp -> 127\.0\.0\.1:{target_port}/udp via ws://"
    )
    await client.wait_for(r"server ok")
    return server, client, int(match.group(1))


def timeouts(seconds: float = UDP_TIMEOUT) -> tuple[str, ...]:
    return ("--udp-timeout", str(seconds))


# 1. dnsmasq and dig: a real DNS server and client through the tunnel.

#: TXT strings of 250 characters each: an answer of about 1 kB, over 512 bytes and under
#: dnsmasq's EDNS0 packet limit (1232 by default in 2.90).
TXT_STRINGS = [
    "".join(random.Random(i).choices(string.ascii_letters + string.digits, k=250)) for i in range(4)
]
DIG_TIMEOUT = 30.0


@dataclasses.dataclass
class Dns:
    server: Process
    client: Process
    dnsmasq: Process
    #: The client's UDP listener: dig's server.
    port: int
    dns_port: int


async def start_dnsmasq(wstun: Wstun, tmp_path: Path) -> tuple[Process, int]:
    """dnsmasq on a loopback port, answering internal.example (A) and big.example (a
    TXT of about 1 kB); the process and its port, once its sockets are bound."""
    for command in ("dnsmasq", "dig"):
        if shutil.which(command) is None:
            pytest.skip(f"{command} is not installed")
    dns_port = udp_port()
    # No quotes: on the command line (no shell), dnsmasq would keep them in the strings.
    txt = ",".join(TXT_STRINGS)
    dnsmasq = wstun.spawn(
        [
            shutil.which("dnsmasq") or "dnsmasq",
            "--no-daemon",  # in the foreground, logging to stderr
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            f"--port={dns_port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--address=/internal.example/10.1.2.3",
            f"--txt-record=big.example,{txt}",
            "--log-queries",
            "--user=root",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ]
    )
    await dnsmasq.wait_for(r"started, version")  # its sockets are bound by then
    return dnsmasq, dns_port


@pytest.fixture
async def dns(wstun: Wstun, tmp_path: Path) -> Dns:
    dnsmasq, dns_port = await start_dnsmasq(wstun, tmp_path)
    server, client, port = await udp_tunnel(
        wstun, dns_port, server_args=timeouts(), client_args=timeouts()
    )
    return Dns(server, client, dnsmasq, port, dns_port)


async def dig(port: int, *args: str, source: int | None = None) -> str:
    """dig @127.0.0.1 -p PORT ARGS, one UDP try, from port ``source`` if given; its
    output (it must succeed)."""
    process = await asyncio.create_subprocess_exec(
        shutil.which("dig") or "dig",
        "@127.0.0.1",
        "-p",
        str(port),
        *(("-b", f"127.0.0.1#{source}") if source is not None else ()),
        "+tries=1",
        "+time=10",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), DIG_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def dig_a(port: int, name: str, source: int | None = None) -> str:
    return (await dig(port, name, "A", "+short", source=source)).strip()


async def dig_big_txt(port: int, source: int | None = None) -> tuple[list[str], int]:
    """The big TXT answer over UDP with EDNS0 (no TCP fallback): its strings, its size."""
    output = await dig(
        port, "big.example", "TXT", "+bufsize=4096", "+notcp", "+ignore", "+stats", source=source
    )
    assert "status: NOERROR" in output, output
    flags = re.search(r";; flags: ([a-z ]+);", output)
    assert flags is not None, output
    assert "tc" not in flags.group(1).split(), output  # not truncated
    assert re.search(rf"SERVER: 127\.0\.0\.1#{port}\(127\.0\.0\.1\) \(UDP\)", output), output
    answer = re.search(r"^big\.example\.\s+\d+\s+IN\s+TXT\s+(.*)$", output, re.MULTILINE)
    assert answer is not None, output
    size = re.search(r"MSG SIZE\s+rcvd: (\d+)", output)
    assert size is not None, output
    return re.findall(r'"([^"]*)"', answer.group(1)), int(size.group(1))


def assert_ended_cleanly(flows: list[dict[str, str]]) -> None:
    for flow in flows:
        assert flow["end"] in ("timeout", "closed"), flow
        assert (int(flow["dropped_up"]), int(flow["dropped_down"])) == (0, 0), flow


async def test_dig_a_record_through_dnsmasq(dns: Dns) -> None:
    """dig's A query gets dnsmasq's address; one flow each side, one datagram each way,
    ended by the idle timeout."""
    assert await dig_a(dns.port, "internal.example") == "10.1.2.3"

    (client_flow,) = await flow_lines(dns.client, "c")
    (server_flow,) = await flow_lines(dns.server, "s")
    assert_ended_cleanly([client_flow, server_flow])
    assert "timeout" in (client_flow["end"], server_flow["end"])
    assert client_flow["target"] == server_flow["target"] == f"127.0.0.1:{dns.dns_port}/udp"
    for flow in (client_flow, server_flow):
        assert (flow["datagrams_up"], flow["datagrams_down"]) == ("1", "1"), flow
    assert counts(client_flow) == counts(server_flow)


async def test_dig_txt_answer_over_512_bytes_with_edns0(dns: Dns) -> None:
    """A TXT answer of about 1 kB comes back whole in one UDP datagram (EDNS0, not
    truncated, no TCP retry); the flow line's down bytes are exactly dig's message size."""
    strings, size = await dig_big_txt(dns.port)

    assert strings == TXT_STRINGS
    assert size > 512
    (client_flow,) = await flow_lines(dns.client, "c")
    (server_flow,) = await flow_lines(dns.server, "s")
    assert_ended_cleanly([client_flow, server_flow])
    assert int(client_flow["down"]) == int(server_flow["down"]) == size
    assert client_flow["datagrams_down"] == server_flow["datagrams_down"] == "1"


async def test_fifty_concurrent_digs_each_get_their_answer(dns: Dns) -> None:
    """50 dig processes at once (50 source ports, 50 flows), A and big TXT queries mixed:
    every answer is right, first try, and each side logs 50 flow lines once idle."""
    queries = 50
    # Each dig from a port of its own: left to itself, a dig may get the port another
    # one has just released, and both then are one flow (one source address), as seen.
    sources = distinct_udp_ports(queries)

    async def one(i: int) -> None:
        if i % 2:
            strings, size = await dig_big_txt(dns.port, sources[i])
            assert (strings, size > 512) == (TXT_STRINGS, True)
        else:
            assert await dig_a(dns.port, f"n{i}.internal.example", sources[i]) == "10.1.2.3"

    await asyncio.gather(*(one(i) for i in range(queries)))

    client_flows = await flow_lines(dns.client, "c", queries)
    server_flows = await flow_lines(dns.server, "s", queries)
    assert len(client_flows) == len(server_flows) == queries
    # One flow per source.
    assert {flow["peer"] for flow in client_flows} == {f"127.0.0.1:{p}" for p in sources}
    assert len({flow["peer"] for flow in server_flows}) == queries  # one WebSocket per flow
    assert_ended_cleanly(client_flows + server_flows)
    for flow in client_flows + server_flows:
        assert (flow["datagrams_up"], flow["datagrams_down"]) == ("1", "1"), flow
    for key in ("up", "down"):
        assert sum(int(f[key]) for f in client_flows) == sum(int(f[key]) for f in server_flows)
    # dnsmasq saw each query exactly once: no retry was needed.
    for i in range(0, queries, 2):
        assert len(dns.dnsmasq.matches(rf"query\[A\] n{i}\.internal\.example from")) == 1
    assert len(dns.dnsmasq.matches(r"query\[TXT\] big\.example from")) == queries // 2


# 2. Datagram properties, with hypothesis, through one tunnel per module.


@dataclasses.dataclass
class EchoTunnel:
    server: Process
    client: Process
    port: int
    echo: UdpEcho


@pytest.fixture(scope="module")
def echo_tunnel() -> Iterator[EchoTunnel]:
    """A server and client started once for the hypothesis tests, to a UDP echo target."""
    echo = UdpEcho()
    runner = Wstun()
    try:
        server = runner.spawn(
            [runner.server_cmd, "--listen", "127.0.0.1:0", "--allow", f"127.0.0.1:{echo.port}/udp"]
        )
        (match,) = server.wait_for_sync(r"listening on 127\.0\.0\.1:(\d+)")
        client = runner.spawn(
            [
                runner.client_cmd,
                "-L",
                f"0:127.0.0.1:{echo.port}/udp",
                f"ws://127.0.0.1:{match.group(1)}/",
            ]
        )
        (match,) = client.wait_for_sync(r"forwarding 127\.0\.0\.1:(\d+)/udp ->")
        yield EchoTunnel(server, client, int(match.group(1)), echo)
    finally:
        # The client first: its shutdown ends its flows at once, while the server's drain
        # would give the still open flows its whole --grace (see the report).
        for process in reversed(runner.processes):
            process.stop()
        echo.close()


PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
sizes = st.integers(min_value=0, max_value=MAX_DATAGRAM)


def sentinel_round_trip(sock: socket.socket, rng: random.Random) -> None:
    """A last unique datagram comes back next and nothing after it: no echo was
    duplicated, or left over, or another flow's."""
    mark = b"sentinel" + rng.randbytes(16)
    sock.send(mark)
    expect_echo(sock, mark)
    assert nothing_pending(sock)


@PROPERTY_SETTINGS
@given(lengths=st.lists(sizes, min_size=1, max_size=20), seed=st.integers(0, 2**32 - 1))
def test_datagrams_arrive_whole_once_and_in_order(
    echo_tunnel: EchoTunnel, lengths: list[int], seed: int
) -> None:
    """One source, one datagram at a time (each waits for its echo, so loopback never
    drops): every datagram, empty to 65,507 bytes, comes back whole, once, in order."""
    rng = random.Random(seed)
    with sender(echo_tunnel.port) as sock:
        for length in lengths:
            payload = rng.randbytes(length)
            sock.send(payload)
            expect_echo(sock, payload)
        sentinel_round_trip(sock, rng)


@pytest.mark.parametrize("seed", range(3))
def test_a_burst_with_empty_datagrams_keeps_its_order(echo_tunnel: EchoTunnel, seed: int) -> None:
    """40 datagrams back to back, a quarter of them empty, none waiting for its echo:
    all come back in order. (Empty ones take websockets' own path at each end, the
    others go straight through, so the two paths must not overtake each other.)"""
    rng = random.Random(seed)
    burst = [
        b"" if rng.random() < 0.25 else rng.randbytes(rng.randrange(1, 900)) for _ in range(40)
    ]
    with sender(echo_tunnel.port) as sock:
        for payload in burst:
            sock.send(payload)
        for payload in burst:
            expect_echo(sock, payload)
        sentinel_round_trip(sock, rng)


@PROPERTY_SETTINGS
@given(
    schedule=st.lists(st.tuples(st.integers(0, 2), sizes), min_size=1, max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_concurrent_flows_never_mix(
    echo_tunnel: EchoTunnel, schedule: list[tuple[int, int]], seed: int
) -> None:
    """Three sources send interleaved datagrams, up to one in flight each (three flows at
    once): each source gets back its own datagrams only, whole and in order."""
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(sender(echo_tunnel.port)) for _ in range(3)]
        in_flight: list[bytes | None] = [None, None, None]
        for source, length in schedule:
            waiting = in_flight[source]
            if waiting is not None:
                expect_echo(socks[source], waiting)
            payload = rng.randbytes(length)
            socks[source].send(payload)
            in_flight[source] = payload
        for sock, waiting in zip(socks, in_flight, strict=True):
            if waiting is not None:
                expect_echo(sock, waiting)
        for sock in socks:
            sentinel_round_trip(sock, rng)


# 3. The idle timeout ends the flow and frees the server's socket.


async def test_flow_timeout_frees_the_servers_socket(wstun: Wstun, udp_echo: UdpEcho) -> None:
    """After --udp-timeout without a datagram, both sides log the flow's end (one of them
    by its timer) and both processes are back to their descriptor counts before it."""
    server, client, port = await udp_tunnel(
        wstun, udp_echo.port, server_args=timeouts(), client_args=timeouts()
    )
    server_baseline, client_baseline = fd_count(server), fd_count(client)
    assert udp_sockets_to(server, udp_echo.port) == 0

    assert await exchange(port, b"ping") == b"ping"
    # The flow holds a UDP socket connected to the target meanwhile (and a WebSocket).
    assert udp_sockets_to(server, udp_echo.port) == 1

    (client_flow,) = await flow_lines(client, "c")
    (server_flow,) = await flow_lines(server, "s")
    ends = {client_flow["end"], server_flow["end"]}
    assert "timeout" in ends, (client_flow, server_flow)
    assert ends <= {"timeout", "closed"}, (client_flow, server_flow)
    assert float(server_flow["duration"].rstrip("s")) >= UDP_TIMEOUT
    assert counts(client_flow) == counts(server_flow)
    assert counts(server_flow)["datagrams_up"] == counts(server_flow)["datagrams_down"] == 1
    # Closed once the flow's line is out, or just after (the transport closes on the
    # loop's next turn).
    assert await udp_sockets_closed(server, udp_echo.port) == 0
    assert await back_to(server, server_baseline) <= server_baseline
    assert await back_to(client, client_baseline) <= client_baseline


# 4. ICMP port unreachable from the target is counted and the flow goes on.


async def test_unreachable_target_is_counted_and_does_not_end_the_flow(wstun: Wstun) -> None:
    """Datagrams to a port nothing listens on: the server's socket gets ICMP port
    unreachable for them, counts it, and the one flow lasts until its idle timeout."""
    dead_port = udp_port()
    server, client, port = await udp_tunnel(
        wstun, dead_port, server_args=timeouts(), client_args=timeouts()
    )
    datagrams = 5
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        for i in range(datagrams):
            await loop.sock_sendall(sock, b"datagram %d" % i)
            # The scenario, not a synchronisation: datagrams spread over more time than
            # the idle timeout, each one's ICMP back before the next is sent.
            await asyncio.sleep(UDP_TIMEOUT / 4)

        (server_flow,) = await flow_lines(server, "s")
        (client_flow,) = await flow_lines(client, "c")
    print(f"server flow: {server_flow}")
    assert server_flow["end"] in ("timeout", "closed"), server_flow
    assert client_flow["end"] in ("timeout", "closed"), client_flow
    assert int(server_flow["unreachable"]) > 0, server_flow
    assert int(server_flow["datagrams_up"]) == int(client_flow["datagrams_up"]) == datagrams
    # One flow carried them all: none ended early, to be opened again.
    assert float(server_flow["duration"].rstrip("s")) >= UDP_TIMEOUT * (1 + 3 / 4)
    assert len(server.matches(FLOW_LINE.format(side="s"))) == 1
    assert len(client.matches(FLOW_LINE.format(side="c"))) == 1


# 5. Policy: a rule is for TCP or for UDP, never both.


async def test_tcp_rule_refuses_a_udp_flow(wstun: Wstun) -> None:
    """--allow 127.0.0.1:P (TCP): a UDP flow to P gets 403; the target gets nothing; the
    refused source costs one upgrade per hold (2 s), not one per datagram."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        tport = target.getsockname()[1]
        server, sport = await wstun.server("--allow", f"127.0.0.1:{tport}")
        client = wstun.spawn(
            [wstun.client_cmd, "-L", f"0:127.0.0.1:{tport}/udp", f"ws://127.0.0.1:{sport}/"]
        )
        (match,) = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+)/udp ->")
        port = int(match.group(1))
        rejected = (
            rf"rejected peer=\S+ status=403 reason=target not allowed: 127\.0\.0\.1:{tport}/udp"
        )
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            for _ in range(5):
                await loop.sock_sendall(sock, b"query")
            await client.wait_for(
                rf"udp flow to 127\.0\.0\.1:{tport} refused: 403 target not allowed: "
                rf"127\.0\.0\.1:{tport}/udp \(no rule allows port {tport}/udp\)"
            )
            first = time.monotonic()
            # Keep sending: only once the hold is over does the next datagram try again.
            deadline = first + TIMEOUT
            while len(server.matches(rejected)) < 2 and time.monotonic() < deadline:
                await loop.sock_sendall(sock, b"query")
                await asyncio.sleep(0.1)  # polling the log: the datagrams are the probe
            held = time.monotonic() - first
        assert len(server.matches(rejected)) == 2, server.log
        assert held >= 1.5, held
        assert nothing_pending(target)


async def test_udp_rule_refuses_a_tcp_tunnel(
    wstun: Wstun, target: Callable[..., Awaitable[int]]
) -> None:
    """--allow 127.0.0.1:P/udp: a TCP tunnel to P gets 403 (the local connection is
    reset) and the TCP target listening on P never gets a connection."""
    connections: list[None] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(None)
        writer.close()

    tport = await target(handler)
    server, sport = await wstun.server("--allow", f"127.0.0.1:{tport}/udp")
    client, lport = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{tport}")

    reader, writer = await asyncio.open_connection("127.0.0.1", lport)
    try:
        writer.write(b"hello")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    finally:
        writer.close()
    await client.wait_for(
        rf"tunnel to 127\.0\.0\.1:{tport} refused: 403 target not allowed: "
        rf"127\.0\.0\.1:{tport} \(no rule allows port {tport}\)"
    )
    await server.wait_for(rf"status=403 reason=target not allowed: 127\.0\.0\.1:{tport} ")
    assert connections == []


# 6. Overload: a flood from one source.

FLOOD_DATAGRAMS = 20_000
FLOOD_SIZE = 1200
RSS_BOUND = 200 << 20
RTT_BOUND = 1.0
#: The client's RSS growth while the server is stopped: its queue is 1 MiB, the flood
#: 24 MB (a queue without a bound would hold it all).
STALLED_RSS_BOUND = 12 << 20


@dataclasses.dataclass
class Figures:
    flood_seconds: float = 0.0
    flood_echoes: int = 0
    rtts: list[float] = dataclasses.field(default_factory=list)
    pings_lost: int = 0
    server_rss_peak: int = 0
    client_rss_peak: int = 0


def flood_and_ping(port: int, server: Process, client: Process) -> Figures:
    """Blast FLOOD_DATAGRAMS from one socket while another flow pings (one ping in flight,
    1 s to answer) and both processes' RSS is sampled; until the flood's echoes stop."""
    figures = Figures()
    done = threading.Event()

    def sample_rss() -> None:
        while not done.is_set():
            figures.server_rss_peak = max(figures.server_rss_peak, vm_rss(server))
            figures.client_rss_peak = max(figures.client_rss_peak, vm_rss(client))
            done.wait(0.02)

    with sender(port, timeout=RTT_BOUND) as ping, sender(port, timeout=1.0) as flood:
        ping.settimeout(TIMEOUT)
        ping.send(b"warm-up")  # opens the ping's flow before the flood
        expect_echo(ping, b"warm-up")
        ping.settimeout(RTT_BOUND)
        flood.send(b"warm-up")  # and the flood's: the flood meets an open flow's queue
        expect_echo(flood, b"warm-up")

        def receive_echoes() -> None:
            with contextlib.suppress(OSError):  # TimeoutError: 1 s without an echo
                while True:
                    flood.recv(65536)
                    figures.flood_echoes += 1

        def blast() -> None:
            payload = random.Random(0).randbytes(FLOOD_SIZE)
            started = time.monotonic()
            for _ in range(FLOOD_DATAGRAMS):
                flood.send(payload)
            figures.flood_seconds = time.monotonic() - started

        threads = [threading.Thread(target=f, daemon=True) for f in (sample_rss, receive_echoes)]
        blaster = threading.Thread(target=blast, daemon=True)
        for thread in [*threads, blaster]:
            thread.start()
        i = 0
        # Ping during the flood, and while the tunnel drains its backlog after it.
        while blaster.is_alive() or threads[1].is_alive():
            mark = b"ping %d" % i
            i += 1
            sent = time.monotonic()
            ping.send(mark)
            try:
                while ping.recv(65536) != mark:
                    pass  # a late answer to a ping that timed out
            except TimeoutError:
                figures.pings_lost += 1
                continue
            figures.rtts.append(time.monotonic() - sent)
            done.wait(0.01)
        done.set()
        for thread in [*threads, blaster]:
            thread.join(TIMEOUT)
    return figures


async def test_flood_drops_are_counted_memory_stays_bounded_other_flow_stays_quick(
    wstun: Wstun, udp_echo: UdpEcho
) -> None:
    """20,000 datagrams of 1,200 bytes as fast as one socket sends them, to an echo
    target: far more than the tunnel carries, so some are dropped, and the flow lines
    count what was carried and dropped consistently on both sides; neither process's RSS
    grows by more than 200 MiB; another flow's pings still come back within 1 s."""
    server, client, port = await udp_tunnel(
        wstun, udp_echo.port, server_args=timeouts(2), client_args=timeouts(2)
    )
    server_base, client_base = vm_rss(server), vm_rss(client)

    figures = await asyncio.to_thread(flood_and_ping, port, server, client)

    client_flows = await flow_lines(client, "c", 2)
    server_flows = await flow_lines(server, "s", 2)
    # The flood's flow carried the most datagrams, on each side.
    client_flood = counts(max(client_flows, key=lambda f: int(f["datagrams_up"])))
    server_flood = counts(max(server_flows, key=lambda f: int(f["datagrams_up"])))
    rtts = sorted(figures.rtts)
    print(
        f"flood: {FLOOD_DATAGRAMS} x {FLOOD_SIZE} B sent in {figures.flood_seconds:.3f}s; "
        f"client flow {client_flood}; server flow {server_flood}; "
        f"target received {udp_echo.received}; echoes back at the source "
        f"{figures.flood_echoes}; RSS server {server_base >> 20} -> "
        f"{figures.server_rss_peak >> 20} MiB, client {client_base >> 20} -> "
        f"{figures.client_rss_peak >> 20} MiB; pings {len(rtts)} ok, "
        f"{figures.pings_lost} lost, RTT median {rtts[len(rtts) // 2] * 1000:.1f} ms, "
        f"max {rtts[-1] * 1000:.1f} ms"
    )
    sent_up = FLOOD_DATAGRAMS + 1  # and the warm-up
    # Some were dropped: not all were carried up (by the kernel's socket buffer, or counted
    # in dropped_up by the client's queue).
    assert client_flood["datagrams_up"] + client_flood["dropped_up"] <= sent_up
    assert client_flood["datagrams_up"] < sent_up
    assert client_flood["up"] == (client_flood["datagrams_up"] - 1) * FLOOD_SIZE + len(b"warm-up")
    # What one side sent over the WebSocket, the other received: delivered or counted.
    assert client_flood["datagrams_up"] == server_flood["datagrams_up"] + server_flood["dropped_up"]
    assert (
        server_flood["datagrams_down"]
        == client_flood["datagrams_down"] + client_flood["dropped_down"]
    )
    # The target got no more than the server sent it, over both flows.
    assert udp_echo.received <= sum(int(f["datagrams_up"]) for f in server_flows)
    assert figures.flood_echoes + 1 <= client_flood["datagrams_down"]
    assert figures.server_rss_peak - server_base < RSS_BOUND
    assert figures.client_rss_peak - client_base < RSS_BOUND
    assert figures.pings_lost == 0
    assert rtts
    assert rtts[-1] < RTT_BOUND


def paced_blast(sock: socket.socket, payloads: Iterable[bytes]) -> float:
    """Send ``payloads`` in bursts of 50, 2 ms apart (a rate the client can read, so its
    socket buffer drops few); the seconds it took."""
    started = time.monotonic()
    for i, payload in enumerate(payloads):
        sock.send(payload)
        if i % 50 == 49:
            time.sleep(0.002)
    return time.monotonic() - started


def flood_payloads(count: int, size: int) -> Iterator[bytes]:
    """``count`` copies of one random payload of ``size`` bytes."""
    return itertools.repeat(random.Random(1).randbytes(size), count)


async def test_stalled_server_the_clients_queue_holds_and_drops_are_counted(
    wstun: Wstun, udp_echo: UdpEcho
) -> None:
    """While the server is stopped (SIGSTOP: the WebSocket stalls), a flood from one
    source: the client carries what the TCP buffers take, keeps at most its queue, drops
    the rest and counts it (dropped_up); its RSS grows by far less than the flood's 24 MB
    (the TCP buffers are the kernel's); once the server goes on, the flow carries what
    was kept, the counts agree on both sides, and the flow ends cleanly."""
    server, client, port = await udp_tunnel(
        wstun, udp_echo.port, server_args=timeouts(2), client_args=timeouts(2)
    )
    client_base = vm_rss(client)
    with sender(port) as flood:
        flood.send(b"warm-up")  # the flow is open before the stall
        expect_echo(flood, b"warm-up")
        server.popen.send_signal(signal.SIGSTOP)
        try:
            seconds = await asyncio.to_thread(
                paced_blast, flood, flood_payloads(FLOOD_DATAGRAMS, FLOOD_SIZE)
            )
            client_peak = vm_rss(client)
        finally:
            server.popen.send_signal(signal.SIGCONT)
        (client_flow,) = await flow_lines(client, "c")
        (server_flow,) = await flow_lines(server, "s")
    client_counts, server_counts = counts(client_flow), counts(server_flow)
    print(
        f"stalled: {FLOOD_DATAGRAMS} x {FLOOD_SIZE} B in {seconds:.3f}s; client {client_counts}; "
        f"server {server_counts}; target received {udp_echo.received}; client RSS "
        f"{client_base >> 20} -> {client_peak >> 20} MiB"
    )
    sent_up = FLOOD_DATAGRAMS + 1
    assert client_counts["dropped_up"] > 0
    assert client_counts["datagrams_up"] + client_counts["dropped_up"] <= sent_up
    assert (
        client_counts["datagrams_up"] == server_counts["datagrams_up"] + server_counts["dropped_up"]
    )
    assert client_peak - client_base < STALLED_RSS_BOUND
    assert client_flow["end"] in ("timeout", "closed"), client_flow
    assert server_flow["end"] in ("timeout", "closed"), server_flow


#: Each half of the numbered flood: the first sent while the server is stopped.
ORDERED_HALF = 5_000


def numbered(first: int, count: int, size: int) -> Iterator[bytes]:
    """Datagrams numbered ``first`` on: 8 bytes, big-endian, then padding to ``size``."""
    padding = bytes(size - 8)
    return (i.to_bytes(8, "big") + padding for i in range(first, first + count))


def pending(sock: socket.socket) -> list[bytes]:
    """The first 8 bytes of every datagram waiting on ``sock`` (no wait)."""
    heads = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            heads.append(sock.recv(65536)[:8])
    return heads


def numbers(heads: Iterable[bytes]) -> list[int]:
    """The numbers of the numbered datagrams among ``heads`` (warm-ups left out)."""
    return [int.from_bytes(head, "big") for head in heads if len(head) == 8]


async def test_datagrams_keep_their_order_through_a_stall(wstun: Wstun, udp_echo: UdpEcho) -> None:
    """Numbered datagrams from one source: half while the server is stopped (the
    client queues what the WebSocket can't take, and drops past its queue), half after
    it goes on (the client sends its queue while new datagrams come, and those go
    straight on once the queue is empty). Some are dropped, but the target gets the
    carried ones in the order they were sent, none twice, from both halves, and the
    echoes come back to the source in that order too."""
    server, client, port = await udp_tunnel(
        wstun, udp_echo.port, server_args=timeouts(2), client_args=timeouts(2)
    )
    with sender(port) as flood:
        flood.send(b"warm-up")  # the flow is open before the stall
        expect_echo(flood, b"warm-up")
        server.popen.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(paced_blast, flood, numbered(0, ORDERED_HALF, FLOOD_SIZE))
        finally:
            server.popen.send_signal(signal.SIGCONT)
        await asyncio.to_thread(
            paced_blast, flood, numbered(ORDERED_HALF, ORDERED_HALF, FLOOD_SIZE)
        )
        (client_flow,) = await flow_lines(client, "c")  # idle for 2 s: all echoes are in
        (server_flow,) = await flow_lines(server, "s")
        echoes = pending(flood)
    carried = numbers(udp_echo.heads)
    echoed = numbers(echoes)
    print(
        f"ordered: {2 * ORDERED_HALF} sent; target got {len(carried)}, source got "
        f"{len(echoed)} echoes; client {counts(client_flow)}; server {counts(server_flow)}"
    )
    assert counts(client_flow)["dropped_up"] > 0  # the stall did fill the client's queue
    assert carried == sorted(set(carried))
    assert carried[0] < ORDERED_HALF <= carried[-1]
    assert len(carried) <= counts(server_flow)["datagrams_up"] - 1
    assert echoed
    assert echoed == sorted(set(echoed))
    assert set(echoed) <= set(carried)


async def test_a_draining_server_ends_its_flows_at_once(wstun: Wstun, udp_echo: UdpEcho) -> None:
    """SIGTERM with a UDP flow open: the server closes it at once (1001) instead of waiting
    out --grace, and both sides log the flow as closed, not as an error."""
    server, client, port = await udp_tunnel(wstun, udp_echo.port, server_args=("--grace", "20"))
    assert await exchange(port, b"before the drain") == b"before the drain"
    started = time.monotonic()
    server.popen.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.popen.wait, TIMEOUT) == 0
    assert time.monotonic() - started < 5, "the server waited out its grace for a UDP flow"
    for process, side in ((server, "s"), (client, "c")):
        (fields,) = await flow_lines(process, side)
        assert fields["end"] == "closed", fields
    assert not server.matches(r"grace period over")
