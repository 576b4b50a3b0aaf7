"""How many tunnels the server carries at once, in total, per client address and per user.

A slot is taken when a handshake passes its checks (before the target is
dialled) and given back when that connection ends, whether it became a
tunnel or not. A user's ``max_tunnels`` (``--users-file``) counts tunnels
and UDP flows, not WebSockets: one is taken before each target is dialled
(over HTTP or in-band) and given back when that tunnel ends, so a warm idle
WebSocket holds none. Refusals are 503 with a reason naming the limit.

With ``--workers N`` the limits hold for the server as a whole: the counts
they check live in :class:`~server.shared.SharedCounts`, the same for every
worker; each worker still keeps its own, for its drain.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress

from wstun.common.protocol import Failure, HandshakeRejection
from wstun.server.shared import SharedCounts, TableFull

__all__ = ["ConnectionLimits", "client_host"]


def client_host(peer: str) -> str:
    """The address part of a ``host:port`` / ``[v6]:port`` peer string (a bare
    address, as a forwarded-for value may be, is returned as it is)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(peer))
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class ConnectionLimits:
    """Counts open tunnels; ``None`` as a maximum means unlimited."""

    def __init__(
        self,
        max_total: int | None = None,
        max_per_client: int | None = None,
        shared: SharedCounts | None = None,
    ) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        #: The counts of every worker (``--workers``), or None: this process's are the server's.
        self.shared = shared
        self._shares_slots = shared is not None and (
            max_total is not None or max_per_client is not None
        )
        # Slots held, in total and per client address (entries removed at zero).
        self.total = 0
        self.per_client: collections.Counter[str] = collections.Counter()
        # Tunnels held per user (entries removed at zero), for each user's max_tunnels.
        self.per_user: collections.Counter[str] = collections.Counter()
        # Set whenever no slot is held.
        self._empty = asyncio.Event()
        self._empty.set()

    def acquire(self, client: str) -> HandshakeRejection | None:
        """Take a slot for ``client`` (an address), or say which limit is reached."""
        if self.shared is not None and self._shares_slots:
            try:
                full = self.shared.take(
                    [("total", self.max_total), (f"client:{client}", self.max_per_client)]
                )
            except TableFull as exc:
                return HandshakeRejection(Failure.UNAVAILABLE, f"too many clients at once ({exc})")
            if full is not None:
                return self._full(client, total=full == 0)
        elif self.max_total is not None and self.total >= self.max_total:
            return self._full(client, total=True)
        elif self.max_per_client is not None and self.per_client[client] >= self.max_per_client:
            return self._full(client, total=False)
        self.total += 1
        self.per_client[client] += 1
        self._empty.clear()
        return None

    def _full(self, client: str, *, total: bool) -> HandshakeRejection:
        if total:
            return HandshakeRejection(
                Failure.UNAVAILABLE, f"too many connections (server limit {self.max_total})"
            )
        return HandshakeRejection(
            Failure.UNAVAILABLE,
            f"too many connections from {client} (limit {self.max_per_client} per client)",
        )

    def release(self, client: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        if self.shared is not None and self._shares_slots:
            self.shared.give(["total", f"client:{client}"])
        self.total -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]
        if self.total == 0:
            self._empty.set()

    def take_tunnel(self, user: str, cap: int | None) -> HandshakeRejection | None:
        """Count one more tunnel for ``user``, unless they hold ``cap`` already."""
        if self.shared is not None:
            try:
                full = self.shared.take([(f"user:{user}", cap)]) is not None
            except TableFull as exc:
                return HandshakeRejection(Failure.UNAVAILABLE, f"too many users at once ({exc})")
        else:
            full = cap is not None and self.per_user[user] >= cap
        if full:
            return HandshakeRejection(
                Failure.UNAVAILABLE, f"too many tunnels for user {user} (limit {cap})"
            )
        self.per_user[user] += 1
        return None

    def give_tunnel(self, user: str) -> None:
        """Give back a tunnel counted by :meth:`take_tunnel`."""
        if self.shared is not None:
            self.shared.give([f"user:{user}"])
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]

    async def wait_empty(self) -> None:
        """Return once no slot is held."""
        await self._empty.wait()
