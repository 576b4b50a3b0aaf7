"""A real tunnel set up from nothing but a config file: wstun-client --config FILE.

app --TCP--> wstun-client --WS--> wstun-server --TCP--> echo target
"""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import Wstun, echo_target, echo_through, sha


async def _client_from_file(wstun: Wstun, config: Path) -> int:
    """wstun-client --config FILE, no other argument; returns its local port."""
    client = wstun.spawn([wstun.client_cmd, "--config", str(config)])
    (match,) = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->")
    return int(match.group(1))


async def test_tunnel_from_a_config_file(wstun: Wstun, target, tmp_path: Path) -> None:
    """URL and -L from the file: bytes cross the tunnel and come back exactly."""
    port = await target(echo_target())
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    config = tmp_path / "client.toml"
    config.write_text(f'url = "ws://127.0.0.1:{sport}/"\nlocal = ["0:127.0.0.1:{port}"]\n')

    local = await _client_from_file(wstun, config)

    payload = os.urandom(256 * 1024)
    assert sha(await echo_through(local, payload)) == sha(payload)


async def test_token_file_from_a_config_file(wstun: Wstun, target, tmp_path: Path) -> None:
    """token_file in the file (relative to it) reaches a server that needs the token;
    a private token file draws no warning."""
    token = tmp_path / "secrets" / "token"
    token.parent.mkdir()
    token.write_text("config-file-token\n")
    token.chmod(0o600)
    port = await target(echo_target())
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}", "--token-file", str(token))
    config = tmp_path / "client.toml"
    config.write_text(
        f'url = "ws://127.0.0.1:{sport}/"\n'
        'token_file = "secrets/token"\n'
        f'local = ["0:127.0.0.1:{port}"]\n'
    )

    local = await _client_from_file(wstun, config)

    assert await echo_through(local, b"through with the token") == b"through with the token"
    (client,) = (proc for proc in wstun.processes if proc is not server)
    await client.wait_for(r"server ok \(ok: token accepted\)")
    assert "warning:" not in client.log
    assert "warning:" not in server.log
