"""-W end to end: stdin/stdout as the local side of one tunnel, and ssh through it.

stdin/stdout --> wstun-client -W --WS--> wstun-server --TCP--> target
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shlex
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import Handler, Process, Wstun, free_port, greets_then_half_closes, sha

TIMEOUT = 60.0


async def run_stdio(
    wstun: Wstun, url: str, target: str, stdin: bytes, *args: str
) -> tuple[int, bytes, bytes]:
    """wstun-client -W TARGET URL with ``stdin`` piped in; returns status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        wstun.client_cmd, "-W", target, url, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


def answer_after_eof(received: asyncio.Future[bytes]) -> Handler:
    """A target that reads to EOF, then answers with the digest and the data reversed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # only EOF ends this: the half-close must arrive
        received.set_result(data)
        writer.write(sha(data).encode() + data[::-1])
        await writer.drain()
        writer.close()

    return handler


async def test_pipe_half_close_then_answer(wstun: Wstun, target) -> None:
    """stdin's EOF reaches the target, whose answer still comes out on stdout; exit 0."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(answer_after_eof(received))
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    payload = os.urandom(3 * 1024 * 1024 + 17)

    status, out, err = await run_stdio(
        wstun, f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", payload
    )

    assert status == 0, err
    assert await asyncio.wait_for(received, TIMEOUT) == payload
    assert out == sha(payload).encode() + payload[::-1]
    assert err == b""  # quiet by default: ssh would show it to the user
    (line,) = await server.wait_for(r"tunnel closed .*up=(\d+) down=(\d+) .*end=(\S+)")
    assert line.groups() == (str(len(payload)), str(len(out)), "eof")


async def test_target_eof_closes_stdout_first(wstun: Wstun, target) -> None:
    """The target half-closes first: stdout ends while stdin still flows to the target."""
    greeting = os.urandom(100_000)
    handler, received = greets_then_half_closes(greeting)
    port = await target(handler)
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        wstun.client_cmd, "-W", f"127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.read(), TIMEOUT) == greeting  # to EOF
        late = os.urandom(200_000)
        proc.stdin.write(late)  # after stdout has ended
        await proc.stdin.drain()
        proc.stdin.close()
        assert await asyncio.wait_for(received, TIMEOUT) == late
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_regular_files_as_stdin_and_stdout(wstun: Wstun, target, tmp_path: Path) -> None:
    """stdin and stdout as regular files (no pipe support): the same exchange, exit 0."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(answer_after_eof(received))
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    payload = os.urandom(1024 * 1024)
    (tmp_path / "in").write_bytes(payload)
    argv = [wstun.client_cmd, "-W", f"127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/"]

    def run() -> int:
        with (tmp_path / "in").open("rb") as stdin, (tmp_path / "out").open("wb") as stdout:
            return subprocess.run(argv, stdin=stdin, stdout=stdout, timeout=TIMEOUT).returncode

    assert await asyncio.to_thread(run) == 0
    assert await asyncio.wait_for(received, TIMEOUT) == payload
    assert (tmp_path / "out").read_bytes() == sha(payload).encode() + payload[::-1]


async def test_one_socket_as_stdin_and_stdout(wstun: Wstun, target) -> None:
    """One socket as stdin and stdout (as under inetd or socat): the same exchange, exit 0."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    port = await target(answer_after_eof(received))
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    payload = os.urandom(1024 * 1024)
    far, near = socket.socketpair()
    with far, near:
        proc = await asyncio.create_subprocess_exec(
            wstun.client_cmd, "-W", f"127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/",
            stdin=near, stdout=near,
        )  # fmt: skip
        near.close()

        def exchange() -> bytes:
            far.sendall(payload)
            far.shutdown(socket.SHUT_WR)
            return b"".join(iter(lambda: far.recv(65536), b""))

        try:
            answer = await asyncio.wait_for(asyncio.to_thread(exchange), TIMEOUT)
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert await asyncio.wait_for(received, TIMEOUT) == payload
    assert answer == sha(payload).encode() + payload[::-1]


async def test_terminal_as_stdin(wstun: Wstun, target) -> None:
    """stdin on a terminal (read in a thread, left blocking): a line goes through."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.readline())
        writer.close()

    port = await target(handler)
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    controller, terminal = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            wstun.client_cmd, "-W", f"127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/",
            stdin=terminal, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.write(controller, b"hello over a tty\n")
        assert await asyncio.wait_for(received, TIMEOUT) == b"hello over a tty\n"
        # The target closed: stdout ends; stdin (the terminal) is still open.
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.read(), TIMEOUT) == b""
        os.write(controller, b"\x04")  # ^D: EOF on the terminal
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        os.close(controller)
        os.close(terminal)


@pytest.mark.parametrize(
    ("server_up", "allowed", "reason"),
    [
        (True, False, r"tunnel to 127\.0\.0\.1:{port} refused: 403 target not allowed"),
        (True, True, r"tunnel to 127\.0\.0\.1:{port} refused: 502 .*connection refused"),
        (False, True, r"tunnel to 127\.0\.0\.1:{port} failed: can't reach server"),
    ],
    ids=["403", "502", "no-server"],
)
async def test_refused_tunnel_exits_non_zero_with_one_line(
    wstun: Wstun, server_up: bool, allowed: bool, reason: str
) -> None:
    """A tunnel that can't open: exit 1, nothing on stdout, one line saying why."""
    port = free_port()
    sport = free_port()
    if server_up:
        _, sport = await wstun.server("--allow", f"127.0.0.1:{port if allowed else 1}")
    status, out, err = await run_stdio(
        wstun, f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}", b"never sent"
    )
    assert status == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wstun-client: ")
    assert re.search(reason.format(port=port), lines[0])


