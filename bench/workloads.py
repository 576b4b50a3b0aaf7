"""The targets the tunnels lead to, and the workloads run through them.

Every workload returns a flat dict of figures plus ``ok`` (the workload moved
its bytes correctly: no tool error, every request answered, every echo
byte-exact) and ``detail`` (why not, when it didn't).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import dnsload
from .procs import (
    Proc,
    cpu_seconds,
    free_port,
    free_udp_port,
    rss_kib,
    udp_drops,
    wait_listening,
)
from .tunnels import RunningTunnel, find_tool

__all__ = [
    "Sizes",
    "Targets",
    "bulk_echo",
    "churn",
    "dns_qps",
    "flow_drops",
    "iperf",
    "iperf_udp",
    "redis_ping",
    "scale",
]

Result = dict[str, Any]
GIB = 1024**3
BENCH_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each workload does; the profiles in run.py pick these."""

    iperf_seconds: float = 3.0
    #: When set, iperf3 moves this many bytes instead of running for a time.
    iperf_bytes: int | None = None
    redis_requests_1: int = 20_000
    redis_requests_50: int = 50_000
    churn_seconds: int = 3
    churn_connections: int = 10
    bulk_bytes: int = 8 * 1024 * 1024
    scale_counts: tuple[int, ...] = (1000, 10_000)
    #: iperf-udp: iperf3 -u -b RATE -l LENGTH, for whole seconds (iperf3's -t)...
    udp_rate: str = "200M"
    udp_length: int = 1200
    udp_seconds: int = 3
    #: ...or, when set, this many bytes (-n) at that rate.
    udp_bytes: int | None = None
    #: dns-qps: at most this many queries, for at most this many seconds, from
    #: ``dns_sources`` source sockets (flows), ``dns_window`` outstanding in all.
    dns_queries: int = 2_000_000
    dns_seconds: int = 3
    dns_sources: int = 8
    dns_window: int = 64
    #: A query unanswered this long is lost.
    dns_timeout: float = 1.0


