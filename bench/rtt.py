"""Setup latency over a real round trip: connect() to the first byte of a small answer.

    .venv/bin/python bench/rtt.py [--connections N] [--name NAME]

Needs root: it makes two network namespaces, a client side (the probe and
the tunnel's client) and a server side (the tunnel's server and the target),
joined by bench/delaylink.py, which holds every packet 20 ms each way (this
kernel has no netem), so TCP runs end to end with a 40 ms round trip. For
every tunnel, ws:// and wss://, it opens N new connections one after another
and times each from connect() to the first byte of the target's answer;
see bench/README.md. Writes bench/results/<date>-<name>-rtt.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.delaylink import enter_netns
from bench.procs import Proc
from bench.runner import machine_info
from bench.tunnels import RunningTunnel, find_tool, version_line
from bench.workloads import nginx_conf

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
DELAYLINK = Path(__file__).resolve().parent / "delaylink.py"

#: Client side and server side of the link (point to point, on the TUN devices).
ADDR_A = "10.250.0.1"
ADDR_B = "10.250.0.2"
DEV = "rtt0"
WS_PATH = "/tunnel"

#: HTTP/1.0, so the target (nginx, ``return 200 "ok\n"``) answers and closes.
REQUEST = b"GET /rtt HTTP/1.0\r\nHost: target\r\n\r\n"
ANSWER_START = b"HTTP/1.1 200 OK\r\n"
ANSWER_END = b"\r\n\r\nok\n"

TUNNEL_ORDER = ["direct", "websocat", "websocat-nginx", "wstun", "wstun-pool"]
SCHEMES = ["ws", "wss"]


# --- namespaces and the link --------------------------------------------------


class Netns:
    """A network namespace this run made, with a thread inside it to make sockets there."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.path = f"/run/netns/{name}"
        # setns() moves only the calling thread; a socket stays in the
        # namespace it was made in, whichever thread uses it afterwards.
        self._inside = ThreadPoolExecutor(
            max_workers=1, initializer=enter_netns, initargs=(self.path,)
        )

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def socket(self) -> socket.socket:
        return self._inside.submit(socket.socket, socket.AF_INET, socket.SOCK_STREAM).result()

    def free_port(self, host: str) -> int:
        with self.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            return port

    def delete(self) -> None:
        self._inside.shutdown(wait=True)
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


def wait_listening_in(ns: Netns, host: str, port: int, proc: Proc, timeout: float = 20.0) -> None:
    """Block until something accepts on host:port in ``ns``; fail if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        with ns.socket() as sock:
            sock.settimeout(1.0)
            try:
                sock.connect((host, port))
                return
            except OSError:
                pass
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} in {ns.name}")
        time.sleep(0.02)


def connect_times(ns: Netns, host: str, port: int, count: int, timeout: float) -> list[float]:
    """``count`` plain TCP connects (SYN to SYN-ACK): the link's round trip, in ms."""
    times: list[float] = []
    for _ in range(count):
        with ns.socket() as sock:
            sock.settimeout(timeout)
            start = time.perf_counter()
            sock.connect((host, port))
            times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.05)
    return times


def probe(ns: Netns, host: str, port: int, timeout: float) -> float:
    """One new connection: ms from connect() to the first byte of the answer.

    Reads the rest of the answer to the end and checks it (raises if wrong),
    so that the tunnel sees a clean end both ways."""
    with ns.socket() as sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.connect((host, port))
        sock.sendall(REQUEST)
        data = sock.recv(4096)
        elapsed = (time.perf_counter() - start) * 1000
        while data and len(data) <= 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if not (data.startswith(ANSWER_START) and data.endswith(ANSWER_END)):
        raise ValueError(f"wrong answer after {elapsed:.1f} ms: {data[:100]!r}")
    return elapsed


# --- the tunnels ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certs:
    """A self-signed certificate for ADDR_B: PEM for wstun, PKCS#12 for websocat."""

    cert: Path
    key: Path
    pkcs12: Path


