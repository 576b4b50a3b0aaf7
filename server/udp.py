"""The server's end of a UDP flow: a connected socket to the target, per flow.

An upgrade offering ``wstun.udp.v1`` names its target as any tunnel does
(``?to=HOST:PORT``); the server resolves it, lets the policy keep the
addresses a ``/udp`` rule allows, and, before the 101, connects a UDP
socket to the first of them. A connected socket takes datagrams from that
address only, so nothing else can inject into the flow. After the 101,
:class:`~wstun.common.datagram.DatagramFlow` carries it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any, cast

from wstun.common.datagram import DatagramFlow, send_datagram, udp_socket

__all__ = ["UdpSocket", "open_udp"]

#: Datagrams from the target kept before the flow starts (it rarely speaks first).
_EARLY_LIMIT = 64


class UdpSocket(asyncio.DatagramProtocol):
    """A connected UDP socket whose datagrams go to the flow it is given."""

    def __init__(self) -> None:
        self.endpoint: asyncio.DatagramTransport | None = None
        #: The socket itself: empty datagrams go through it (asyncio's and uvloop's
        #: sendto() silently drop them).
        self.sock: socket.socket | None = None
        self.flow: DatagramFlow | None = None
        self._early: collections.deque[bytes] = collections.deque(maxlen=_EARLY_LIMIT)
        self._early_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.endpoint = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.flow is not None:
            self.flow.from_local(data)
        else:
            self._early.append(data)

    def error_received(self, exc: Exception) -> None:
        if self.flow is not None:
            self.flow.local_error(exc)
        else:
            self._early_errors += 1

    def attach(self, flow: DatagramFlow) -> None:
        """From now on datagrams go to ``flow``; what came before goes first."""
        self.flow = flow
        while self._early:
            flow.from_local(self._early.popleft())
        for _ in range(self._early_errors):
            flow.local_error(ConnectionRefusedError())

    def send(self, data: bytes) -> bool:
        """Send one datagram to the target; False if dropped (the socket's buffer is full)."""
        return send_datagram(self.endpoint, self.sock, data)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()


async def open_udp(address: str, port: int) -> UdpSocket:
    """A UDP socket connected to ``address``:``port`` (an address, never a name)."""
    loop = asyncio.get_running_loop()
    sock = udp_socket(address)
    try:
        sock.connect((address, port))
        _, protocol = await loop.create_datagram_endpoint(UdpSocket, sock=sock)
    except BaseException:
        sock.close()
        raise
    protocol.sock = sock
    return protocol
