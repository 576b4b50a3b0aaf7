"""What a server that failed an upgrade speaks: TLS, or plain HTTP.

A ``ws://`` URL pointed at a TLS port, or ``wss://`` at a plain one, fails
in ways that say nothing useful by themselves (the connection is closed, a
reset, "not a valid HTTP response"). When an upgrade fails like that and
the server is dialled directly, one small probe asks the port the other
question, so the client can say which scheme to use. Verdicts are kept for
a while: a client whose every connection fails probes once, not per
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from wstun.common.streams.internals import environment_proxy

__all__ = [
    "SchemeProbe",
    "direct_address",
    "is_ip",
    "looks_like_tls",
    "proxy_for",
    "speaks_http",
    "speaks_tls",
]

#: Seconds a probe may take, at most: a server that speaks the protocol asked
#: answers at once.
PROBE_TIMEOUT = 1.0

#: Seconds a verdict is reused before the port is asked again.
VERDICT_LIFETIME = 10.0


async def speaks_tls(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` answers a TLS ClientHello as TLS (certificate unchecked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if not is_ip(host) else None
            )
    except ssl.SSLError as exc:
        # A TLS alert is TLS too; a record that isn't TLS, or a silent close, is not.
        return not isinstance(exc, ssl.SSLEOFError) and "WRONG_VERSION" not in str(exc)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(timeout):
            await writer.wait_closed()
    return True


async def speaks_http(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` answers a plain ``GET /healthz`` with an HTTP response."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: wstun\r\nConnection: close\r\n\r\n")
                first = await reader.read(5)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return first == b"HTTP/"


def looks_like_tls(text: str) -> bool:
    """Whether what came instead of an HTTP response starts like a TLS record.

    A TLS alert (21) or handshake (22) record, TLS major version 3; websockets
    quotes the bytes it could not parse in its error, undecodable bytes as
    they are.
    """
    return "\x15\x03" in text or "\x16\x03" in text


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (no SNI for it), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def proxy_for(url: str, setting: object) -> str | None:
    """The proxy the client goes through for ``url``, or None (direct).

    ``setting`` is the client's: None (direct), True (the environment's, by
    the rule tunnels follow, websockets': ``socks_proxy`` first, then
    ``HTTPS_PROXY``, and ``HTTP_PROXY`` for ws://, none for hosts in
    ``NO_PROXY``) or a URL. One rule, so the startup check and the scheme
    probes go where tunnels go.
    """
    if setting is None or isinstance(setting, str):
        return setting
    return environment_proxy(url)


def direct_address(url: str, proxy: object) -> tuple[str, int] | None:
    """The server's host and port when the client dials it without a proxy, else None."""
    parts = urlsplit(url)
    if parts.hostname is None or proxy_for(url, proxy) is not None:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)


class SchemeProbe:
    """Remembers, for a while, what each address answered."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (question, host, port) -> (when asked, the probe: one at a time per key)
        self._verdicts: dict[tuple[str, str, int], tuple[float, asyncio.Task[bool]]] = {}

    async def ask(self, question: str, host: str, port: int) -> bool:
        """``question`` is ``"tls"`` or ``"http"``: does the port speak it?"""
        key = (question, host, port)
        now = self._clock()
        known = self._verdicts.get(key)
        if known is None or now - known[0] >= VERDICT_LIFETIME:
            probe = speaks_tls if question == "tls" else speaks_http
            known = (now, asyncio.ensure_future(probe(host, port)))
            self._verdicts[key] = known
        return await asyncio.shield(known[1])
