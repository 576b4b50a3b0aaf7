"""The tunnels compared: each starts fresh on loopback ports in front of a target.

A tunnel is started for one workload run and stopped after it. ``port`` is
where the workload connects; ``procs`` are the processes whose CPU time and
memory are charged to the tunnel (none for direct TCP).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .procs import Proc, free_port, wait_listening

__all__ = [
    "TUNNELS",
    "RunningTunnel",
    "TunnelSpec",
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


@dataclasses.dataclass(frozen=True)
class TunnelSpec:
    """A tunnel kind: its name, how to start it, the largest scale run it gets."""

    name: str
    start: Starter
    #: Tunnels that fork a process per connection get at most this many.
    max_scale: int = 1_000_000
    note: str = ""


def _direct(target: int, logdir: Path) -> RunningTunnel:
    return RunningTunnel(target, [])


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


def _port_after(prefix: str, line: str) -> str:
    match = re.search(re.escape(prefix) + r"(\d+)", line)
    assert match is not None, line
    return match.group(1)


TUNNELS: dict[str, TunnelSpec] = {
    spec.name: spec
    for spec in [
        TunnelSpec("direct", _direct, note="no tunnel: the workload talks to the target"),
        TunnelSpec(
            "socat",
            _socat,
            max_scale=1000,
            note="plain TCP relay, forks a process per connection",
        ),
        TunnelSpec("websocat", _websocat, note="websocat server + websocat client"),
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
        ),
        TunnelSpec(
            "wstun-w2",
            _wstun("--workers", "2"),
            note="wstun-server --workers 2 + wstun-client",
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
    TUNNELS["wstun-base"] = TunnelSpec(
        "wstun-base", _wstun(bin_dir=bin_dir), note=f"wstun from {bin_dir} ({version}), defaults"
    )
    names = ["wstun-base"]
    client_help = subprocess.run(
        [str(bin_dir / "wstun-client"), "--help"], capture_output=True, text=True, check=False
    ).stdout
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
    }
    socat = subprocess.run(
        [find_tool("socat"), "-V"], capture_output=True, text=True, check=False
    ).stdout
    for line in socat.splitlines():
        if line.startswith("socat version"):
            versions["socat"] = line.strip()
    return versions