def make_certs(workdir: Path) -> Certs:
    openssl = find_tool("openssl")
    certs = Certs(workdir / "cert.pem", workdir / "key.pem", workdir / "cert.p12")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={ADDR_B}",
            "-addext",
            f"subjectAltName=IP:{ADDR_B}",
            "-keyout",
            str(certs.key),
            "-out",
            str(certs.cert),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            openssl,
            "pkcs12",
            "-export",
            "-inkey",
            str(certs.key),
            "-in",
            str(certs.cert),
            "-out",
            str(certs.pkcs12),
            "-passout",
            "pass:",
        ],
        check=True,
        capture_output=True,
    )
    return certs


def stop_once(proc: Proc) -> None:
    """Stop ``proc`` unless that was done already (its pid may be another's by now)."""
    if proc.popen.returncode is None:
        proc.stop()


@dataclasses.dataclass
class Ctx:
    a: Netns
    b: Netns
    logdir: Path
    target_port: int
    certs: Certs
    pool_supported: bool
    #: Every process started for a tunnel, so that cleanup finds them all.
    procs: list[Proc] = dataclasses.field(default_factory=list)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_once(proc)


@dataclasses.dataclass
class Started:
    """A running tunnel (or none, for direct) and where the probe connects, in ns A."""

    host: str
    tunnel: RunningTunnel


Starter = Callable[[Ctx, bool], Started]


def _proc(ctx: Ctx, ns: Netns, name: str, argv: list[str], **env: str) -> Proc:
    proc = Proc(name, ns.argv(argv), ctx.logdir, env=env or None)
    ctx.procs.append(proc)
    return proc


def _port_in(pattern: str, line: str) -> int:
    match = re.search(pattern, line)
    if match is None:
        raise RuntimeError(f"no port in {line!r}")
    return int(match.group(1))


def _start_direct(ctx: Ctx, tls: bool) -> Started:
    return Started(ADDR_B, RunningTunnel(ctx.target_port, []))


#: The target: a fixed small answer, right away.
_TARGET_SERVER = """\
        listen 0.0.0.0:{port};
        location / {{ return 200 "ok\\n"; }}"""

#: TLS 1.3 in front of a WebSocket server on 127.0.0.1:upstream.
_TLS_FRONT_SERVER = """\
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffering off;
        }}"""


def start_nginx(ns: Netns, logdir: Path, name: str, server: str, port: int) -> Proc:
    """nginx in ``ns`` with one ``server`` block (listening on ``port``), one process."""
    root = logdir / f"{name}-{port}"
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, server))
    argv = [find_tool("nginx"), "-p", str(root), "-c", str(conf), "-e", "stderr"]
    return Proc(name, ns.argv(argv), logdir)


def _start_tls_front(ctx: Ctx, upstream: int) -> tuple[Proc, int]:
    """nginx in ns B terminating TLS 1.3 for the WebSocket server on 127.0.0.1:upstream."""
    port = ctx.b.free_port(ADDR_B)
    server = _TLS_FRONT_SERVER.format(
        host=ADDR_B, port=port, cert=ctx.certs.cert, key=ctx.certs.key, upstream=upstream
    )
    proc = start_nginx(ctx.b, ctx.logdir, "nginx-tls", server, port)
    ctx.procs.append(proc)
    wait_listening_in(ctx.b, ADDR_B, port, proc)
    return proc, port


