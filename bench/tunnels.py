"""The tunnels compared: each starts fresh on loopback ports in front of a target.

A tunnel is started for one workload run and stopped after it. ``port`` is
where the workload connects; ``procs`` are the processes whose CPU time and
memory are charged to the tunnel (none for direct TCP).

Tunnels that carry UDP have a second starter, ``start_udp(target, logdir,
tcp)``: a UDP forward from a local port to the target's, and with ``tcp``
a TCP forward of the same kind beside it on the same local port number, to
the same target port (iperf3 runs its TCP control connection and its UDP
stream to one port).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .procs import Proc, free_port, free_udp_port, tcp_listening, udp_bound, wait_listening

__all__ = [
    "TUNNELS",
    "RunningTunnel",
    "TunnelSpec",
    "UdpStarter",
    "add_baseline",
    "find_tool",
    "tool_versions",
]


def find_tool(name: str) -> str:
    """A console script next to the running interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; run bench/setup.sh")
    return found


@dataclasses.dataclass
class RunningTunnel:
    """A started tunnel: where to connect and which processes it is made of."""

    port: int
    procs: list[Proc]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


Starter = Callable[[int, Path], RunningTunnel]
#: ``(target port, logdir, tcp)``: a UDP forward, and with ``tcp`` a TCP one beside
#: it on the same local port number.
UdpStarter = Callable[[int, Path, bool], RunningTunnel]


@dataclasses.dataclass(frozen=True)
class TunnelSpec:
    """A tunnel kind: its name, how to start it, the largest scale run it gets."""

    name: str
    start: Starter
    #: Tunnels that fork a process per connection get at most this many.
    max_scale: int = 1_000_000
    note: str = ""
    #: How to start it for UDP; None: it carries no UDP (the UDP workloads skip it).
    start_udp: UdpStarter | None = None
    #: UDP source addresses it keeps apart on one local port (None: any number).
    udp_sources: int | None = None
    udp_note: str = ""


def _direct(target: int, logdir: Path) -> RunningTunnel:
    return RunningTunnel(target, [])


def _direct_udp(target: int, logdir: Path, tcp: bool) -> RunningTunnel:
    return RunningTunnel(target, [])


#: Tries at starting a UDP tunnel on a local port picked beforehand: another
#: process may take the port between the pick and the bind.
_BIND_TRIES = 3


def _on_free_udp_port(start: Callable[[int], RunningTunnel]) -> RunningTunnel:
    """``start(port)`` on a port free for UDP and TCP, picked again if it was taken."""
    for attempt in range(_BIND_TRIES):
        try:
            return start(free_udp_port())
        except RuntimeError as exc:  # it exited before it listened, and said why
            if attempt == _BIND_TRIES - 1 or "in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def _socat(target: int, logdir: Path) -> RunningTunnel:
    port = free_port()
    proc = Proc(
        "socat",
        [
            find_tool("socat"),
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
            f"TCP:127.0.0.1:{target}",
        ],
        logdir,
    )
    wait_listening(port, proc=proc)
    return RunningTunnel(port, [proc])


def _socat_pair(target: int, logdir: Path) -> RunningTunnel:
    """Two socat relays chained: the hops of a tunnel's client and server, no WebSocket."""
    server = _socat(target, logdir)
    client = _socat(server.port, logdir)
    return RunningTunnel(client.port, [*server.procs, *client.procs])


def _websocat_client(ws_port: int, logdir: Path, procs: list[Proc]) -> RunningTunnel:
    port = free_port()
    client = Proc(
        "websocat-client",
        [
            find_tool("websocat"),
            "--binary",
            "-E",
            f"tcp-l:127.0.0.1:{port}",
            f"ws://127.0.0.1:{ws_port}/",
        ],
        logdir,
        # websocat loads the system CA bundle for every connection otherwise.
        env={"SSL_CERT_FILE": "/dev/null"},
    )
    procs.append(client)
    wait_listening(port, proc=client)
    return RunningTunnel(port, procs)


