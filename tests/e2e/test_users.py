"""Users with their own rules (--users-file), and live reloads (SIGHUP, --reload-interval).

Real wstun-server and wstun-client processes on loopback: each user's client
carries its own token file; the server's log lines, refusals and metrics name
the user; a reload closes with 1008 exactly the tunnels the new rules no
longer allow (their applications see a reset) and leaves the others moving
every byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest

from .conftest import Process, Wstun, echo_target, free_port, sha
from .test_tunnel import TIMEOUT, expect_reset

LISTEN = r"listening on 127\.0\.0\.1:(\d+)"


class Users:
    """A users file and each user's token file, rewritten as a test goes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "users.toml"
        self.tokens: dict[str, Path] = {}

    def token_file(self, name: str) -> Path:
        if name not in self.tokens:
            path = self.root / f"{name}.token"
            path.write_text(f"token-of-{name}-{os.urandom(8).hex()}\n")
            path.chmod(0o600)
            self.tokens[name] = path
        return self.tokens[name]

    def write(self, **users: dict[str, object]) -> None:
        """One table per user: their token's hash, then the keys given."""
        tables = []
        for name, keys in users.items():
            token = self.token_file(name).read_text().strip()
            lines = [
                f"[users.{name}]",
                f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
            ]
            for key, value in keys.items():
                shown = (
                    f"[{', '.join(repr(v) for v in value)}]" if isinstance(value, list) else value
                )
                lines.append(f"{key} = {shown}".replace("'", '"'))
            tables.append("\n".join(lines))
        staged = self.path.with_suffix(".new")
        staged.write_text("\n\n".join(tables) + "\n")
        staged.replace(self.path)  # replaced whole, as an editor or a Kubernetes Secret does


@pytest.fixture
def users(tmp_path: Path) -> Users:
    return Users(tmp_path)


async def client_for(
    wstun: Wstun, users: Users, name: str, sport: int, target: str, *args: str
) -> tuple[Process, int]:
    return await wstun.client(
        f"ws://127.0.0.1:{sport}/", target, "--token-file", str(users.token_file(name)), *args
    )


async def held(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An application connection through a tunnel, seen working (an echo came back)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"hello"
    return reader, writer


async def moves_exactly(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], size: int = 1 << 20
) -> None:
    """``size`` random bytes go through and come back the same."""
    reader, writer = connection
    payload = os.urandom(size)
    writer.write(payload)
    echoed, _ = await asyncio.wait_for(
        asyncio.gather(reader.readexactly(size), writer.drain()), TIMEOUT
    )
    assert sha(echoed) == sha(payload)


async def exchange(port: int) -> None:
    """A new connection through the tunnel moves bytes exactly, then closes."""
    connection = await held(port)
    await moves_exactly(connection, 4096)
    connection[1].close()


async def sees_reset(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """The application's connection is reset: never a clean EOF."""
    reader, writer = connection
    try:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


async def metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), TIMEOUT)).decode()
    writer.close()
    return text


async def raw_upgrade(port: int, token: str) -> tuple[int, str]:
    """An upgrade with ``token``: the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "GET /?to=127.0.0.1:1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    answer = (await asyncio.wait_for(reader.read(), TIMEOUT)).decode()
    writer.close()
    head, _, body = answer.partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


# ----------------------------------------------------------------- each user's rules


async def test_each_user_reaches_what_their_rules_allow(wstun: Wstun, target, users) -> None:
    """alice reaches her database, the robot only the shared cache; a deny beats
    alice's allow; the server-wide rule applies to both; lines and metrics name them."""
    db, cache, secret = [await target(echo_target()) for _ in range(3)]
    users.write(
        alice={"allow": [f"127.0.0.1:{db}", f"127.0.0.1:{secret}"]},
        robot={"allow": [], "max_tunnels": 2},
    )
    mport = free_port()
    server, sport = await wstun.server(
        "--users-file", str(users.path),
        "--allow", f"127.0.0.1:{cache}",
        "--deny", f"127.0.0.1:{secret}",
        "--metrics-listen", f"127.0.0.1:{mport}",
    )  # fmt: skip
    await server.wait_for(r"users: 2 \(alice, robot\)")

    _, alice_db = await client_for(wstun, users, "alice", sport, f"127.0.0.1:{db}")
    _, alice_cache = await client_for(wstun, users, "alice", sport, f"127.0.0.1:{cache}")
    _, alice_secret = await client_for(wstun, users, "alice", sport, f"127.0.0.1:{secret}")
    _, robot_db = await client_for(wstun, users, "robot", sport, f"127.0.0.1:{db}")
    robot, robot_cache = await client_for(wstun, users, "robot", sport, f"127.0.0.1:{cache}")

    for port in (alice_db, alice_cache, robot_cache):
        await exchange(port)
    await server.wait_for(r"tunnel closed id=\S+ user=alice peer=", count=2)
    await server.wait_for(r"tunnel closed id=\S+ user=robot peer=")
    await expect_reset(wstun, robot_db)
    await server.wait_for(
        rf"rejected peer=\S+ user=robot status=403 reason=target not allowed: 127\.0\.0\.1:{db}"
    )
    await expect_reset(wstun, alice_secret)
    await server.wait_for(
        rf"rejected peer=\S+ user=alice status=403 reason=target not allowed: "
        rf"127\.0\.0\.1:{secret} \(denied by"
    )

    # max_tunnels = 2 for the robot: two held, the third refused; alice unaffected.
    first, second = await held(robot_cache), await held(robot_cache)
    await expect_reset(wstun, robot_cache)
    await server.wait_for(
        r"user=robot status=503 reason=too many tunnels for user robot \(limit 2\)"
    )
    await exchange(alice_cache)
    first[1].close()
    await server.wait_for(r"tunnel closed id=\S+ user=robot ", count=2)
    await exchange(robot_cache)
    second[1].close()

    text = await metrics(mport)
    assert 'wstun_server_user_tunnels_opened_total{user="alice"} 3.0' in text
    assert 'wstun_server_user_tunnels_opened_total{user="robot"}' in text
    assert 'wstun_server_user_payload_bytes_total{direction="up",user="alice"}' in text
    assert robot.popen.poll() is None


