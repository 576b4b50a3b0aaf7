"""The client's one check of the server at startup: a plain ``GET <path>/healthz``.

It travels the way tunnels do (the proxy, ``--connect-to``, TLS with the
client's verification, the extra headers and the token) but asks for no
upgrade, so it opens no tunnel anywhere. With ``X-Wstun-Check`` a
wstun-server checks the token and answers ``200 ok: token accepted`` (or
``no token needed``) or the 401 a tunnel would get; an older one answers its
plain ``ok``; any other WebSocket server refuses a request that is not an
upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from urllib.parse import SplitResult, unquote, urlsplit

from wstun.common import __version__
from wstun.common.errors import HandshakeError
from wstun.common.protocol import CHECK_HEADER, probe_url

__all__ = ["MAX_ANSWER", "ProbeAnswer", "connect_request", "probe"]

#: Bytes of the answer read at most (a status line, headers and a short body).
MAX_ANSWER = 16 * 1024

#: (status, reason), reason being the body's first line or the status phrase.
ProbeAnswer = tuple[int, str]


def connect_request(authority: str, proxy: SplitResult) -> bytes:
    """``CONNECT authority`` for an HTTP proxy, with the proxy URL's user info (if any)
    as Basic credentials."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.username is not None:
        secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        lines.append(f"Proxy-Authorization: Basic {base64.b64encode(secret).decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _open(
    host: str, port: int, proxy: str | None, tls: ssl.SSLContext | None, server_name: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if proxy is None:
        return await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=server_name if tls else None
        )
    parts = urlsplit(proxy)
    proxy_tls = ssl.create_default_context() if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port or (443 if proxy_tls else 80), ssl=proxy_tls
    )
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer.write(connect_request(authority, parts))
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        writer.close()
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise HandshakeError(0, f"proxy failed: {line}")
    if tls is not None:
        await writer.start_tls(tls, server_hostname=server_name)
    return reader, writer


async def probe(
    url: str,
    *,
    address: tuple[str, int],
    proxy: str | None,
    tls: ssl.SSLContext | None,
    server_name: str,
    headers: list[tuple[str, str]],
    timeout: float,
) -> ProbeAnswer:
    """GET the health path of the server at ``url``; its status and one-line reason.

    ``address`` is where to connect (the URL's or ``--connect-to``'s),
    ``server_name`` the Host and TLS name. OS, TLS and timeout errors
    propagate for the caller to put in words.
    """
    parts = urlsplit(probe_url(url))
    async with asyncio.timeout(timeout):
        reader, writer = await _open(*address, proxy, tls, server_name)
        try:
            host = parts.netloc.rpartition("@")[2]
            request = [
                f"GET {parts.path} HTTP/1.1",
                f"Host: {host}",
                f"User-Agent: wstun/{__version__}",
                f"{CHECK_HEADER}: 1",
                *(f"{name}: {value}" for name, value in headers),
                "Connection: close",
            ]
            writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
            answer = await reader.read(MAX_ANSWER)
            while len(answer) < MAX_ANSWER and (more := await reader.read(MAX_ANSWER)):
                answer += more
        finally:
            writer.close()
            # Its descriptor is gone before anyone hears the answer.
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    pieces = status_line.split(" ", 2)
    if len(pieces) < 2 or not pieces[0].startswith("HTTP/") or not pieces[1].isdigit():
        raise HandshakeError(0, "bad answer from server: not an HTTP response")
    text = body.decode("utf-8", errors="replace").strip()
    reason = text.splitlines()[0][:300] if text else (pieces[2] if len(pieces) > 2 else "")
    return int(pieces[1]), reason
