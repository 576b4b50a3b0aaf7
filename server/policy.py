"""Which targets a server may dial. Nothing is allowed unless a rule allows it.

Rule syntax (``--allow``): ``HOST:PORT``, ``HOST:LOW-HIGH``, ``HOST:*``, with
``*`` as HOST matching any host (``*:*`` allows everything, for closed
networks) and IPv6 hosts in brackets (``[::1]:22``). Host names compare
case-insensitively; addresses compare by value (``[::1]`` = ``[0::1]``).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from common.errors import TargetError
from common.protocol import Target, format_target, parse_port

__all__ = ["Policy", "Rule", "parse_rule"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ``--allow`` pattern: a host (or ``*``) and an inclusive port range."""

    host: str
    low: int
    high: int
    text: str

    def matches(self, target: Target) -> bool:
        if not self.low <= target.port <= self.high:
            return False
        return self.host == "*" or self.host == _canonical_host(target.host)

    def __str__(self) -> str:
        return self.text


def _canonical_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")


def _parse_ports(text: str, rule: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    low_text, dash, high_text = text.partition("-")
    low = parse_port(low_text, what=f"port in rule {rule!r}")
    high = parse_port(high_text, what=f"port in rule {rule!r}") if dash else low
    if high < low:
        raise TargetError(f"port range {text!r} in rule {rule!r} runs backwards")
    return low, high


def parse_rule(text: str) -> Rule:
    """Parse an ``--allow`` pattern; raises :class:`TargetError` naming the rule."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise TargetError(f"bad rule {text!r}: expected [IPv6]:PORT")
        host, ports = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetError(f"bad rule {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, ports = text.rpartition(":")
        if not sep or not host:
            raise TargetError(f"bad rule {text!r}: expected HOST:PORT, HOST:* or *:*")
        if ":" in host:
            raise TargetError(f"bad rule {text!r}: IPv6 addresses need brackets, e.g. [::1]:22")
    low, high = _parse_ports(ports, text)
    canonical = host if host == "*" else _canonical_host(host)
    return Rule(canonical, low, high, text)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The server's allow list."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: list[str] | tuple[str, ...], *extra: Target) -> Policy:
        """Rules from ``--allow`` patterns, plus exact rules for ``extra`` targets."""
        rules = [parse_rule(p) for p in patterns]
        rules += [parse_rule(format_target(t.host, t.port)) for t in extra]
        return cls(tuple(rules))

    def allowing_rule(self, target: Target) -> Rule | None:
        """The first rule that allows ``target``, or ``None``."""
        for rule in self.rules:
            if rule.matches(target):
                return rule
        return None