async def test_an_unknown_token_is_401_without_naming_users(wstun: Wstun, users) -> None:
    """Whatever users the file holds, a wrong token gets the same 401."""
    users.write(alice={"allow": []}, robot={})
    _, sport = await wstun.server("--users-file", str(users.path))
    answers = [await raw_upgrade(sport, token) for token in ("wrong", "token-of-alice", "x" * 43)]
    assert {status for status, _ in answers} == {401}
    assert len({body for _, body in answers}) == 1
    body = answers[0][1]
    assert "alice" not in body
    assert "robot" not in body
    status, _ = await raw_upgrade(sport, users.token_file("alice").read_text().strip())
    assert status == 403  # alice's token is known: her rules refuse the target


# ----------------------------------------------------------------- live reloads


async def test_sighup_closes_what_the_new_rules_forbid_and_nothing_else(
    wstun: Wstun, target, users
) -> None:
    """Tunnels open for two users; alice is removed and the robot's rules narrowed:
    alice's tunnels and the robot's no-longer-allowed one are reset, the robot's
    allowed one moves every byte, new tunnels follow the new rules."""
    db, cache = await target(echo_target()), await target(echo_target())
    users.write(
        alice={"allow": [f"127.0.0.1:{db}"]},
        robot={"allow": [f"127.0.0.1:{db}", f"127.0.0.1:{cache}"]},
    )
    mport = free_port()
    server, sport = await wstun.server(
        "--users-file", str(users.path), "--metrics-listen", f"127.0.0.1:{mport}"
    )
    _, alice_db = await client_for(wstun, users, "alice", sport, f"127.0.0.1:{db}")
    _, robot_db = await client_for(wstun, users, "robot", sport, f"127.0.0.1:{db}")
    _, robot_cache = await client_for(wstun, users, "robot", sport, f"127.0.0.1:{cache}")
    alice_open = await held(alice_db)
    robot_db_open = await held(robot_db)
    robot_cache_open = await held(robot_cache)

    users.write(robot={"allow": [f"127.0.0.1:{cache}"]})
    server.popen.send_signal(signal.SIGHUP)
    await server.wait_for(
        r"reloaded \(SIGHUP\): users added: none; removed: alice; changed: robot; "
        r"server-wide rules unchanged; tunnels closed: 2"
    )
    await sees_reset(alice_open)
    await sees_reset(robot_db_open)
    await moves_exactly(robot_cache_open)
    await server.wait_for(
        r"closing peer=\S+ user=alice target=\S+: policy changed: user alice removed"
    )
    await server.wait_for(
        r"tunnel closed id=s\d+ user=alice .*end=error reason=\"client read failed: WebSocket "
        r"closed by this side with 1008 \(policy changed: user alice removed\)\""
    )
    await server.wait_for(
        rf"closing peer=\S+ user=robot target=127\.0\.0\.1:{db}: policy changed: "
        rf"target 127\.0\.0\.1:{db} no longer allowed"
    )

    # New tunnels follow the new rules.
    await expect_reset(wstun, alice_db)
    await server.wait_for(r"status=401")
    await expect_reset(wstun, robot_db)
    await server.wait_for(rf"user=robot status=403 reason=target not allowed: 127\.0\.0\.1:{db}")
    await exchange(robot_cache)

    # A broken file changes nothing, and says where it is broken.
    users.path.write_text(users.path.read_text() + '\n[users.eve]\ntoken_sha256 = "abc"\n')
    server.popen.send_signal(signal.SIGHUP)
    await server.wait_for(
        rf"reload \(SIGHUP\) failed, the rules in force stay: .*{users.path}:\d+: "
        r"users\.eve: token_sha256"
    )
    await moves_exactly(robot_cache_open)
    await exchange(robot_cache)
    await expect_reset(wstun, robot_db)
    text = await metrics(mport)
    assert 'wstun_server_config_reloads_total{result="ok"} 1.0' in text
    assert 'wstun_server_config_reloads_total{result="error"} 1.0' in text
    robot_cache_open[1].close()