class Targets:
    """The servers the tunnels lead to: iperf3, redis, nginx, echo, dnsmasq. Started once."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}

    def port(self, name: str) -> int:
        proc = self._procs.get(name)
        if proc is None or proc.popen.poll() is not None:
            getattr(self, f"_start_{name}")()
        return self.ports[name]

    def _start_iperf3(self) -> None:
        # Free for UDP too: iperf-udp's stream goes to the same port number.
        port = free_udp_port()
        proc = Proc(
            "iperf3-server",
            [find_tool("iperf3"), "-s", "-B", "127.0.0.1", "-p", str(port)],
            self.workdir,
        )
        wait_listening_quiet(port, proc)
        self._procs["iperf3"], self.ports["iperf3"] = proc, port

    def _start_redis(self) -> None:
        port = free_port()
        argv = [find_tool("redis-server"), "--bind", "127.0.0.1", "--port", str(port)]
        argv += ["--save", "", "--appendonly", "no", "--maxclients", "10000"]
        argv += ["--dir", str(self.workdir), "--protected-mode", "no"]
        proc = Proc("redis-server", argv, self.workdir)
        wait_listening(port, proc=proc)
        self._procs["redis"], self.ports["redis"] = proc, port

    def _start_nginx(self) -> None:
        port = free_port()
        root = self.workdir / "nginx"
        (root / "www").mkdir(parents=True, exist_ok=True)
        (root / "www" / "small.txt").write_bytes(b"x" * 612)
        conf = root / "nginx.conf"
        server = f"        listen 127.0.0.1:{port} backlog=4096;\n        root {root}/www;"
        conf.write_text(
            nginx_conf(root, server, connections=8192, main="worker_rlimit_nofile 20000;\n")
        )
        proc = Proc(
            "nginx", [find_tool("nginx"), "-p", str(root), "-c", str(conf), "-e", "stderr"], root
        )
        wait_listening(port, proc=proc)
        self._procs["nginx"], self.ports["nginx"] = proc, port

    def _start_echo(self) -> None:
        proc = Proc(
            "echo",
            [sys.executable, str(BENCH_DIR / "scale.py"), "echo"],
            self.workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.popen.stdout is not None
        port = int(proc.popen.stdout.readline())
        self._procs["echo"], self.ports["echo"] = proc, port

    def _start_dnsmasq(self) -> None:
        """dnsmasq answering ``bench.example`` (and names under it) with 10.9.9.9 itself."""
        port = free_udp_port()  # dnsmasq binds TCP on it too
        argv = [find_tool("dnsmasq"), "--no-daemon", "--conf-file=/dev/null", "--no-resolv"]
        argv += ["--no-hosts", f"--port={port}", "--listen-address=127.0.0.1"]
        argv += ["--bind-interfaces", f"--address=/{dnsload.NAME}/{dnsload.ANSWER}"]
        argv += ["--user=root", f"--pid-file={self.workdir / 'dnsmasq.pid'}"]
        proc = Proc("dnsmasq", argv, self.workdir)
        deadline = time.monotonic() + 20
        while not dnsload.query_once(port, timeout=0.2):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError(f"dnsmasq does not answer on {port}:\n{proc.output()}")
        self._procs["dnsmasq"], self.ports["dnsmasq"] = proc, port

    def restart(self, name: str) -> None:
        """Stop one target so the next ``port(name)`` starts it afresh."""
        proc = self._procs.pop(name, None)
        if proc is not None:
            _stop_target(proc)

    def stop(self) -> None:
        for name in list(self._procs):
            self.restart(name)


def _stop_target(proc: Proc) -> None:
    if proc.popen.stdin is not None:
        with contextlib.suppress(OSError):
            proc.popen.stdin.close()
    proc.stop()


def wait_listening_quiet(port: int, proc: Proc) -> None:
    """Wait for a port without connecting to it (iperf3 logs every connection)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as table:
            hex_port = f":{port:04X} "
            if any(hex_port in line and " 0A " in line for line in table):
                return
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
        time.sleep(0.02)
    raise TimeoutError(f"{proc.name} does not listen on {port}")


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr warn;
{main}events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
{server}
    }}
}}
"""


def nginx_conf(root: Path, server: str, *, connections: int = 1024, main: str = "") -> str:
    """A one-process nginx in the foreground, its files under ``root``, serving one
    ``server`` block (its directives, indented); ``main`` adds top-level lines."""
    return _NGINX_CONF.format(root=root, server=server, connections=connections, main=main)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


def _run_polling(
    argv: list[str], timeout: float, poll: Callable[[], object], every: float = 0.1
) -> subprocess.CompletedProcess[str]:
    """``_run``, calling ``poll()`` every ``every`` seconds while the command runs."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout)
                poll()
                time.sleep(every)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


def _failed(detail: str, **figures: Any) -> Result:
    return {"ok": False, "detail": detail[-600:], **figures}


# ------------------------------------------------------------------ iperf3


def iperf(tunnel: RunningTunnel, sizes: Sizes, *, reverse: bool, streams: int) -> Result:
    """iperf3 through the tunnel: Gbit/s received and the tunnel's CPU s per GiB."""
    argv = [find_tool("iperf3"), "-c", "127.0.0.1", "-p", str(tunnel.port), "-J"]
    if sizes.iperf_bytes is not None:
        argv += ["-n", str(sizes.iperf_bytes)]
    else:
        argv += ["-t", str(sizes.iperf_seconds)]
    argv += ["-P", str(streams)] + (["-R"] if reverse else [])
    cpu_before = cpu_seconds(tunnel.pids)
    done = _run(argv, timeout=sizes.iperf_seconds + 60)
    cpu = cpu_seconds(tunnel.pids) - cpu_before
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return _failed(f"iperf3 exit {done.returncode}: {done.stdout}{done.stderr}")
    if "error" in report or done.returncode != 0:
        return _failed(f"iperf3: {report.get('error', done.stderr)}")
    received = report["end"]["sum_received"]
    sent = report["end"]["sum_sent"]
    moved = int(received["bytes"])
    figures: Result = {
        "gbps": received["bits_per_second"] / 1e9,
        "bytes": moved,
        "cpu_s_per_gib": cpu / (moved / GIB) if tunnel.pids and moved else None,
    }
    if moved <= 0 or moved > int(sent["bytes"]):
        return _failed(f"iperf3 received {moved} of {sent['bytes']} bytes sent", **figures)
    return {"ok": True, "detail": "", **figures}


