"""Real nginx and tinyproxy in front of real wstun processes, on loopback.

nginx runs with the repository's own template (deploy/nginx/wstun.conf.template),
rendered the way the official nginx image renders it (envsubst limited to the
variables that are set), inside a minimal nginx.conf with its own prefix,
temp directories and pid file. Every peer is stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..e2e.conftest import (
    LOG_TIMEOUT,
    Handler,
    Process,
    Wstun,
    echo_target,
    echo_through,
    free_port,
    sha,
    target,
    wait_listening,
    wstun,
)

__all__ = [
    "REPO",
    "TEMPLATE",
    "Handler",
    "Nginx",
    "Process",
    "Wstun",
    "echo_target",
    "echo_through",
    "free_port",
    "render_template",
    "scrape",
    "sha",
    "target",
    "upstream_servers",
    "wstun",
]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nginx" / "wstun.conf.template"
NGINX = "/usr/sbin/nginx"
TINYPROXY = "/usr/bin/tinyproxy"


def render_template(text: str, variables: Mapping[str, str]) -> str:
    """envsubst with an explicit variable list, as the nginx image runs it:
    ``$NAME`` and ``${NAME}`` are replaced for the listed names only."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables[name] if name in variables else match.group(0)

    rendered = re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, text)
    left = re.findall(r"\$\{?WSTUN_\w+", rendered)
    assert not left, f"template variables not set: {left}"
    return rendered


def upstream_servers(addresses: Iterable[str]) -> str:
    """WSTUN_UPSTREAM_SERVERS for these replicas: a server line each, as the
    template recommends them (max_fails=0)."""
    return "\n    ".join(f"server {address} max_fails=0;" for address in addresses)


def find_peer(path: str) -> str:
    """A Debian-packaged peer the tests drive; fail (never skip) when missing."""
    if not os.access(path, os.X_OK):
        found = shutil.which(Path(path).name)
        if found is None:
            pytest.fail(f"{path} is missing; ./scripts/install-debian-deps.sh installs it")
        return found
    return path


class Nginx:
    """One nginx on 127.0.0.1 with the repository's template, for one test."""

    def __init__(self, wstun: Wstun, directory: Path) -> None:
        self.wstun = wstun
        self.directory = directory
        self.process: Process | None = None
        self.port = 0

    async def start(
        self,
        upstream_port: int,
        *,
        read_timeout: str = "60s",
        tls: tuple[Path, Path] | None = None,
        http_extra: str = "",
    ) -> int:
        """Start nginx in front of wstun-server at 127.0.0.1:upstream_port; returns its port.

        ``tls`` (certificate, key) makes it listen with ``ssl``; ``http_extra``
        adds http-level directives (the template is included at http level,
        as the nginx image's conf.d is).
        """
        return await self.start_replicas(
            [upstream_port], read_timeout=read_timeout, tls=tls, http_extra=http_extra
        )

    async def start_replicas(
        self,
        upstream_ports: Sequence[int],
        *,
        read_timeout: str = "60s",
        tls: tuple[Path, Path] | None = None,
        http_extra: str = "",
    ) -> int:
        """As :meth:`start`, in front of a replica at each 127.0.0.1:PORT (the
        template's upstream group, one server line each, as the template says)."""
        self.port = free_port()
        listen = f"127.0.0.1:{self.port}" + (" ssl" if tls else "")
        conf = render_template(
            TEMPLATE.read_text(),
            {
                "WSTUN_PROXY_LISTEN": listen,
                "WSTUN_UPSTREAM_SERVERS": upstream_servers(
                    f"127.0.0.1:{port}" for port in upstream_ports
                ),
                "WSTUN_READ_TIMEOUT": read_timeout,
            },
        )
        d = self.directory
        (d / "wstun.conf").write_text(conf)
        if tls:
            http_extra += f"\nssl_certificate {tls[0]};\nssl_certificate_key {tls[1]};"
        temp_paths = "\n".join(
            f"{kind}_temp_path {d / kind};" for kind in ("client_body", "proxy", "fastcgi")
        )
        (d / "nginx.conf").write_text(
            f"""
daemon off;
master_process off;
worker_processes 1;
pid {d / "nginx.pid"};
error_log stderr info;
events {{ worker_connections 256; }}
http {{
    access_log {d / "access.log"};
    default_type application/octet-stream;
    {temp_paths}
    uwsgi_temp_path {d / "uwsgi"};
    scgi_temp_path {d / "scgi"};
    {http_extra}
    include {d / "wstun.conf"};
}}
"""
        )
        self.process = self.wstun.spawn(
            [find_peer(NGINX), "-p", str(d), "-e", "stderr", "-c", str(d / "nginx.conf")]
        )
        await wait_listening(self.port)
        return self.port

    @property
    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def nginx(wstun: Wstun, tmp_path: Path) -> Nginx:
    """An nginx for this test; the wstun fixture stops it, by pid, with its processes."""
    directory = tmp_path / "nginx"
    directory.mkdir()
    return Nginx(wstun, directory)


async def scrape(process: Process) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics from a process started with --metrics-listen 127.0.0.1:0.

    Returns ``{(sample name, sorted labels): value}``.
    """
    (match,) = await process.wait_for(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")

    def get() -> str:
        with urllib.request.urlopen(match.group(1), timeout=LOG_TIMEOUT) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text: str = response.read().decode()
            return text

    text = await asyncio.to_thread(get)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