async def test_reload_interval_picks_up_a_rewritten_file(wstun: Wstun, target, users) -> None:
    """--reload-interval: the file is replaced (as a Kubernetes Secret is) and the
    removed user's open tunnel is reset without any signal."""
    db = await target(echo_target())
    users.write(alice={"allow": [f"127.0.0.1:{db}"]}, robot={"allow": [f"127.0.0.1:{db}"]})
    server, sport = await wstun.server("--users-file", str(users.path), "--reload-interval", "0.2")
    _, alice_db = await client_for(wstun, users, "alice", sport, f"127.0.0.1:{db}")
    _, robot_db = await client_for(wstun, users, "robot", sport, f"127.0.0.1:{db}")
    alice_open, robot_open = await held(alice_db), await held(robot_db)

    users.write(alice={"allow": [f"127.0.0.1:{db}"]})
    await server.wait_for(r"reloaded \(files changed\): users added: none; removed: robot")
    await sees_reset(robot_open)
    await moves_exactly(alice_open)
    alice_open[1].close()


async def test_listen_rules_are_per_user_and_a_reload_closes_the_port(
    wstun: Wstun, target, users
) -> None:
    """alice may expose a port and the robot may not; once alice's listen rule is
    gone, her port closes, the connection it carried is reset, and her client stops
    that forward with the server's reason."""
    service = await target(echo_target())
    port = free_port()
    users.write(alice={"allow_listen": [f"127.0.0.1:{port}"]}, robot={})
    server, sport = await wstun.server("--users-file", str(users.path))
    url = f"ws://127.0.0.1:{sport}/"
    forward = ["-R", f"{port}:127.0.0.1:{service}", url, "--token-file"]

    robot = wstun.spawn([wstun.client_cmd, *forward, str(users.token_file("robot"))])
    await robot.wait_for(rf"403 listening not allowed: 127\.0\.0\.1:{port}; this forward stops")
    await server.wait_for(r"rejected peer=\S+ user=robot status=403 reason=listening not allowed")

    alice = wstun.spawn([wstun.client_cmd, *forward, str(users.token_file("alice"))])
    await alice.wait_for(r"reverse 127\.0\.0\.1:\d+ on the server -> ")
    carried = await held(port)
    await moves_exactly(carried)

    users.write(alice={}, robot={})
    server.popen.send_signal(signal.SIGHUP)
    await server.wait_for(
        r"reloaded \(SIGHUP\): users added: none; removed: none; changed: alice; .*"
        r"reverse listeners closed: 1"
    )
    await sees_reset(carried)
    await server.wait_for(
        rf"reverse 127\.0\.0\.1:{port}: port closed \(policy changed: listening on "
        rf"127\.0\.0\.1:{port} no longer allowed\)"
    )
    await alice.wait_for(r"this forward stops")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_sighup_rereads_the_policy_file_without_a_users_file(
    wstun: Wstun, target, tmp_path: Path
) -> None:
    """The server-wide policy file reloads the same way: with no users at all, a
    target taken out of it is cut, the one left in goes on."""
    db, cache = await target(echo_target()), await target(echo_target())
    policy = tmp_path / "policy.toml"
    policy.write_text(f'allow = ["127.0.0.1:{db}", "127.0.0.1:{cache}"]\n')
    server, sport = await wstun.server("--policy-file", str(policy))
    _, to_db = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{db}")
    _, to_cache = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{cache}")
    db_open, cache_open = await held(to_db), await held(to_cache)

    policy.write_text(f'allow = ["127.0.0.1:{cache}"]\n')
    server.popen.send_signal(signal.SIGHUP)
    await server.wait_for(r"server-wide rules changed; tunnels closed: 1;")
    await sees_reset(db_open)
    await moves_exactly(cache_open)
    await expect_reset(wstun, to_db)
    cache_open[1].close()
