"""Real wstun-server / wstun-client processes on loopback, and their logs.

Processes bind port 0 and the tests learn the port from the startup log line
(``listening on HOST:PORT`` / ``forwarding HOST:PORT -> ...``), so nothing
waits on a fixed delay. Every process is stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import signal
import socket
import ssl as ssl_module
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

LOG_TIMEOUT = 20.0


def find_command(name: str) -> str:
    """The console script installed next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run ./scripts/test.sh")
    return found


class Process:
    """A child process whose stderr lines are collected as they arrive."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, *, stdout: bool = False
    ) -> None:
        """``stdout``: collect stdout too, with stderr, as the lines (for scripts)."""
        self.argv = argv
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if stdout else subprocess.PIPE,
            text=True,
            env=env,
        )
        if stdout:
            self.popen.stderr = self.popen.stdout  # one pipe carries both
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._changed:
            return [m for line in self.lines if (m := regex.search(line))]

    def wait_for_sync(
        self, pattern: str, count: int = 1, timeout: float = LOG_TIMEOUT
    ) -> list[re.Match[str]]:
        """Block until ``count`` log lines match ``pattern``; fail with the log if not."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for line in self.lines if (m := regex.search(line))]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.popen.poll() is not None and not self._reader.is_alive()
                ):
                    break
                self._changed.wait(remaining)
        pytest.fail(
            f"no {count} line(s) matching {pattern!r} from {self.argv[0]}; log:\n"
            + "\n".join(self.lines)
        )

    async def wait_for(
        self, pattern: str, count: int = 1, timeout: float = LOG_TIMEOUT
    ) -> list[re.Match[str]]:
        return await asyncio.to_thread(self.wait_for_sync, pattern, count, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process by its pid and wait for it; kill it if it hangs."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(5)
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        return self.popen.returncode


class Wstun:
    """Starts servers and clients for one test and stops them afterwards."""

    def __init__(self) -> None:
        self.server_cmd = find_command("wstun-server")
        self.client_cmd = find_command("wstun-client")
        self.processes: list[Process] = []

    def spawn(
        self, argv: list[str], env: dict[str, str] | None = None, *, stdout: bool = False
    ) -> Process:
        process = Process(argv, env, stdout=stdout)
        self.processes.append(process)
        return process

    async def server(self, *args: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
        """wstun-server on 127.0.0.1:0; returns the process and its port."""
        proc = self.spawn([self.server_cmd, "--listen", "127.0.0.1:0", *args], env)
        # With --workers N each worker says it: the first line is enough (one port).
        match = (await proc.wait_for(r"listening on 127\.0\.0\.1:(\d+)"))[0]
        return proc, int(match.group(1))

    async def client(
        self, url: str, target: str, *args: str, env: dict[str, str] | None = None
    ) -> tuple[Process, int]:
        """wstun-client -L 0:TARGET URL; returns the process and its local port."""
        proc = self.spawn([self.client_cmd, "-L", f"0:{target}", url, *args], env)
        (match,) = await proc.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->")
        return proc, int(match.group(1))

    async def tunnel(
        self, target_port: int, *server_args: str, client_args: tuple[str, ...] = ()
    ) -> tuple[Process, Process, int]:
        """Server allowing 127.0.0.1:target_port and a client forwarding to it."""
        server, sport = await self.server("--allow", f"127.0.0.1:{target_port}", *server_args)
        client, lport = await self.client(
            f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{target_port}", *client_args
        )
        return server, client, lport

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def wstun() -> Iterator[Wstun]:
    runner = Wstun()
    try:
        yield runner
    finally:
        runner.stop_all()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def target() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Start an asyncio TCP server on 127.0.0.1 with a handler; returns its port.

    ``start(handler, ssl=context)`` serves TLS.
    """
    servers: list[asyncio.Server] = []
    # Every connection's writer, to close what a test left open before its loop ends.
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler, ssl: ssl_module.SSLContext | None = None) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=ssl)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    for writer in writers:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A listener whose accept queue is full: new connections hang in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def greets_then_half_closes(greeting: bytes) -> tuple[Handler, asyncio.Future[bytes]]:
    """A target handler that sends ``greeting``, half-closes, then reads to EOF.

    The future resolves to everything the target received after its EOF.
    """
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        writer.write_eof()
        received.set_result(await reader.read())
        writer.close()

    return handler, received


def echo_target(accepted: list[bytes] | None = None) -> Handler:
    """A target that echoes everything back and half-closes after the client's EOF.

    Each connection's received bytes are appended to ``accepted`` when it ends.
    A connection that breaks (reset) just ends.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received += chunk
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
        if accepted is not None:
            accepted.append(bytes(received))
        writer.close()

    return handler


async def echo_through(port: int, payload: bytes, timeout: float = 60.0) -> bytes:
    """As an application on 127.0.0.1:port: send payload, half-close, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def send_and_receive(port: int, payload: bytes, timeout: float = 60.0) -> bytes:
    """As an application: send payload, half-close, and read the answer to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    try:
        _, answer = await asyncio.wait_for(asyncio.gather(send(), reader.read()), timeout)
    finally:
        writer.close()
    return answer


def both_ways_target(payload: bytes, received: asyncio.Future[bytes]) -> Handler:
    """A target that sends ``payload`` while it reads the client's data to EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        _, data = await asyncio.gather(send(), reader.read())
        received.set_result(data)
        writer.close()

    return handler


def sha(data: bytes) -> str:
    """SHA-256 hex digest, to compare payloads without printing megabytes."""
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(port: int, timeout: float = LOG_TIMEOUT) -> None:
    """Wait until something accepts on 127.0.0.1:port (for peers that log nothing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


class UdpEcho:
    """A UDP echo target in a thread: each datagram back to its sender, empty ones too."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.received = 0
        self.sources: set[tuple[str, int]] = set()
        #: The first 8 bytes of each datagram, in the order they came.
        self.heads: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            self.sources.add(source)
            self.heads.append(data[:8])
            with contextlib.suppress(OSError):
                self.sock.sendto(data, source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    echo = UdpEcho()
    try:
        yield echo
    finally:
        echo.close()
