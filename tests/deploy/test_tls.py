"""TLS at nginx and in wstun-server, with a CA and certificates made by trustme."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import trustme

from .conftest import Nginx, Process, Wstun, echo_target, echo_through, sha

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path, Path]:
    """A certificate for ``names`` signed by ``ca``; (ca.pem, chain.pem, key.pem)."""
    cert = ca.issue_cert(*names)
    ca_file, chain, key = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return ca_file, chain, key


async def refused_locally(local: int) -> None:
    """As an application: the tunnel can't open, so the connection ends with no data."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        writer.write(b"secret request")
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
    except ConnectionResetError:
        return
    assert data == b""


async def tls_nginx(
    wstun: Wstun, nginx: Nginx, target_port: int, chain: Path, key: Path
) -> tuple[Process, int]:
    """wstun-server (path /tunnel) behind nginx terminating TLS; (server, nginx port)."""
    server, sport = await wstun.server("--path", "/tunnel", "--allow", f"127.0.0.1:{target_port}")
    return server, await nginx.start(sport, tls=(chain, key))


async def test_tls_at_nginx_with_cacert(wstun: Wstun, nginx: Nginx, target, ca, tmp_path) -> None:
    """wss:// to nginx with --cacert: verified, and the tunnel is byte-exact."""
    ca_file, chain, key = write_cert(ca, tmp_path, "127.0.0.1")
    port = await target(echo_target())
    _, nport = await tls_nginx(wstun, nginx, port, chain, key)
    _, local = await wstun.client(
        f"wss://127.0.0.1:{nport}/tunnel/", f"127.0.0.1:{port}", "--cacert", str(ca_file)
    )
    payload = os.urandom(1 << 20)
    assert sha(await echo_through(local, payload)) == sha(payload)


@pytest.mark.parametrize(
    ("names", "use_cacert", "reason"),
    [
        (("127.0.0.1",), False, r"certificate verify failed: unable to get local issuer"),
        (("wstun.test",), True, r"certificate verify failed: IP address mismatch"),
    ],
    ids=["unknown-ca", "wrong-name"],
)
async def test_unverifiable_certificate_fails_clearly_and_sends_nothing(
    wstun: Wstun, nginx: Nginx, target, ca, tmp_path, names, use_cacert, reason
) -> None:
    """An unknown CA or a certificate for another name: a clear error, nothing sent."""
    ca_file, chain, key = write_cert(ca, tmp_path, *names)
    accepted: list[bytes] = []
    port = await target(echo_target(accepted))
    server, nport = await tls_nginx(wstun, nginx, port, chain, key)
    extra = ("--cacert", str(ca_file)) if use_cacert else ()
    client, local = await wstun.client(
        f"wss://127.0.0.1:{nport}/tunnel/", f"127.0.0.1:{port}", *extra
    )

    await refused_locally(local)

    await client.wait_for(rf"tunnel to 127\.0\.0\.1:{port} failed: {reason}")
    assert accepted == []
    assert "/tunnel/" not in nginx.access_log  # no HTTP request got through TLS
    assert not server.matches(r"tunnel closed|rejected")


async def test_tls_in_the_server(wstun: Wstun, target, ca, tmp_path) -> None:
    """wstun-server --tls-cert/--tls-key without a proxy; the client verifies it."""
    ca_file, chain, key = write_cert(ca, tmp_path, "127.0.0.1")
    port = await target(echo_target())
    _, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--tls-cert", str(chain), "--tls-key", str(key)
    )
    _, local = await wstun.client(
        f"wss://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "--cacert", str(ca_file)
    )
    payload = os.urandom(300_000)
    assert sha(await echo_through(local, payload)) == sha(payload)

    plain, plain_local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    await refused_locally(plain_local)
    await plain.wait_for(r"failed: ")


async def test_insecure_connects_and_warns(wstun: Wstun, target, ca, tmp_path) -> None:
    """--insecure skips verification (an unknown CA is accepted) and says so loudly."""
    _, chain, key = write_cert(ca, tmp_path, "wstun.test")
    port = await target(echo_target())
    _, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--tls-cert", str(chain), "--tls-key", str(key)
    )
    client, local = await wstun.client(
        f"wss://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "--insecure"
    )
    assert client.matches(r"WARNING .*--insecure: the server's TLS certificate is NOT verified")
    assert await echo_through(local, b"hello") == b"hello"