# ----------------------------------------------------------- iperf3 -u


def iperf_udp(tunnel: RunningTunnel, sizes: Sizes) -> Result:
    """iperf3 -u at a fixed offered rate, one stream: what arrived (Mbit/s), the loss.

    iperf3's control connection is TCP to the same port number as its UDP
    stream, so the tunnel carries both (``start_udp(..., tcp=True)``). Loss is
    not a failure (UDP drops under overload, by design); a run is ok when
    iperf3 finished and something arrived.
    """
    argv = [find_tool("iperf3"), "-c", "127.0.0.1", "-p", str(tunnel.port), "-J", "-u"]
    argv += ["-b", sizes.udp_rate, "-l", str(sizes.udp_length)]
    if sizes.udp_bytes is not None:
        argv += ["-n", str(sizes.udp_bytes)]
    else:
        argv += ["-t", str(sizes.udp_seconds)]
    cpu_before = cpu_seconds(tunnel.pids)
    # The tunnel's socket may be gone when iperf3 ends (websocat's udp-l client exits
    # once its WebSocket does), so its drop counter is read while iperf3 runs.
    drops: list[int] = []
    polled = [udp_drops(tunnel.port) if tunnel.pids else None]
    done = _run_polling(argv, sizes.udp_seconds + 60, lambda: polled.append(udp_drops(tunnel.port)))
    cpu = cpu_seconds(tunnel.pids) - cpu_before
    if tunnel.pids:
        polled.append(udp_drops(tunnel.port))
        drops = [n for n in polled if n is not None]
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return _failed(f"iperf3 exit {done.returncode}: {done.stdout}{done.stderr}")
    if "error" in report or done.returncode != 0:
        return _failed(f"iperf3: {report.get('error', done.stderr)}")
    received = report["end"]["sum_received"]
    sent = report["end"]["sum_sent"]
    moved = int(received["bytes"])
    entry_drops = drops[-1] - drops[0] if polled[0] is not None and drops else None
    figures: Result = {
        # The tunnel's own UDP socket (where iperf3 sends) overflowed: the tunnel
        # did not read fast enough.
        "entry_drops": entry_drops,
        "mbps": received["bits_per_second"] / 1e6,
        "loss_pct": float(received["lost_percent"]),
        "sent_mbps": sent["bits_per_second"] / 1e6,
        "bytes": moved,
        "datagrams": int(received["packets"]),
        "lost": int(received["lost_packets"]),
        "jitter_ms": float(received["jitter_ms"]),
        "cpu_s_per_gib": cpu / (moved / GIB) if tunnel.pids and moved else None,
    }
    if moved <= 0 or moved > int(sent["bytes"]):
        return _failed(f"iperf3 received {moved} of {sent['bytes']} bytes sent", **figures)
    return {"ok": True, "detail": "", **figures}


_FLOW_LINE = re.compile(r"flow closed .*?dropped_up=(\d+) dropped_down=(\d+)")