async def test_broken_tunnel_exits_non_zero(wstun: Wstun, target) -> None:
    """A target that resets mid-stream: exit 1 with the reason on one line."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    port = await target(handler)
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        wstun.client_cmd, "-W", f"127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"hello")  # stdin stays open: only the reset can end this
    await proc.stdin.drain()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    assert out == b""
    (line,) = err.decode().splitlines()
    assert line.startswith(f"wstun-client: tunnel to 127.0.0.1:{port} ended: ")
    assert "1011" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_signal_cuts_an_open_tunnel(wstun: Wstun, target, sig: signal.Signals) -> None:
    """SIGTERM cuts at once; SIGHUP after a short grace: exit 1, one line, 1011 to the server."""
    arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        arrived.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    port = await target(handler)
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        wstun.client_cmd, "-W", f"127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"hello")  # stdin stays open: the tunnel has no reason to end
        await proc.stdin.drain()
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    assert out == b""
    assert err.decode().splitlines() == [
        f"wstun-client: tunnel to 127.0.0.1:{port} ended: stopped by a signal"
    ]
    (line,) = await server.wait_for(r"tunnel closed .*end=(\S+)")
    assert line.group(1) == "error"
    assert "peer closed the WebSocket with 1011" in line.string


# --------------------------------------------------------------- real ssh

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself: it wants its absolute path


def keygen(path: Path) -> str:
    """A new ed25519 key without passphrase; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wstun-test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture
def ssh_keys(tmp_path: Path) -> tuple[Path, Path, str]:
    """Host and user keys made for this test: (host key, user key, host public key)."""
    host_pub = keygen(tmp_path / "host_key")
    user_pub = keygen(tmp_path / "user_key")
    (tmp_path / "authorized_keys").write_text(user_pub + "\n")
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    return tmp_path / "host_key", tmp_path / "user_key", host_pub


async def start_sshd(wstun: Wstun, tmp_path: Path, host_key: Path) -> tuple[Process, int]:
    """OpenSSH's sshd in the foreground on a free loopback port, logging to stderr."""
    for _ in range(3):  # another process may grab the port between probe and bind
        port = free_port()
        config = tmp_path / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {host_key}\n"
            f"PidFile {tmp_path / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        sshd = wstun.spawn([SSHD, "-D", "-e", "-f", str(config)])
        found = await sshd.wait_for(r"Server listening on 127\.0\.0\.1 port (\d+)|Bind to port")
        if found[0].group(1):
            return sshd, port
        sshd.stop()
    pytest.fail("sshd could not bind a loopback port")


def ssh_options(tmp_path: Path, user_key: Path, proxy: str) -> list[str]:
    return [
        "-F", "/dev/null",
        "-o", f"ProxyCommand={proxy}",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "LogLevel=ERROR",
        "-i", str(user_key),
    ]  # fmt: skip


async def run(argv: list[str], stdin: bytes = b"") -> bytes:
    """Run a command; fail the test with its stderr if it fails; returns stdout."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"{shlex.join(argv)}: {err.decode()}"
    return out


async def ssh_sessions(opts: list[str], port: int, tmp_path: Path, size: int) -> None:
    """Four sessions to 127.0.0.1:port: a command; ``size`` random bytes up with cat and
    back down with cat; a file up with scp; all byte-exact."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    destination = [*opts, "-p", str(port), f"{user}@127.0.0.1"]

    assert await run(["ssh", *destination, "echo hello from; uname -s"]) == b"hello from\nLinux\n"

    upload = os.urandom(size)
    copy = tmp_path / "uploaded"
    await run(["ssh", *destination, f"cat > {shlex.quote(str(copy))}"], stdin=upload)
    assert sha(copy.read_bytes()) == sha(upload)

    download = await run(["ssh", *destination, f"cat {shlex.quote(str(copy))}"])
    assert sha(download) == sha(upload)

    scp_source, scp_copy = tmp_path / "scp-source", tmp_path / "scp-copy"
    scp_source.write_bytes(os.urandom(1024 * 1024 + 3))
    await run(
        ["scp", "-q", *opts, "-P", str(port), str(scp_source), f"{user}@127.0.0.1:{scp_copy}"]
    )
    assert sha(scp_copy.read_bytes()) == sha(scp_source.read_bytes())


async def test_ssh_through_proxycommand(
    wstun: Wstun, tmp_path: Path, ssh_keys: tuple[Path, Path, str]
) -> None:
    """ssh with ProxyCommand='wstun-client -W %h:%p URL': a command, cat and scp, byte-exact."""
    host_key, user_key, host_pub = ssh_keys
    sshd, port = await start_sshd(wstun, tmp_path, host_key)
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    # Only our sshd's key is trusted: the session really reaches it through the tunnel.
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    proxy = f"{shlex.quote(wstun.client_cmd)} -W %h:%p ws://127.0.0.1:{sport}/"
    await ssh_sessions(ssh_options(tmp_path, user_key, proxy), port, tmp_path, 2 * 1024 * 1024)

    # Four ssh sessions, each one tunnel that ended cleanly on the server.
    lines = await server.wait_for(r"tunnel closed .*end=(\S+)", count=4)
    assert [line.group(1) for line in lines] == ["eof"] * 4, server.log + sshd.log
    assert len(sshd.matches(r"Accepted publickey for")) == 4