async def test_connect_to_keeps_the_url_name_for_tls(wstun: Wstun, target, ca, tmp_path) -> None:
    """--connect-to dials an address while the URL's name is checked in the certificate."""
    ca_file, chain, key = write_cert(ca, tmp_path, "tunnel.wstun.test")
    port = await target(echo_target())
    _, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--tls-cert", str(chain), "--tls-key", str(key)
    )
    url = f"wss://tunnel.wstun.test:{sport}/"
    _, local = await wstun.client(
        url, f"127.0.0.1:{port}", "--cacert", str(ca_file), "--connect-to", f"127.0.0.1:{sport}"
    )
    payload = os.urandom(100_000)
    assert sha(await echo_through(local, payload)) == sha(payload)

    # The same address with a name the certificate doesn't carry is refused.
    wrong, wrong_local = await wstun.client(
        f"wss://other.wstun.test:{sport}/", f"127.0.0.1:{port}",
        "--cacert", str(ca_file), "--connect-to", f"127.0.0.1:{sport}",
    )  # fmt: skip
    await refused_locally(wrong_local)
    await wrong.wait_for(r"failed: certificate verify failed")


async def test_tls_server_name_overrides_the_checked_name(
    wstun: Wstun, target, ca, tmp_path
) -> None:
    """--tls-server-name: SNI and the certificate check use it instead of the URL's host."""
    ca_file, chain, key = write_cert(ca, tmp_path, "tunnel.wstun.test")
    port = await target(echo_target())
    _, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--tls-cert", str(chain), "--tls-key", str(key)
    )
    plain, plain_local = await wstun.client(
        f"wss://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "--cacert", str(ca_file)
    )
    await refused_locally(plain_local)
    await plain.wait_for(r"failed: certificate verify failed")

    _, local = await wstun.client(
        f"wss://127.0.0.1:{sport}/", f"127.0.0.1:{port}",
        "--cacert", str(ca_file), "--tls-server-name", "tunnel.wstun.test",
    )  # fmt: skip
    payload = os.urandom(100_000)
    assert sha(await echo_through(local, payload)) == sha(payload)


async def failure_line(client: Process, local: int, connections: int = 3) -> str:
    """Open ``connections`` local connections that can't be tunnelled; the one failure line."""
    for _ in range(connections):
        await refused_locally(local)
    (match,) = await client.wait_for(r"WARNING wstun\.client: (tunnel to .*)")
    assert "Traceback" not in client.log
    return match.group(1)


async def test_ws_url_at_a_tls_server_says_use_wss(wstun: Wstun, target, ca, tmp_path) -> None:
    """ws:// against wstun-server --tls-cert: the client says to use wss://."""
    _, chain, key = write_cert(ca, tmp_path, "127.0.0.1")
    port = await target(echo_target())
    _, sport = await wstun.server(
        "--allow", f"127.0.0.1:{port}", "--tls-cert", str(chain), "--tls-key", str(key)
    )
    client, local = await wstun.client(f"ws://127.0.0.1:{sport}/", f"127.0.0.1:{port}")
    line = await failure_line(client, local)
    assert line == f"tunnel to 127.0.0.1:{port} failed: the server speaks TLS: use wss://"


async def test_ws_url_at_tls_nginx_says_use_wss(
    wstun: Wstun, nginx: Nginx, target, ca, tmp_path
) -> None:
    """ws:// against nginx's TLS port (which answers 400 in plain HTTP): use wss://."""
    _, chain, key = write_cert(ca, tmp_path, "127.0.0.1")
    port = await target(echo_target())
    _, nport = await tls_nginx(wstun, nginx, port, chain, key)
    client, local = await wstun.client(f"ws://127.0.0.1:{nport}/tunnel/", f"127.0.0.1:{port}")
    assert "use wss://" in await failure_line(client, local)


async def test_wss_url_at_a_plain_server_says_use_ws(wstun: Wstun, target, ca, tmp_path) -> None:
    """wss:// against a plain wstun-server: the client says to use ws://, and the
    server logs the TLS handshake on its plain port once, with what to do."""
    ca_file, _, _ = write_cert(ca, tmp_path, "127.0.0.1")
    port = await target(echo_target())
    server, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    client, local = await wstun.client(
        f"wss://127.0.0.1:{sport}/", f"127.0.0.1:{port}", "--cacert", str(ca_file)
    )
    line = await failure_line(client, local)
    assert line == (
        f"tunnel to 127.0.0.1:{port} failed: "
        "the server answered without TLS: use ws:// (or put a TLS proxy in front)"
    )
    (hint,) = await server.wait_for(r"WARNING wstun\.server: (TLS handshake from 127\.0\.0\.1 .*)")
    assert "must use ws://" in hint.group(1)
    assert "--tls-cert" in hint.group(1)
    assert len(server.matches("TLS handshake from")) == 1  # once per source a minute
    assert "Traceback" not in server.log