def flow_drops(tunnel: RunningTunnel) -> Result:
    """Datagrams wstun itself dropped, from its ``flow closed`` lines (after it stopped).

    ``dropped_up`` counts on the client (its queue toward the WebSocket full),
    ``dropped_down`` on the server; the rest of iperf3's loss was lost in the
    kernel (a socket's receive buffer full). Empty for other tunnels.
    """
    if not any(proc.name.startswith("wstun-") for proc in tunnel.procs):
        return {}
    dropped: dict[str, int | None] = {"client": None, "server": None}
    for proc in tunnel.procs:
        side = "client" if proc.name.endswith("client") else "server"
        with contextlib.suppress(OSError):
            for match in _FLOW_LINE.finditer(proc.log_path.read_text(errors="replace")):
                dropped[side] = (dropped[side] or 0) + int(match.group(1)) + int(match.group(2))
    # None: no flow line (a build without them, or the flow never opened).
    return {"wstun_dropped_client": dropped["client"], "wstun_dropped_server": dropped["server"]}


# ------------------------------------------------------------------- DNS


def dns_qps(
    tunnel: RunningTunnel, sizes: Sizes, *, sources: int, workdir: Path, tool: str = "auto"
) -> Result:
    """DNS queries per second to dnsmasq through the tunnel, from ``sources`` sockets.

    dnsperf when it is installed (``tool="auto"``), else bench/dnsload.py; each
    source socket is a flow through the tunnel, at most ``sizes.dns_window``
    queries outstanding in all. A run is ok when every query was answered with
    NOERROR (a bounded window never overruns a tunnel's queue: a lost query is
    a fault).
    """
    if tool == "auto":
        try:
            find_tool("dnsperf")
            tool = "dnsperf"
        except FileNotFoundError:
            tool = "dnsload"
    cpu = _SideCpu(tunnel)
    if tool == "dnsperf":
        figures = _dnsperf(tunnel.port, sizes, sources, workdir)
    else:
        figures = _dnsload(tunnel.port, sizes, sources)
    if "detail" in figures:
        return _failed(str(figures.pop("detail")), **figures)
    figures.update(cpu.per_op_us(int(figures["answered"]), "query"))
    figures["tool"] = tool
    if figures["answered"] <= 0 or figures["lost"] or figures.get("bad"):
        return _failed(
            f"{tool}: {figures['answered']} of {figures['sent']} answered, "
            f"{figures['lost']} lost, {figures.get('bad', 0)} bad",
            **figures,
        )
    return {"ok": True, "detail": "", **figures}


def _dnsperf(port: int, sizes: Sizes, sources: int, workdir: Path) -> Result:
    """dnsperf -c SOURCES -q WINDOW -l SECONDS -n QUERIES -v; p50/p99 from its -v lines."""
    data = workdir / "dnsperf-queries.txt"
    data.write_text(f"{dnsload.NAME} A\n")
    out_path = workdir / f"dnsperf-{time.monotonic_ns()}.txt"
    argv = [find_tool("dnsperf"), "-s", "127.0.0.1", "-p", str(port), "-d", str(data)]
    argv += ["-c", str(sources), "-T", "1", "-q", str(sizes.dns_window)]
    # -n: runs through the one-line file, so queries.
    argv += ["-l", str(sizes.dns_seconds), "-n", str(sizes.dns_queries)]
    argv += ["-t", f"{sizes.dns_timeout:g}", "-v"]
    try:
        with out_path.open("w") as out:
            done = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=sizes.dns_seconds + sizes.dns_timeout + 60,
                check=False,
            )
        text = out_path.read_text(errors="replace")
    finally:
        out_path.unlink(missing_ok=True)
    latencies: list[float] = []
    for line in text.splitlines():
        if line.startswith("> "):  # > NOERROR bench.example A 0.000186
            with contextlib.suppress(ValueError, IndexError):
                latencies.append(float(line.rsplit(" ", 1)[1]))
    summary = text[text.find("Statistics:") :] if "Statistics:" in text else text[-2000:]

    def number(pattern: str) -> float | None:
        found = re.search(pattern, summary)
        return float(found.group(1)) if found else None

    sent = number(r"Queries sent:\s+(\d+)")
    answered = number(r"Queries completed:\s+(\d+)")
    lost = number(r"Queries lost:\s+(\d+)")
    qps = number(r"Queries per second:\s+([\d.]+)")
    noerror = number(r"Response codes:.*?NOERROR (\d+)")
    if done.returncode != 0 or sent is None or answered is None or lost is None or qps is None:
        return {"detail": f"dnsperf exit {done.returncode}: {summary[-600:]}"}
    latencies.sort()
    p50, p99 = dnsload.percentile(latencies, 0.5), dnsload.percentile(latencies, 0.99)
    return {
        "qps": qps,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "sent": int(sent),
        "answered": int(answered),
        "lost": int(lost),
        "bad": int(answered) - int(noerror or 0),
        "seconds": number(r"Run time \(s\):\s+([\d.]+)"),
    }