def _websocat(tls_by_nginx: bool) -> Starter:
    """websocat on both sides; wss:// served by websocat itself (``wss-l:``, which
    negotiates TLS 1.2 only) or, with ``tls_by_nginx``, by nginx (TLS 1.3) in
    front of websocat's ``ws-l:``."""

    def start(ctx: Ctx, tls: bool) -> Started:
        websocat = find_tool("websocat")
        procs: list[Proc] = []
        try:
            ws_port = ctx.b.free_port(ADDR_B)
            if not tls:
                listen = [f"ws-l:{ADDR_B}:{ws_port}"]
            elif tls_by_nginx:
                listen = [f"ws-l:127.0.0.1:{ws_port}"]
            else:
                listen = ["--pkcs12-der", str(ctx.certs.pkcs12), f"wss-l:{ADDR_B}:{ws_port}"]
            server = _proc(
                ctx,
                ctx.b,
                "websocat-server",
                [websocat, "--binary", "-E", *listen, f"tcp:127.0.0.1:{ctx.target_port}"],
            )
            procs.append(server)
            if tls and tls_by_nginx:
                wait_listening_in(ctx.b, "127.0.0.1", ws_port, server)
                front, ws_port = _start_tls_front(ctx, ws_port)
                procs.append(front)
            else:
                wait_listening_in(ctx.b, ADDR_B, ws_port, server)
            port = ctx.a.free_port("127.0.0.1")
            client = _proc(
                ctx,
                ctx.a,
                "websocat-client",
                [
                    websocat,
                    "--binary",
                    "-E",
                    f"tcp-l:127.0.0.1:{port}",
                    f"{'wss' if tls else 'ws'}://{ADDR_B}:{ws_port}{WS_PATH}",
                ],
                # Trust only our certificate; with ws:// load no CA bundle at all
                # (websocat reads it for every connection otherwise).
                SSL_CERT_FILE=str(ctx.certs.cert) if tls else "/dev/null",
            )
            procs.append(client)
            wait_listening_in(ctx.a, "127.0.0.1", port, client)
        except BaseException:
            RunningTunnel(0, procs).stop()
            raise
        return Started("127.0.0.1", RunningTunnel(port, procs))

    return start


def _wstun(pool: int) -> Starter:
    def start(ctx: Ctx, tls: bool) -> Started:
        procs: list[Proc] = []
        try:
            tls_args = ["--tls-cert", str(ctx.certs.cert), "--tls-key", str(ctx.certs.key)]
            server = _proc(
                ctx,
                ctx.b,
                "wstun-server",
                [
                    find_tool("wstun-server"),
                    "--listen",
                    f"{ADDR_B}:0",
                    "--path",
                    WS_PATH,
                    "--allow",
                    f"127.0.0.1:{ctx.target_port}",
                    "--grace",
                    "0.5",
                    *(tls_args if tls else []),
                ],
            )
            procs.append(server)
            line = server.wait_for_line(f"listening on {ADDR_B}:")
            ws_port = _port_in(re.escape(f"listening on {ADDR_B}:") + r"(\d+)", line)
            pool_args = ["--pool", str(pool)] if ctx.pool_supported else []
            client = _proc(
                ctx,
                ctx.a,
                "wstun-client",
                [
                    find_tool("wstun-client"),
                    *pool_args,
                    "--proxy",
                    "none",
                    "--grace",
                    "0.5",
                    *(["--cacert", str(ctx.certs.cert)] if tls else []),
                    "-L",
                    f"0:127.0.0.1:{ctx.target_port}",
                    f"{'wss' if tls else 'ws'}://{ADDR_B}:{ws_port}{WS_PATH}",
                ],
            )
            procs.append(client)
            line = client.wait_for_line("forwarding 127.0.0.1:")
            port = _port_in(r"forwarding 127\.0\.0\.1:(\d+)", line)
        except BaseException:
            RunningTunnel(0, procs).stop()
            raise
        return Started("127.0.0.1", RunningTunnel(port, procs))

    return start


@dataclasses.dataclass(frozen=True)
class Tunnel:
    name: str
    start: Starter
    note: str
    #: ``tcp`` for direct (no WebSocket, no TLS), else ``ws`` and/or ``wss``.
    schemes: tuple[str, ...] = ("ws", "wss")


TUNNELS: dict[str, Tunnel] = {
    t.name: t
    for t in [
        Tunnel(
            "direct",
            _start_direct,
            "no tunnel: the probe connects to the target across the link (plain TCP)",
            schemes=("tcp",),
        ),
        Tunnel(
            "websocat",
            _websocat(tls_by_nginx=False),
            "`websocat --binary -E tcp-l: ws[s]://` -> `websocat --binary -E ws-l:` "
            "(wss: `wss-l: --pkcs12-der`, which negotiates TLS 1.2 only) `tcp:target`",
        ),
        Tunnel(
            "websocat-nginx",
            _websocat(tls_by_nginx=True),
            "wss only: the same websocat client -> nginx (TLS 1.3, proxy_pass with "
            "Upgrade) -> `websocat ws-l:` on 127.0.0.1 -> target",
            schemes=("wss",),
        ),
        Tunnel(
            "wstun",
            _wstun(pool=0),
            "wstun-client --pool 0 (one fresh WebSocket per connection) -> wstun-server",
        ),
        Tunnel(
            "wstun-pool",
            _wstun(pool=2),
            "wstun-client --pool 2 (warm wstun.v2 WebSockets) -> wstun-server",
        ),
    ]
}