def _websocat(target: int, logdir: Path) -> RunningTunnel:
    ws_port = free_port()
    server = Proc(
        "websocat-server",
        [
            find_tool("websocat"),
            "--binary",
            "-E",
            f"ws-l:127.0.0.1:{ws_port}",
            f"tcp:127.0.0.1:{target}",
        ],
        logdir,
    )
    wait_listening(ws_port, proc=server)
    return _websocat_client(ws_port, logdir, [server])


def _wait_quietly(
    bound: Callable[[int], bool], port: int, proc: Proc, timeout: float = 20.0
) -> None:
    """Wait until ``bound(port)`` (read from /proc, no connection made), or fail if
    ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not bound(port):
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: nothing bound to 127.0.0.1:{port}")
        time.sleep(0.02)


def _wait_connected(port: int, proc: Proc, timeout: float = 20.0) -> None:
    """Wait until a TCP connection to 127.0.0.1:``port`` is established (/proc/net/tcp)."""
    suffix = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as table:
            next(table, None)
            rows = [line.split() for line in table if line.strip()]
        if any(row[2].endswith(suffix) and row[3] == "01" for row in rows):
            return
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: no connection to 127.0.0.1:{port}")
        time.sleep(0.02)


def _websocat_udp(target: int, logdir: Path, tcp: bool) -> RunningTunnel:
    """websocat for UDP: ``ws-l: udp:`` and ``udp-l: ws://``.

    websocat's ``udp-l:`` is one socket and one WebSocket for the client's
    lifetime (opened at start), not a listener of flows: every datagram from
    any source goes into that WebSocket, and each reply goes to the source seen
    last. So it keeps one source apart (``udp_sources=1``), and the client
    exits when its WebSocket ends (with ``-E``), e.g. once the server's UDP
    socket is refused by the target; it is started fresh per run anyway.
    Without ``--udp-oneshot``: that answers one datagram per source and is
    for one-query-one-answer use, not for a stream. With ``tcp``, the TCP pair
    (as ``websocat``) beside it on the same local port.
    """
    ws_port = free_port()
    server = Proc(
        "websocat-udp-server",
        [
            find_tool("websocat"),
            "--binary",
            "-E",
            f"ws-l:127.0.0.1:{ws_port}",
            f"udp:127.0.0.1:{target}",
        ],
        logdir,
    )
    procs = [server]
    try:
        # Waits read /proc rather than connect: a probe through the TCP pair would reach
        # iperf3 as an empty control connection, and iperf3 may then drop the real one.
        _wait_quietly(tcp_listening, ws_port, server)
        if tcp:
            tcp_ws_port = free_port()
            tcp_server = Proc(
                "websocat-server",
                [
                    find_tool("websocat"),
                    "--binary",
                    "-E",
                    f"ws-l:127.0.0.1:{tcp_ws_port}",
                    f"tcp:127.0.0.1:{target}",
                ],
                logdir,
            )
            procs.append(tcp_server)
            _wait_quietly(tcp_listening, tcp_ws_port, tcp_server)

        def start(port: int) -> RunningTunnel:
            argv = [find_tool("websocat"), "--binary", "-E"]
            client = Proc(
                "websocat-udp-client",
                [*argv, f"udp-l:127.0.0.1:{port}", f"ws://127.0.0.1:{ws_port}/"],
                logdir,
                env={"SSL_CERT_FILE": "/dev/null"},
            )
            started = [client]
            try:
                _wait_quietly(udp_bound, port, client)
                _wait_connected(ws_port, client)  # udp-l: opens its one WebSocket at start
                if tcp:
                    tcp_client = Proc(
                        "websocat-client",
                        [*argv, f"tcp-l:127.0.0.1:{port}", f"ws://127.0.0.1:{tcp_ws_port}/"],
                        logdir,
                        env={"SSL_CERT_FILE": "/dev/null"},
                    )
                    started.append(tcp_client)
                    _wait_quietly(tcp_listening, port, tcp_client)
            except BaseException:
                for proc in reversed(started):
                    proc.stop()
                raise
            return RunningTunnel(port, [*procs, *started])

        return _on_free_udp_port(start)
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise


def _websockify(target: int, logdir: Path) -> RunningTunnel:
    ws_port = free_port()
    server = Proc(
        "websockify",
        [find_tool("websockify"), f"127.0.0.1:{ws_port}", f"127.0.0.1:{target}"],
        logdir,
    )
    wait_listening(ws_port, proc=server)
    return _websocat_client(ws_port, logdir, [server])


def _wstun(
    *server_args: str, bin_dir: Path | None = None, client_args: tuple[str, ...] = ()
) -> Starter:
    """wstun with ``server_args`` and ``client_args``; from ``bin_dir`` (another
    build's) if given."""

    def tool(name: str) -> str:
        return str(bin_dir / name) if bin_dir is not None else find_tool(name)

    def start(target: int, logdir: Path) -> RunningTunnel:
        server = Proc(
            "wstun-server",
            [
                tool("wstun-server"),
                "--listen",
                "127.0.0.1:0",
                "--allow",
                f"127.0.0.1:{target}",
                *server_args,
            ],
            logdir,
        )
        line = server.wait_for_line("listening on 127.0.0.1:")
        ws_port = int(_port_after("listening on 127.0.0.1:", line))
        client = Proc(
            "wstun-client",
            [
                tool("wstun-client"),
                "-L",
                f"0:127.0.0.1:{target}",
                f"ws://127.0.0.1:{ws_port}/",
                *client_args,
            ],
            logdir,
        )
        line = client.wait_for_line("forwarding 127.0.0.1:")
        port = int(_port_after("forwarding 127.0.0.1:", line))
        return RunningTunnel(port, [server, client])

    return start


def _wstun_udp(
    *server_args: str, bin_dir: Path | None = None, client_args: tuple[str, ...] = ()
) -> UdpStarter:
    """wstun's ``-L PORT:target/udp`` (and, with ``tcp``, ``-L PORT:target`` beside it
    in the same client, on the same local port)."""

    def tool(name: str) -> str:
        return str(bin_dir / name) if bin_dir is not None else find_tool(name)

    def start(target: int, logdir: Path, tcp: bool) -> RunningTunnel:
        rules = ["--allow", f"127.0.0.1:{target}/udp"]
        rules += ["--allow", f"127.0.0.1:{target}"] if tcp else []
        server = Proc(
            "wstun-server",
            [tool("wstun-server"), "--listen", "127.0.0.1:0", *rules, *server_args],
            logdir,
        )
        try:
            line = server.wait_for_line("listening on 127.0.0.1:")
            ws_port = int(_port_after("listening on 127.0.0.1:", line))

            def start_client(port: int) -> RunningTunnel:
                forwards = ["-L", f"{port}:127.0.0.1:{target}/udp"]
                forwards += ["-L", f"{port}:127.0.0.1:{target}"] if tcp else []
                client = Proc(
                    "wstun-client",
                    [
                        tool("wstun-client"),
                        *forwards,
                        f"ws://127.0.0.1:{ws_port}/",
                        *client_args,
                    ],
                    logdir,
                )
                try:
                    client.wait_for_line(f"forwarding 127.0.0.1:{port}/udp")
                    if tcp:
                        client.wait_for_line(f"forwarding 127.0.0.1:{port} ")
                except BaseException:
                    client.stop()
                    raise
                return RunningTunnel(port, [server, client])

            return _on_free_udp_port(start_client)
        except BaseException:
            server.stop()
            raise

    return start


def _wstun_reverse(target: int, logdir: Path) -> RunningTunnel:
    """wstun's -R: the server listens, the client carries each connection to the target."""
    server = Proc(
        "wstun-server",
        [find_tool("wstun-server"), "--listen", "127.0.0.1:0", "--allow-listen", "127.0.0.1:*"],
        logdir,
    )
    line = server.wait_for_line("listening on 127.0.0.1:")
    ws_port = int(_port_after("listening on 127.0.0.1:", line))
    client = Proc(
        "wstun-client",
        [
            find_tool("wstun-client"),
            "-R",
            f"0:127.0.0.1:{target}",
            f"ws://127.0.0.1:{ws_port}/",
        ],
        logdir,
    )
    line = client.wait_for_line("allocated port ")
    port = int(_port_after("allocated port ", line))
    client.wait_for_line(" on the server -> ")
    return RunningTunnel(port, [server, client])


def _wstun_reverse_udp(target: int, logdir: Path, tcp: bool) -> RunningTunnel:
    """wstun's ``-R PORT:target/udp`` (and, with ``tcp``, ``-R PORT:target`` beside it on
    the same port number): the server listens, each source's flow rides a data channel."""
    port = free_udp_port()
    rules = ["--allow-listen", f"127.0.0.1:{port}/udp"]
    rules += ["--allow-listen", f"127.0.0.1:{port}"] if tcp else []
    server = Proc(
        "wstun-server",
        [find_tool("wstun-server"), "--listen", "127.0.0.1:0", *rules],
        logdir,
    )
    try:
        line = server.wait_for_line("listening on 127.0.0.1:")
        ws_port = int(_port_after("listening on 127.0.0.1:", line))
        forwards = ["-R", f"{port}:127.0.0.1:{target}/udp"]
        forwards += ["-R", f"{port}:127.0.0.1:{target}"] if tcp else []
        client = Proc(
            "wstun-client",
            [find_tool("wstun-client"), *forwards, f"ws://127.0.0.1:{ws_port}/"],
            logdir,
        )
        try:
            client.wait_for_line(f"reverse 127.0.0.1:{port}/udp on the server -> ")
            if tcp:
                client.wait_for_line(f"reverse 127.0.0.1:{port} on the server -> ")
        except BaseException:
            client.stop()
            raise
    except BaseException:
        server.stop()
        raise
    return RunningTunnel(port, [server, client])


def _port_after(prefix: str, line: str) -> str:
    match = re.search(re.escape(prefix) + r"(\d+)", line)
    assert match is not None, line
    return match.group(1)


TUNNELS: dict[str, TunnelSpec] = {
    spec.name: spec
    for spec in [
        TunnelSpec(
            "direct",
            _direct,
            note="no tunnel: the workload talks to the target",
            start_udp=_direct_udp,
            udp_note="no tunnel: the workload sends to the target",
        ),
        TunnelSpec(
            "socat",
            _socat,
            max_scale=1000,
            note="plain TCP relay, forks a process per connection",
        ),
        TunnelSpec(
            "socat-pair",
            _socat_pair,
            max_scale=500,
            note="two socat relays chained, as a tunnel's client and server with no "
            "WebSocket: the floor of a two-process tunnel (forks per connection)",
        ),
        TunnelSpec(
            "websocat",
            _websocat,
            note="websocat server + websocat client",
            start_udp=_websocat_udp,
            udp_sources=1,
            udp_note="websocat ws-l: udp: + websocat udp-l: (one WebSocket, replies to the "
            "last source)",
        ),
        TunnelSpec(
            "websockify",
            _websockify,
            max_scale=1000,
            note="websockify server (forks per connection) + websocat client",
        ),
        TunnelSpec(
            "wstun",
            _wstun(),
            note="wstun-server + wstun-client, defaults (a pool of 2 warm WebSockets)",
            start_udp=_wstun_udp(),
            udp_note="wstun-client -L PORT:target/udp: a WebSocket per source address",
        ),
        TunnelSpec(
            "wstun-nopool",
            _wstun(client_args=("--pool", "0")),
            note="wstun-client --pool 0: a fresh WebSocket (upgrade) per connection",
        ),
        TunnelSpec(
            "wstun-reverse",
            _wstun_reverse,
            note="wstun-client -R: the server listens, each connection rides a warm data channel",
            start_udp=_wstun_reverse_udp,
            udp_note="wstun-client -R PORT:target/udp: each source's flow rides a data channel",
        ),
        TunnelSpec(
            "wstun-w2",
            _wstun("--workers", "2"),
            note="wstun-server --workers 2 + wstun-client",
            start_udp=_wstun_udp("--workers", "2"),
            udp_note="wstun-server --workers 2, -L .../udp",
        ),
    ]
}


def add_baseline(bin_dir: Path, *, nopool: bool = False) -> list[str]:
    """Add ``wstun-base``: wstun as built in another install (its ``bin`` directory),
    to compare two builds in one run; with ``nopool``, also ``wstun-base-nopool``
    (its client with ``--pool 0``) if that build has a pool. Returns the names."""
    for name in ("wstun-server", "wstun-client"):
        if not (bin_dir / name).exists():
            raise FileNotFoundError(f"{bin_dir / name} not found: --baseline takes a bin directory")
    version = version_line([str(bin_dir / "wstun-server"), "--version"])
    client_help = subprocess.run(
        [str(bin_dir / "wstun-client"), "--help"], capture_output=True, text=True, check=False
    ).stdout
    udp = "/udp" in client_help
    TUNNELS["wstun-base"] = TunnelSpec(
        "wstun-base",
        _wstun(bin_dir=bin_dir),
        note=f"wstun from {bin_dir} ({version}), defaults",
        start_udp=_wstun_udp(bin_dir=bin_dir) if udp else None,
        udp_note=f"wstun from {bin_dir}, -L .../udp" if udp else "",
    )
    names = ["wstun-base"]
    if nopool and "--pool" in client_help:
        TUNNELS["wstun-base-nopool"] = TunnelSpec(
            "wstun-base-nopool",
            _wstun(bin_dir=bin_dir, client_args=("--pool", "0")),
            note=f"wstun from {bin_dir} ({version}), wstun-client --pool 0",
        )
        names.append("wstun-base-nopool")
    return names


def version_line(argv: list[str]) -> str:
    """The first line a tool prints of its version (or why it printed none)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _dnsperf_version() -> str:
    try:
        dnsperf = find_tool("dnsperf")
    except FileNotFoundError:
        return "not installed (dns-qps uses bench/dnsload.py)"
    out = subprocess.run([dnsperf, "-h"], capture_output=True, text=True, check=False)
    found = re.search(r"Version \S+", out.stdout + out.stderr)
    return found.group(0) if found else "?"


def tool_versions() -> dict[str, str]:
    """One version line per tool the benchmark drives."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    versions = {
        "python": sys.version.split()[0],
        "wstun": pkg("wstun"),
        "websockets": pkg("websockets"),
        "uvloop": pkg("uvloop"),
        "websocat": version_line([find_tool("websocat"), "--version"]),
        "websockify": pkg("websockify"),
        "socat": version_line([find_tool("socat"), "-V"]).strip(),
        "iperf3": version_line([find_tool("iperf3"), "--version"]),
        "redis-server": version_line([find_tool("redis-server"), "--version"]),
        "wrk": version_line([find_tool("wrk"), "--version"]),
        "nginx": version_line([find_tool("nginx"), "-v"]),
        "dnsmasq": version_line([find_tool("dnsmasq"), "--version"]),
        "dnsperf": _dnsperf_version(),
    }
    socat = subprocess.run(
        [find_tool("socat"), "-V"], capture_output=True, text=True, check=False
    ).stdout
    for line in socat.splitlines():
        if line.startswith("socat version"):
            versions["socat"] = line.strip()
    return versions