def _dnsload(port: int, sizes: Sizes, sources: int) -> Result:
    argv = [sys.executable, str(BENCH_DIR / "dnsload.py"), str(port)]
    argv += ["--queries", str(sizes.dns_queries), "--sources", str(sources)]
    argv += ["--window", str(sizes.dns_window), "--seconds", str(sizes.dns_seconds)]
    argv += ["--timeout", f"{sizes.dns_timeout:g}"]
    done = _run(argv, timeout=sizes.dns_seconds + sizes.dns_timeout + 60)
    try:
        report: Result = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"detail": f"dnsload exit {done.returncode}: {done.stdout}{done.stderr}"}
    return report


# ------------------------------------------------------- CPU per operation


def _side_pids(tunnel: RunningTunnel) -> dict[str, list[int]]:
    """The tunnel's processes by side: ``client`` (named so), ``server`` (the rest)."""
    sides: dict[str, list[int]] = {"client": [], "server": []}
    for proc in tunnel.procs:
        sides["client" if proc.name.endswith("client") else "server"].append(proc.pid)
    return sides


class _SideCpu:
    """CPU seconds of each side of the tunnel over a span, for a figure per operation."""

    def __init__(self, tunnel: RunningTunnel) -> None:
        self.sides = _side_pids(tunnel)
        self.before = {side: cpu_seconds(pids) for side, pids in self.sides.items() if pids}

    def per_op_us(self, operations: int, label: str) -> Result:
        """``cpu_us_per_<label>`` for the whole tunnel, and ``_client`` / ``_server``."""
        if operations <= 0 or not self.before:
            return {}
        used = {side: cpu_seconds(self.sides[side]) - b for side, b in self.before.items()}
        figures: Result = {f"cpu_us_per_{label}": sum(used.values()) / operations * 1e6}
        if len(used) == 2:
            for side, seconds in used.items():
                figures[f"cpu_us_per_{label}_{side}"] = seconds / operations * 1e6
        return figures


# ------------------------------------------------------------------- redis


def redis_ping(tunnel: RunningTunnel, requests: int, clients: int) -> Result:
    """redis-benchmark -t ping (the PING_MBULK row): requests/s, p50 and p99 in ms."""
    argv = [find_tool("redis-benchmark"), "-h", "127.0.0.1", "-p", str(tunnel.port)]
    argv += ["-t", "ping", "-n", str(requests), "-c", str(clients), "--csv"]
    cpu = _SideCpu(tunnel)
    done = _run(argv, timeout=300)
    rows = {row[0]: row for row in csv.reader(io.StringIO(done.stdout)) if row}
    row = rows.get("PING_MBULK")
    if done.returncode != 0 or row is None:
        return _failed(f"redis-benchmark exit {done.returncode}: {done.stdout}{done.stderr}")
    # -t ping runs PING_INLINE then PING_MBULK, ``requests`` each.
    figures = {
        "rps": float(row[1]),
        "p50_ms": float(row[4]),
        "p99_ms": float(row[6]),
        **cpu.per_op_us(2 * requests, "request"),
    }
    if "error" in done.stderr.lower() or figures["rps"] <= 0:
        return _failed(f"redis-benchmark: {done.stderr}", **figures)
    return {"ok": True, "detail": "", **figures}