# --- a run -----------------------------------------------------------------------


@dataclasses.dataclass
class Measured:
    tunnel: str
    scheme: str
    note: str
    argv: list[list[str]] = dataclasses.field(default_factory=list)
    warmup_ms: list[float] = dataclasses.field(default_factory=list)
    samples_ms: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def p90(self) -> float | None:
        """90th percentile, nearest rank."""
        if not self.samples_ms:
            return None
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def measure(ctx: Ctx, tunnel: Tunnel, scheme: str, args: argparse.Namespace) -> Measured:
    tls = scheme == "wss"
    result = Measured(tunnel.name, scheme, tunnel.note)
    if tunnel.name == "wstun-pool" and not ctx.pool_supported:
        result.skipped = "wstun-client does not accept --pool yet (not in wstun-client --help)"
        return result
    print(f"[rtt] {tunnel.name} {result.scheme}: starting", flush=True)
    try:
        started = tunnel.start(ctx, tls)
    except (OSError, RuntimeError, TimeoutError) as exc:
        result.errors.append(f"start failed: {exc}")
        print(f"[rtt] {tunnel.name} {result.scheme}: start failed: {exc}", flush=True)
        return result
    result.argv = [proc.argv for proc in started.tunnel.procs]
    host, port = started.host, started.tunnel.port
    try:
        # Warm-ups, alike for every tunnel: with --pool, the first tunnel
        # shows the server speaks wstun.v2 and the pool fills in the background.
        for _ in range(args.warmup):
            try:
                result.warmup_ms.append(probe(ctx.a, host, port, args.timeout))
            except (OSError, ValueError) as exc:
                result.errors.append(f"warm-up: {exc}")
        time.sleep(args.pause)
        for _ in range(args.connections):
            try:
                result.samples_ms.append(probe(ctx.a, host, port, args.timeout))
            except (OSError, ValueError) as exc:
                result.errors.append(str(exc))
            time.sleep(args.gap)
    finally:
        started.tunnel.stop()
    median = f"{result.median:.1f} ms" if result.median is not None else "-"
    print(
        f"[rtt] {tunnel.name} {result.scheme}: median {median}, "
        f"{len(result.samples_ms)}/{args.connections} ok",
        flush=True,
    )
    return result


def tool_versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "wstun-client": version_line([find_tool("wstun-client"), "--version"]),
        "wstun-server": version_line([find_tool("wstun-server"), "--version"]),
        "websocat": version_line([find_tool("websocat"), "--version"]),
        "openssl": version_line([find_tool("openssl"), "version"]),
        "nginx": version_line([find_tool("nginx"), "-v"]),
        "iproute2": version_line(["ip", "-V"]),
        "kernel": platform.release(),
    }


def pool_supported() -> bool:
    out = subprocess.run(
        [find_tool("wstun-client"), "--help"], capture_output=True, text=True, check=False
    )
    return "--pool" in out.stdout


def _summary(ms: list[float]) -> dict[str, float]:
    return {"min": min(ms), "median": statistics.median(ms), "max": max(ms)}


