"""Resolve a target's name, let the policy pick addresses, dial exactly those.

The server never hands a name to ``connect``: it resolves once, the policy
decides on the resulting addresses, and only the addresses it kept are
dialled, so a name can't resolve to one address for the check and another
for the dial.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence

from wstun.common.streams import TcpStream, open_tcp

__all__ = ["Resolver", "dial_first", "resolve"]

#: ``(host, port) -> addresses``; injectable so tests need no DNS.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for TCP, in resolver order, without repeats.

    Raises :class:`OSError` (``socket.gaierror``) when the name doesn't resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def dial_first(addresses: Sequence[str], port: int) -> TcpStream:
    """Connect to the first of ``addresses`` that accepts; re-raise the last error.

    ``addresses`` must be non-empty. Each is an address, never a name, so
    nothing is resolved again here.
    """
    error: OSError | None = None
    for address in addresses:
        try:
            return await open_tcp(address, port)
        except OSError as exc:
            error = exc
    assert error is not None, "dial_first needs at least one address"
    raise error