# ------------------------------------------------------------------- churn


def churn(tunnel: RunningTunnel, sizes: Sizes) -> Result:
    """wrk with ``Connection: close``: a new connection, and so tunnel, per request."""
    argv = [find_tool("wrk"), "-t", "1", "-c", str(sizes.churn_connections)]
    argv += ["-d", f"{sizes.churn_seconds}s", "-H", "Connection: close"]
    argv += [f"http://127.0.0.1:{tunnel.port}/small.txt"]
    cpu = _SideCpu(tunnel)
    done = _run(argv, timeout=sizes.churn_seconds + 60)
    out = done.stdout
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if done.returncode != 0 or rate is None or total is None:
        return _failed(f"wrk exit {done.returncode}: {out}{done.stderr}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    figures = {
        "conn_per_s": float(rate.group(1)),
        "requests": int(total.group(1)),
        "errors": errors,
        **cpu.per_op_us(int(total.group(1)), "conn"),
    }
    if figures["requests"] <= 0 or errors:
        return _failed(f"wrk: {errors} errors\n{out}", **figures)
    return {"ok": True, "detail": "", **figures}


# -------------------------------------------------------------- bulk echo


def bulk_echo(tunnel: RunningTunnel, size: int) -> Result:
    """``size`` random bytes to the echo target and back, compared byte for byte."""
    payload = os.urandom(size)
    received = bytearray()
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", tunnel.port), timeout=60) as sock:
            errors: list[BaseException] = []

            def send() -> None:
                try:
                    sock.sendall(payload)
                except OSError as exc:
                    errors.append(exc)

            sender = threading.Thread(target=send)
            sender.start()
            while len(received) < size:
                chunk = sock.recv(256 * 1024)
                if not chunk:
                    break
                received += chunk
            sender.join()
    except OSError as exc:
        return _failed(f"bulk echo: {exc}", bytes=len(received))
    seconds = time.monotonic() - started
    same = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    figures = {"bytes": len(received), "seconds": seconds}
    if errors or not same:
        return _failed(
            f"bulk echo: {len(received)} of {size} bytes, equal={same} {errors}", **figures
        )
    return {"ok": True, "detail": "", **figures}


# ------------------------------------------------------------------- scale


def scale(tunnel: RunningTunnel, count: int, concurrency: int = 100) -> Result:
    """``count`` held connections echoing 1 KiB each; RSS per connection of the tunnel."""
    base_rss = rss_kib(tunnel.pids)
    argv = [sys.executable, str(BENCH_DIR / "scale.py"), "hold", str(tunnel.port), str(count)]
    with subprocess.Popen(
        [*argv, "--concurrency", str(concurrency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        line = holder.stdout.readline()
        # Measured while every connection is open and has echoed its KiB.
        rss = rss_kib(tunnel.pids)
        with contextlib.suppress(OSError):
            holder.stdin.write("close\n")
            holder.stdin.flush()
            holder.stdout.readline()
        try:
            holder.wait(60)
        except subprocess.TimeoutExpired:
            holder.kill()
    if not line:
        return _failed(f"scale holder exited with {holder.returncode} before reporting")
    report = json.loads(line)
    ok = int(report["ok"])
    figures: Result = {
        "ok_conns": ok,
        "failed": int(report["failed"]),
        "open_s": float(report["open_seconds"]),
        "rss_kib_per_conn": (rss - base_rss) / ok if tunnel.pids and ok else None,
        "rss_kib": rss if tunnel.pids else None,
    }
    if report["failed"]:
        return _failed(f"{report['failed']} of {count} failed: {report['errors']}", **figures)
    return {"ok": True, "detail": "", **figures}


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="wstun-bench-"))