@dataclasses.dataclass
class Run:
    name: str
    date: str
    command: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    versions: dict[str, str]
    link: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: list[Measured] = dataclasses.field(default_factory=list)
    #: Where the processes' logs were kept, if anything failed.
    logs: str | None = None

    @property
    def rtt(self) -> float:
        value: float = self.link["rtt_ms"]
        return value

    def find(self, tunnel: str, scheme: str) -> Measured | None:
        return next(
            (m for m in self.results if m.tunnel == tunnel and m.scheme == scheme),
            None,
        )

    @property
    def direct(self) -> float | None:
        found = self.find("direct", "tcp")
        return found.median if found is not None else None

    def goals(self) -> list[dict[str, Any]]:
        """wstun-pool within 1 RTT + 5 ms of direct; wstun --pool 0 no slower than websocat.

        A goal is met only if its figure is within the limit and no connection
        of the cells involved failed (a failed connection has no time)."""
        goals: list[dict[str, Any]] = []

        def goal(text: str, figure: float | None, limit: float | None, cells: list[str]) -> None:
            found = [self.find(*cell.split(" ")) for cell in cells]
            failed = sum(len(m.errors) for m in found if m is not None)
            met = None if figure is None or limit is None else figure <= limit and not failed
            note = f"{failed} failed connection(s)" if failed else ""
            goals.append(
                {"goal": text, "figure_ms": figure, "limit_ms": limit, "met": met, "note": note}
            )

        direct = self.direct
        for scheme in SCHEMES:
            pool = self.find("wstun-pool", scheme)
            over = None
            if pool is not None and pool.median is not None and direct is not None:
                over = pool.median - direct
            goal(
                f"wstun-pool {scheme}:// median - direct median <= 1 RTT + 5 ms",
                over,
                self.rtt + 5.0,
                [f"wstun-pool {scheme}", "direct tcp"],
            )
            plain = self.find("wstun", scheme)
            for other in ("websocat", "websocat-nginx"):
                if scheme not in TUNNELS[other].schemes:
                    continue
                ref = self.find(other, scheme)
                goal(
                    f"wstun --pool 0 {scheme}:// median <= {other} {scheme}:// median",
                    plain.median if plain is not None else None,
                    ref.median if ref is not None else None,
                    [f"wstun {scheme}", f"{other} {scheme}"],
                )
        return goals

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "date": self.date,
            "command": self.command,
            "settings": self.settings,
            "machine": self.machine,
            "versions": self.versions,
            "link": self.link,
            "logs": self.logs,
            "direct_median_ms": self.direct,
            "results": [
                {**dataclasses.asdict(m), "median_ms": m.median, "p90_ms": m.p90}
                for m in self.results
            ],
            "goals": self.goals(),
        }


def _cell(m: Measured | None, direct: float | None, rtt: float) -> list[str]:
    if m is None:
        return ["-", "-", "-"]
    if m.skipped:
        return ["skipped", "", ""]
    if m.median is None or m.p90 is None:
        return ["failed", "", ""]
    median = f"{m.median:.1f} ({m.median / rtt:.2f} RTT)"
    p90 = f"{m.p90:.1f}"
    if direct is None or m.tunnel == "direct":
        return [median, p90, "-"]
    over = m.median - direct
    return [median, p90, f"{over:+.1f} ({over / rtt:+.2f} RTT)"]


