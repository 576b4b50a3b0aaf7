"""IP address helpers shared by the target policy and the client-address rules."""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["IPAddress", "IPNetwork", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Every tunnel's target and dialled addresses go through here several times
# (the policy's checks); addresses are immutable, so the answers are kept.
@functools.lru_cache(maxsize=1024)
def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` names, or ``None`` when it is not an IP address.

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is returned as the IPv4
    address it carries, so IPv4 rules and networks match it.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
