"""Local port forwarding (``-L``): what it adds to the client's one tunnel flow.

``-L [BIND:]PORT:HOST:HOSTPORT`` is parsed as ssh parses it. Each connection
accepted on BIND:PORT is the local end of one tunnel to HOST:HOSTPORT; when
the server refuses, that connection is reset.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from wstun.client.tunnel import LocalEnd
from wstun.common.errors import HandshakeError, TargetError
from wstun.common.protocol import (
    Target,
    format_target,
    parse_listen,
    parse_port,
    parse_target,
    split_proto,
)
from wstun.common.report import format_peer
from wstun.common.streams import ByteStream, TcpStream

__all__ = ["Forward", "ForwardedConnection", "parse_forward"]


@dataclasses.dataclass(frozen=True)
class Forward:
    """``-L``: listen on ``bind``, tunnel each connection to ``remote``."""

    bind: Target
    remote: Target
    #: ``tcp``, or ``udp`` for ``.../udp`` (client/udp.py).
    proto: str = "tcp"

    def __str__(self) -> str:
        suffix = "/udp" if self.proto == "udp" else ""
        return f"{self.bind}{suffix} -> {self.remote}{suffix}"


def _split_colons(text: str) -> list[str]:
    """Split on ':' outside square brackets, keeping the brackets."""
    parts, current, depth = [], "", 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise TargetError(f"unbalanced ']' in {text!r}")
        if ch == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise TargetError(f"missing ']' in {text!r}")
    parts.append(current)
    return parts


def _bracketed(parts: list[str]) -> str | None:
    """What ``-L`` meant with an IPv6 host and no brackets (``PORT:[V6]:PORT``), if it did."""
    host = ":".join(parts[1:-1])
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return None
    return f"{parts[0]}:[{host}]:{parts[-1]}"


def parse_forward(text: str, *, default_bind: str = "127.0.0.1") -> Forward:
    """Parse ``[BIND:]PORT:HOST:HOSTPORT`` (IPv6 in brackets), as ssh's ``-L``; a
    ``/udp`` suffix makes it a UDP forward (``/tcp``: the default, said)."""
    original = text
    text, proto = split_proto(text)
    parts = _split_colons(text)
    if len(parts) == 3:
        bind_host = default_bind
        port, host, host_port = parts
    elif len(parts) == 4:
        bind_host, port, host, host_port = parts
        if bind_host.startswith("[") and bind_host.endswith("]"):
            bind_host = bind_host[1:-1]
        bind_host = bind_host or default_bind
    elif len(parts) > 4 and _bracketed(parts) is not None:
        raise TargetError(f"IPv6 addresses need brackets, e.g. {_bracketed(parts)}, got {text!r}")
    else:
        raise TargetError(f"expected [BIND:]PORT:HOST:HOSTPORT, got {original!r}")
    bind_port = parse_port(port, what=f"listen port in {original!r}", allow_zero=True)
    bind = parse_listen(format_target(bind_host, bind_port))
    return Forward(bind, parse_target(f"{host}:{host_port}"), proto)


class ForwardedConnection(LocalEnd):
    """A connection accepted on a ``-L`` port: relayed as it is, reset if refused."""

    def __init__(self, stream: TcpStream) -> None:
        self.stream = stream
        self.peer = format_peer(stream.peername)
        self.early = stream  # what the application sends may go ahead of the answer

    async def refused(self, error: HandshakeError) -> None:
        await self.stream.abort()

    async def opened(self, remote: ByteStream) -> ByteStream:
        return self.stream

    async def abandon(self) -> None:
        await self.stream.abort()
