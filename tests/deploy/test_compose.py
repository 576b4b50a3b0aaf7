"""docker-compose.yml: valid by the Compose schema, accepted by the real CLIs, and the
same topology run natively (no Docker engine here): nginx with the compose
environment, server and client with the compose command lines, curl on the
client's port."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, TEMPLATE, Nginx, Wstun, render_template

COMPOSE = REPO / "docker-compose.yml"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def wstun_services(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Services whose command runs wstun-server or wstun-client: name -> argv."""
    return {
        name: [str(arg) for arg in service["command"]]
        for name, service in compose["services"].items()
        if str(service.get("command", [""])[0]).startswith("wstun-")
    }


def host_paths(argv: list[str], compose: dict[str, Any]) -> list[str]:
    """/run/secrets/NAME -> the file compose mounts there."""
    secrets = {
        f"/run/secrets/{name}": str(REPO / spec["file"])
        for name, spec in compose.get("secrets", {}).items()
    }
    return [secrets.get(arg, arg) for arg in argv]


def test_validates_against_the_compose_schema() -> None:
    """check-jsonschema --builtin-schema vendor.compose-spec accepts the file."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_wstun_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    """Each service's wstun command line, run with --check, is valid."""
    services = wstun_services(compose)
    assert {argv[0] for argv in services.values()} == {"wstun-server", "wstun-client"}
    for name, argv in services.items():
        command = [str(Path(sys.executable).parent / argv[0]), *host_paths(argv[1:], compose)]
        result = subprocess.run(
            [*command, "--check"], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "token: set" in result.stdout, name


def test_topology_is_private_healthy_and_consistent(compose: dict[str, Any]) -> None:
    """Ports only on 127.0.0.1, health-gated start, one secret, paths and proxy agree."""
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"
        assert service.get("restart") == "unless-stopped", name
    assert services["client"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["proxy"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["client"]["depends_on"]["proxy"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(services["server"]["healthcheck"]["test"])

    server = wstun_services(compose)["server"]
    client = wstun_services(compose)["client"]
    option = dict(zip(server[1::2], server[2::2], strict=False))
    proxy_address = services["proxy"]["networks"]["backend"]["ipv4_address"]
    assert option["--trusted-proxy"] == f"{proxy_address}/32"
    assert client[-1] == f"ws://proxy{option['--path']}/"
    mount = services["proxy"]["volumes"][0].split(":")
    assert REPO / mount[0] == TEMPLATE
    assert mount[1] == "/etc/nginx/templates/default.conf.template"
    rendered = render_template(TEMPLATE.read_text(), services["proxy"]["environment"])
    assert f"location {option['--path']}/ {{" in rendered
    # One upstream group over the replicas (least_conn); a new tunnel skips a
    # replica that is gone (error) or draining (503). nginx resolves the name at
    # start, so compose restarts it when it recreates the server.
    proxy_env = services["proxy"]["environment"]
    assert re.search(r"^upstream wstun_servers \{$", rendered, re.MULTILINE)
    assert "    least_conn;\n" in rendered
    assert f"    {proxy_env['WSTUN_UPSTREAM_SERVERS']}\n" in rendered
    assert proxy_env["WSTUN_UPSTREAM_SERVERS"].endswith("max_fails=0;")
    assert "proxy_pass http://wstun_servers;" in rendered
    assert "proxy_next_upstream error timeout http_503;" in rendered
    assert services["proxy"]["depends_on"]["server"]["restart"] is True
    # The engine's SIGKILL must not cut the server's drain short.
    stop_after = services["server"]["stop_grace_period"]
    assert stop_after.endswith("s")
    assert float(stop_after[:-1]) > float(option["--grace"])


def test_dockerfile_final_stage_is_small_and_unprivileged(compose: dict[str, Any]) -> None:
    """Multi-stage; the final stage is the virtualenv and a non-root user; COPYs pass."""
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines()]
    instructions = [words for words in lines if words and not words[0].startswith("#")]
    stages = [i for i, words in enumerate(instructions) if words[0] == "FROM"]
    assert len(stages) >= 2
    final = instructions[stages[-1] :]
    assert [w for w in final if w[0] == "COPY"] == [
        ["COPY", "--from=build", "/opt/wstun", "/opt/wstun"]
    ]
    (user,) = [w[1] for w in final if w[0] == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert not any(w[0] == "RUN" and ("apt-get" in w or "gcc" in w) for w in final)
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for words in instructions:
        if words[0] == "COPY" and not words[1].startswith("--from"):
            for source in words[1:-1]:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
    assert compose["services"]["server"]["build"] == "."
    assert compose["services"]["client"]["image"] == compose["services"]["server"]["image"]
    # The local image is built, never pulled (a registry could hold another wstun:local).
    local = compose["services"]["server"]["image"]
    for name, service in compose["services"].items():
        if service.get("image") == local:
            assert "build" in service or service.get("pull_policy") == "never", name


async def test_the_compose_topology_natively(
    wstun: Wstun, nginx: Nginx, target, compose: dict[str, Any]
) -> None:
    """client -> nginx -> server -> HTTP target with compose's own command lines: curl answers."""
    body = b"Hostname: target\r\nserved through the tunnel\r\n"

    async def http_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    tport = await target(http_target)
    env = compose["services"]["proxy"]["environment"]
    proxy_address = compose["services"]["proxy"]["networks"]["backend"]["ipv4_address"]
    # Compose's names and addresses -> loopback; everything else is compose's.
    mapping = {
        "0.0.0.0:8080": "127.0.0.1:0",
        "0.0.0.0:9100": "127.0.0.1:0",
        "target:80": f"127.0.0.1:{tport}",
        "0.0.0.0:8080:target:80": f"127.0.0.1:0:127.0.0.1:{tport}",
        f"{proxy_address}/32": "127.0.0.2/32",
    }
    services = wstun_services(compose)

    def native(argv: list[str]) -> list[str]:
        command = [wstun.server_cmd if argv[0] == "wstun-server" else wstun.client_cmd]
        return command + [mapping.get(arg, arg) for arg in host_paths(argv[1:], compose)]

    server = wstun.spawn(native(services["server"]))
    (match,) = await server.wait_for(r"listening on 127\.0\.0\.1:(\d+)")
    nport = await nginx.start(
        int(match.group(1)),
        read_timeout=env["WSTUN_READ_TIMEOUT"],
        http_extra="proxy_bind 127.0.0.2;",
    )
    mapping["ws://proxy/tunnel/"] = f"ws://127.0.0.1:{nport}/tunnel/"
    client = wstun.spawn(native(services["client"]))
    (match,) = await client.wait_for(r"forwarding 127\.0\.0\.1:(\d+) ->")

    result = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{match.group(1)}/"],
        capture_output=True,
        timeout=TIMEOUT,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == body
    (line,) = await server.wait_for(r"tunnel closed id=s\d+ peer=(\S+) .*end=(\S+)")
    assert line.groups() == ("127.0.0.1:0", "eof")  # the forwarded address, via the proxy