def write_markdown(run: Run, path: Path) -> None:
    rtt = run.rtt
    link = run.link
    lines = [
        f"# wstun benchmark: setup latency over a {link['nominal_rtt_ms']:.0f} ms round trip, "
        f"{run.name} ({run.date})",
        "",
        f"Command: `{run.command}`",
        "",
        "Every figure is the time from `connect()` on a new connection to the first byte of "
        "the target's small answer (nginx, `return 200` of 3 bytes, about 150 bytes with "
        f"headers) to a {len(REQUEST)}-byte HTTP/1.0 request, in ms "
        f"(and in link RTTs), over {run.settings['connections']} sequential connections per "
        f"cell, after {run.settings['warmup']} warm-up connection(s) and a "
        f"{run.settings['pause']} s pause (not counted); {run.settings['gap']} s between "
        "connections. *- direct* is the median minus direct TCP's median.",
        "",
        "## Link",
        "",
        f"- delay: {link['delay_ms']:g} ms each way (bench/delaylink.py, TUN devices "
        f"{ADDR_A} <-> {ADDR_B} between two network namespaces)",
        f"- measured RTT (TCP connect, median of {link['connects']} at start and at end): "
        f"**{rtt:.1f} ms** (start {link['start']['median']:.1f}, "
        f"min {link['start']['min']:.1f}, max {link['start']['max']:.1f}; "
        f"end {link['end']['median']:.1f})",
        f"- forwarder (scheduling {link.get('forwarder_sched', '?')}): {link.get('counters', '?')}",
        "",
        "## Results",
        "",
        "| tunnel | ws median | ws p90 | ws - direct "
        "| wss median | wss p90 | wss - direct | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    direct = run.direct
    for name in run.settings["tunnels"]:
        schemes = TUNNELS[name].schemes
        cells: list[str] = []
        errors = 0
        for column in ("ws", "wss"):
            scheme = "tcp" if schemes == ("tcp",) and column == "ws" else column
            found = run.find(name, scheme)
            errors += len(found.errors) if found is not None else 0
            if scheme in schemes:
                cells += _cell(found, direct, rtt)
            else:
                cells += ["(plain TCP only)" if schemes == ("tcp",) else "(wss only)", "", ""]
        lines.append(f"| {name} | " + " | ".join([*cells, str(errors)]) + " |")
    lines += [
        "",
        "## Goals",
        "",
        "| goal | figure (ms) | limit (ms) | met |",
        "|---|---|---|---|",
    ]
    for goal in run.goals():
        figure = "-" if goal["figure_ms"] is None else f"{goal['figure_ms']:.1f}"
        limit = "-" if goal["limit_ms"] is None else f"{goal['limit_ms']:.1f}"
        met = {True: "yes", False: "**no**", None: "-"}[goal["met"]]
        if goal["note"]:
            met += f" ({goal['note']})"
        lines.append(f"| {goal['goal']} | {figure} | {limit} | {met} |")
    lines += ["", "## Tunnels", ""]
    for name in run.settings["tunnels"]:
        lines.append(f"- `{name}`: {TUNNELS[name].note}")
    skipped = [m for m in run.results if m.skipped]
    failed = [m for m in run.results if m.errors]
    if skipped or failed:
        lines += ["", "## Skipped and failed", ""]
        for m in skipped:
            lines.append(f"- {m.tunnel} {m.scheme}: skipped: {m.skipped}")
        for m in failed:
            shown = "; ".join(m.errors[:3]).replace("\n", " ")[:600]
            lines.append(f"- {m.tunnel} {m.scheme}: {len(m.errors)} error(s): {shown}")
    if run.logs:
        lines += ["", f"The processes' logs were kept in `{run.logs}`."]
    lines += ["", "## Tools", ""]
    lines += [f"- {k}: {v}" for k, v in run.versions.items()]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in run.machine.items()]
    lines += ["", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in run.settings.items()]
    path.write_text("\n".join(lines) + "\n")


