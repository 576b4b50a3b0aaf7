"""Resolve a target's name, let the policy pick addresses, dial exactly those.

:class:`TargetDialer` is that whole step for one server, wherever the target
was named: it answers with a connected stream or with the refusal (403,
502, 504) the client is told.

The server never hands a name to ``connect``: it resolves once, the policy
decides on the resulting addresses, and only the addresses it kept are
dialled, so a name can't resolve to one address for the check and another
for the dial.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

from wstun.common.datagram import UdpSocket, open_udp
from wstun.common.errors import describe_os_error
from wstun.common.protocol import Failure, HandshakeRejection, Target
from wstun.common.streams import TcpStream, open_tcp
from wstun.server.policy import Policy

__all__ = ["Resolver", "TargetDialer", "dial_first", "resolve"]

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


class TargetDialer:
    """Checks a target against the policy it is given and dials it within
    ``connect_timeout``.

    ``observe_dial`` is told how long each dial took (a policy refusal is
    not a dial); ``resolver`` turns names into addresses (injectable, so
    tests need no DNS).
    """

    def __init__(
        self,
        connect_timeout: float,
        *,
        resolver: Resolver = resolve,
        observe_dial: Callable[[float], object] = lambda seconds: None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self._resolve = resolver
        self._observe_dial = observe_dial

    async def _addresses(
        self, target: Target, proto: str, policy: Policy
    ) -> Sequence[str] | HandshakeRejection:
        """Resolve ``target`` and keep the addresses ``policy`` allows for ``proto``
        (403 if none)."""
        if not policy.may_allow(target, proto):
            return self._forbidden(policy, policy.refusal(target, proto))
        try:
            resolved = await self._resolve(target.host, target.port)
        except OSError as exc:
            return HandshakeRejection(
                Failure.TARGET_UNREACHABLE,
                f"target {target}: name does not resolve ({describe_os_error(exc)})",
            )
        decision = policy.decide(target, resolved, proto)
        if not decision.allowed:
            return self._forbidden(policy, decision.reason)
        return decision.addresses

    def _forbidden(self, policy: Policy, reason: str) -> HandshakeRejection:
        # The rules themselves go to the server's log only.
        return HandshakeRejection(Failure.FORBIDDEN, reason, detail=policy.rules_text())

    async def dial(self, target: Target, policy: Policy) -> TcpStream | HandshakeRejection:
        """Resolve, check (under ``policy``: the server-wide rules and, with a users
        file, the user's) and dial ``target`` within the connect timeout."""
        timeout = self.connect_timeout
        started: float | None = None
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._addresses(target, "tcp", policy)
                if isinstance(addresses, HandshakeRejection):
                    return addresses
                started = time.monotonic()
                return await dial_first(addresses, target.port)
        except TimeoutError:
            return HandshakeRejection(
                Failure.TARGET_TIMEOUT, f"target {target} did not answer within {timeout:g}s"
            )
        except OSError as exc:
            return HandshakeRejection(
                Failure.TARGET_UNREACHABLE, f"target {target}: {describe_os_error(exc)}"
            )
        finally:
            if started is not None:  # a dial happened (policy refusals are not dials)
                self._observe_dial(time.monotonic() - started)

    async def dial_udp(self, target: Target, policy: Policy) -> UdpSocket | HandshakeRejection:
        """Resolve and check ``target`` under the ``/udp`` rules; a UDP socket connected
        to the first address kept (a UDP connect sends nothing: it can't be refused)."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._addresses(target, "udp", policy)
                if isinstance(addresses, HandshakeRejection):
                    return addresses
                return await open_udp(addresses[0], target.port)
        except TimeoutError:
            return HandshakeRejection(
                Failure.TARGET_TIMEOUT,
                f"target {target} did not resolve within {self.connect_timeout:g}s",
            )
        except OSError as exc:
            return HandshakeRejection(
                Failure.TARGET_UNREACHABLE, f"target {target}/udp: {describe_os_error(exc)}"
            )
