"""The real client address behind trusted reverse proxies (pure, no sockets).

A proxy appends the address it received a connection from to
``X-Forwarded-For`` (nginx: ``$proxy_add_x_forwarded_for``) and may set
``X-Real-IP``. Anyone can send those headers, so they mean something only
when the TCP peer is a proxy the operator trusts (``--trusted-proxy CIDR``).

The rule, as nginx's ``real_ip_recursive on`` and Traefik's trusted IPs:

1. A peer outside the trusted networks is the client; headers are ignored.
2. From a trusted peer, walk ``X-Forwarded-For`` from the right (the entry
   the nearest proxy appended) to the left, skipping addresses that are
   themselves trusted proxies. The first untrusted address is the client.
   An entry that is not an IP address stops the walk: nothing left of it
   can be believed, so the last trusted hop is the answer.
3. If every entry is trusted, the leftmost one is the client.
4. With no ``X-Forwarded-For`` at all, a valid ``X-Real-IP`` from a trusted
   peer is the client.

Forwarded addresses carry no port unless the entry has one
(``203.0.113.7:5123``, ``[2001:db8::1]:443``); the port is then 0.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Iterable, Sequence

from wstun.server.addresses import IPAddress, IPNetwork, parse_ip

__all__ = [
    "FORWARDED_FOR_HEADER",
    "REAL_IP_HEADER",
    "ClientAddress",
    "Source",
    "TrustedProxies",
    "parse_address",
]

FORWARDED_FOR_HEADER = "X-Forwarded-For"
REAL_IP_HEADER = "X-Real-IP"


class Source(enum.Enum):
    """Where the client address came from (a metric label)."""

    PEER = "peer"
    FORWARDED_FOR = "x-forwarded-for"
    REAL_IP = "x-real-ip"


@dataclasses.dataclass(frozen=True)
class ClientAddress:
    """The client's address and port (0 when a proxy didn't say) and its source."""

    host: str
    port: int
    source: Source

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(entry: str) -> tuple[IPAddress, int] | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``,
    ``[::1]``, ``[::1]:80``. None when it is not an IP address (``unknown``,
    a host name, an obfuscated identifier, garbage)."""
    entry = entry.strip().strip('"')
    port = 0
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        if rest:
            if not rest[1:].isdigit() or int(rest[1:]) > 65535:
                return None
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        if not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    else:
        host = entry
    address = parse_ip(host)
    return None if address is None else (address, port)


class TrustedProxies:
    """The networks whose connections may state the client address."""

    def __init__(self, networks: Iterable[str | IPNetwork] = ()) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
            for net in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ", ".join(str(net) for net in self.networks) or "(none)"

    def trusts(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)

    def client(
        self,
        peer_host: str,
        peer_port: int,
        forwarded_for: Sequence[str] = (),
        real_ip: str | None = None,
    ) -> ClientAddress:
        """The client address for a connection from ``peer_host:peer_port``.

        ``forwarded_for`` holds every ``X-Forwarded-For`` header value in
        order (a request may carry several; they form one list).
        """
        direct = ClientAddress(peer_host, peer_port, Source.PEER)
        peer = parse_ip(peer_host)
        if peer is None or not self.trusts(peer):
            return direct
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        entries = [entry for entry in entries if entry.strip()]
        if entries:
            return self._walk(entries, direct)
        if real_ip is not None and (parsed := parse_address(real_ip)) is not None:
            return ClientAddress(str(parsed[0]), parsed[1], Source.REAL_IP)
        return direct

    def _walk(self, entries: list[str], direct: ClientAddress) -> ClientAddress:
        last = direct
        for entry in reversed(entries):
            parsed = parse_address(entry)
            if parsed is None:
                return last
            address, port = parsed
            last = ClientAddress(str(address), port, Source.FORWARDED_FOR)
            if not self.trusts(address):
                return last
        return last