def _remove_unless_failed(workdir: Path, bench: Run) -> None:
    if any(m.errors for m in bench.results) or not bench.link:
        bench.logs = str(workdir)
        print(f"[rtt] logs kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}


class _Deadline(Exception):
    """The whole run took longer than --max-seconds."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Deadline(f"the run took longer than its --max-seconds; stopped (signal {signum})")


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _start_link(a: Netns, b: Netns, delay_ms: float, logdir: Path) -> Proc:
    link = Proc(
        "delaylink",
        [
            sys.executable,
            str(DELAYLINK),
            "--ns-a",
            a.name,
            "--ns-b",
            b.name,
            "--dev",
            DEV,
            "--delay-ms",
            str(delay_ms),
        ],
        logdir,
    )
    link.wait_for_line("ready", timeout=10)
    for ns, local, peer in ((a, ADDR_A, ADDR_B), (b, ADDR_B, ADDR_A)):
        ns.ip("link", "set", "lo", "up")
        ns.ip("addr", "add", local, "peer", f"{peer}/32", "dev", DEV)
        ns.ip("link", "set", DEV, "up")
    return link


def run(args: argparse.Namespace, command: str) -> Run:
    tunnels = [t for t in TUNNEL_ORDER if t in args.tunnels]
    bench = Run(
        name=args.name,
        date=datetime.date.today().isoformat(),
        command=command,
        settings={
            "connections": args.connections,
            "warmup": args.warmup,
            "pause": args.pause,
            "gap": args.gap,
            "timeout": args.timeout,
            "delay_ms": args.delay_ms,
            "tunnels": tunnels,
        },
        machine={**machine_info(), "load_start": _load()},
        versions=tool_versions(),
    )
    prefix = f"wstunrtt-{os.getpid()}"
    stack = contextlib.ExitStack()
    try:
        # Logs, certificates; kept (and named in the results) if anything failed.
        workdir = Path(tempfile.mkdtemp(prefix="wstun-rtt-"))
        stack.callback(_remove_unless_failed, workdir, bench)
        certs = make_certs(workdir)
        a = Netns(f"{prefix}-a")
        stack.callback(a.delete)
        b = Netns(f"{prefix}-b")
        stack.callback(b.delete)
        link = _start_link(a, b, args.delay_ms, workdir)
        stack.callback(stop_once, link)
        target_port = b.free_port("0.0.0.0")
        target = start_nginx(
            b, workdir, "target", _TARGET_SERVER.format(port=target_port), target_port
        )
        stack.callback(stop_once, target)
        wait_listening_in(b, ADDR_B, target_port, target)
        ctx = Ctx(a, b, workdir, target_port, certs, pool_supported())
        stack.callback(ctx.stop_all)

        start = connect_times(a, ADDR_B, target_port, args.link_connects, args.timeout)
        print(f"[rtt] link: TCP connect median {statistics.median(start):.1f} ms", flush=True)
        for name in tunnels:
            tunnel = TUNNELS[name]
            for scheme in tunnel.schemes:
                bench.results.append(measure(ctx, tunnel, scheme, args))
        end = connect_times(a, ADDR_B, target_port, args.link_connects, args.timeout)
        link.stop()  # now, for its counters
        log = link.log_path.read_text().splitlines()
        counters = [ln for ln in log if ln.startswith("delaylink: packets=")]
        sched = next((ln.split("sched=", 1)[1] for ln in log if ln.startswith("ready ")), "?")
        bench.link = {
            "delay_ms": args.delay_ms,
            "nominal_rtt_ms": 2 * args.delay_ms,
            "connects": args.link_connects,
            "start": _summary(start),
            "end": _summary(end),
            "start_ms": start,
            "end_ms": end,
            "rtt_ms": statistics.median(start + end),
            "counters": counters[-1].removeprefix("delaylink: ") if counters else "?",
            "forwarder_sched": sched,
        }
    finally:
        # Clean up whatever happens, and let no second Ctrl-C or SIGTERM cut it short.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            stack.close()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    bench.machine["load_end"] = _load()
    return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Setup latency of new connections over a 40 ms RTT link (see bench/README.md)."
    )
    parser.add_argument("--connections", type=int, default=20, help="measured per cell (1-500)")
    parser.add_argument("--name", default="run", help="names the results files")
    parser.add_argument(
        "--tunnels",
        default=",".join(TUNNEL_ORDER),
        help=f"comma-separated subset of {','.join(TUNNEL_ORDER)}",
    )
    parser.add_argument("--warmup", type=int, default=1, help="uncounted connections first")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds after the warm-up")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between connections")
    parser.add_argument("--timeout", type=float, default=10.0, help="per connection, seconds")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way link delay")
    parser.add_argument("--link-connects", type=int, default=10, help="TCP connects to time RTT")
    parser.add_argument("--max-seconds", type=int, default=1200, help="stop the run after this")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)

    args.tunnels = [t.strip() for t in args.tunnels.split(",") if t.strip()]
    unknown = sorted(set(args.tunnels) - set(TUNNEL_ORDER))
    if unknown:
        parser.error(f"unknown tunnels: {', '.join(unknown)}")
    if not 1 <= args.connections <= 500:
        parser.error("--connections must be 1-500")
    if not 0 <= args.warmup <= 10 or not 1 <= args.link_connects <= 100:
        parser.error("--warmup must be 0-10 and --link-connects 1-100")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces and TUN devices)")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.name):
        parser.error("--name: letters, digits, '.', '_' and '-' only")

    command = shlex.join(["python", "bench/rtt.py", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.max_seconds)
    try:
        bench = run(args, command)
    except (_Deadline, KeyboardInterrupt) as exc:
        print(f"[rtt] stopped, nothing written: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{bench.date}-{args.name}-rtt"
    stem.with_suffix(".json").write_text(json.dumps(bench.to_json(), indent=2) + "\n")
    write_markdown(bench, stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text())
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
