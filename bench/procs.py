"""Processes for the benchmark: start, wait for a port, stop by pid, and measure.

CPU time and memory are read from /proc for a process and all its live
descendants, so tunnels that fork per connection (socat, websockify) are
charged for their children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "Proc",
    "cpu_seconds",
    "free_port",
    "free_udp_port",
    "process_tree",
    "rss_kib",
    "tcp_listening",
    "udp_bound",
    "udp_drops",
    "wait_listening",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A loopback port free for both UDP and TCP right now (bound, then released).

    UDP workloads need both: iperf3 runs its TCP control connection and its UDP
    stream to one port number, and dnsmasq binds both."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no loopback port free for both UDP and TCP")


def udp_bound(port: int) -> bool:
    """Whether a UDP socket is bound to ``port`` (IPv4) right now, from /proc/net/udp."""
    suffix = f":{port:04X}"
    with open("/proc/net/udp") as table:
        next(table, None)  # the header
        return any(line.split()[1].endswith(suffix) for line in table if line.strip())


def tcp_listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (IPv4) right now, from /proc/net/tcp:
    without connecting, which a forwarder would carry on to its target (iperf3 takes
    such an empty connection for a test, and may then drop the real one)."""
    suffix = f":{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table, None)
        return any(
            len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == "0A"
            for fields in (line.split() for line in table)
        )


def udp_drops(port: int) -> int | None:
    """Datagrams the kernel dropped at the UDP sockets bound to ``port`` (IPv4; their
    receive buffer was full), from /proc/net/udp's ``drops``; None if none is bound."""
    suffix = f":{port:04X}"
    found = None
    with open("/proc/net/udp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            if len(fields) > 12 and fields[1].endswith(suffix):
                found = (found or 0) + int(fields[-1])
    return found


def wait_listening(port: int, timeout: float = 20.0, proc: Proc | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port; fail if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if proc is not None and proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited early:\n{proc.output()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


class Proc:
    """A child process with its output in a log file; stopped by its own pid."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = logdir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, **env} if env else None
        self.popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout if stdout is not None else self._log,
            stderr=self._log,
            env=full_env,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_for_line(self, needle: str, timeout: float = 20.0) -> str:
        """Wait until a log line contains ``needle``; return that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: no line with {needle!r}; log:\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it hangs; the forked children of ``fork`` tunnels too."""
        children = [pid for pid in process_tree([self.pid]) if pid != self.pid]
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start at ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live descendant."""
    children = _children_map()
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds of the tree, including reaped children.

    A process's cutime/cstime covers only children it has already reaped, which
    are no longer in the tree, so nothing is counted twice.
    """
    ticks = 0
    for pid in process_tree(roots):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime are fields 14-17 (1-based) of stat.
        ticks += sum(int(v) for v in fields[11:15])
    return ticks / _CLK_TCK


def rss_kib(roots: Iterable[int]) -> int:
    """Resident set size (VmRSS) summed over the tree, in KiB."""
    total = 0
    for pid in process_tree(roots):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total
