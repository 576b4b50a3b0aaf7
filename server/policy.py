"""Which targets a server may dial. Nothing is allowed unless a rule allows it.

Rule syntax (``--allow`` and ``--deny`` alike): ``HOST:PORTS`` where PORTS is
``PORT``, ``LOW-HIGH`` or ``*``, and HOST is one of

- ``*``: any host (``*:*`` allows everything, for closed networks);
- a host name, compared case-insensitively (``db.internal``);
- ``*.SUFFIX``: any name ending in ``.SUFFIX`` (``*.internal`` matches
  ``db.internal`` and ``a.b.internal``, not ``internal`` itself);
- an address, compared by value (``10.0.0.5``, ``[::1]``);
- a network in CIDR notation (``10.0.0.0/8``, ``[fd00::/8]``).

IPv6 addresses and networks go in brackets.

The decision (:meth:`Policy.decide`) is a pure function of the rules, the
target and the addresses the target's name resolved to (the server does the
resolving, then dials exactly the addresses the decision returns):

1. Name rules (host names, ``*.SUFFIX``) match the target's name; address
   rules match each resolved address; ``*`` matches everything.
2. An address is dialled when some allow rule matches it (by name or by
   address) and no deny rule does. Deny wins.
3. Link-local and cloud metadata addresses (``169.254.0.0/16``,
   ``fe80::/10``, ``fd00:ec2::254``) are denied unless an allow *address*
   rule names them: neither ``*`` nor a host name is enough, so no DNS name
   can lead a tunnel there by accident.
4. No address left: the target is refused (403), naming the deciding rule.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from wstun.common.errors import TargetError
from wstun.common.protocol import Target, format_target, parse_port, parse_target, split_proto
from wstun.server.addresses import IPAddress, IPNetwork, parse_ip

__all__ = [
    "BUILTIN_DENY",
    "Decision",
    "HostKind",
    "Policy",
    "Rule",
    "load_policy_file",
    "parse_listen_rule",
    "parse_rule",
]


class HostKind(enum.Enum):
    """What the HOST part of a rule is."""

    ANY = "any"  # ``*``
    NAME = "name"  # ``db.internal``
    SUFFIX = "suffix"  # ``*.internal``
    NETWORK = "network"  # ``10.0.0.5``, ``10.0.0.0/8``, ``[fd00::/8]``


@dataclasses.dataclass(frozen=True)
class Rule:
    """One pattern: a host pattern and an inclusive port range.

    ``host`` is the canonical name (lower case, no trailing dot) for NAME,
    the suffix with its leading dot for SUFFIX; ``network`` is set for
    NETWORK. ``text`` is the pattern as written, for messages.
    """

    kind: HostKind
    host: str
    low: int
    high: int
    text: str
    network: IPNetwork | None = None
    #: ``tcp`` (no suffix, or ``/tcp``), ``udp`` (``/udp``); ``any`` for built-in rules.
    proto: str = "tcp"

    def matches_port(self, port: int, proto: str = "tcp") -> bool:
        """The port, for this protocol: a TCP rule never allows UDP, nor the reverse."""
        return self.proto in (proto, "any") and self.low <= port <= self.high

    def matches_name(self, name: str) -> bool:
        """Whether this rule matches a target *name* (never true for address rules)."""
        if self.kind is HostKind.ANY:
            return True
        canonical = _canonical_name(name)
        if self.kind is HostKind.NAME:
            return canonical == self.host
        if self.kind is HostKind.SUFFIX:
            return canonical.endswith(self.host) and len(canonical) > len(self.host)
        return False

    def matches_address(self, address: IPAddress) -> bool:
        """Whether this rule matches an *address* (ANY and NETWORK rules only)."""
        if self.kind is HostKind.ANY:
            return True
        if self.network is None or address.version != self.network.version:
            return False
        return address in self.network

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome for one target: the addresses to dial, or why there are none.

    ``rule`` is the allow rule that let the first address through when
    ``addresses`` is non-empty, else the deny rule that dropped the last
    candidate (``None`` when no allow rule matched at all).
    """

    addresses: tuple[str, ...]
    rule: Rule | None
    reason: str

    @property
    def allowed(self) -> bool:
        return bool(self.addresses)


def _canonical_name(host: str) -> str:
    return host.lower().rstrip(".")


def _address(text: str) -> IPAddress | None:
    """The address ``text`` names, a zone (``fe80::1%eth0``) ignored; else ``None``."""
    return parse_ip(text.split("%", 1)[0])


def _parse_ports(text: str, rule: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    low_text, dash, high_text = text.partition("-")
    low = parse_port(low_text, what=f"port in rule {rule!r}")
    high = parse_port(high_text, what=f"port in rule {rule!r}") if dash else low
    if high < low:
        raise TargetError(f"port range {text!r} in rule {rule!r} runs backwards")
    return low, high


def _split_rule(text: str) -> tuple[str, str, bool]:
    """``(host, ports, bracketed)`` of a rule, checking the bracket syntax."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise TargetError(f"bad rule {text!r}: expected [IPv6]:PORT or [IPv6/LEN]:PORT")
        return text[1:end], text[end + 2 :], True
    host, sep, ports = text.rpartition(":")
    if not sep or not host:
        raise TargetError(f"bad rule {text!r}: expected HOST:PORT, HOST:* or *:*")
    if ":" in host:
        raise TargetError(f"bad rule {text!r}: IPv6 addresses need brackets, e.g. [::1]:22")
    return host, ports, False


def _network(host: str, text: str, bracketed: bool) -> IPNetwork | None:
    """The network an address or CIDR host part names, ``None`` for names."""
    looks_v6 = bracketed
    if not looks_v6 and not ("/" in host or _address(host) is not None):
        return None
    try:
        network = ipaddress.ip_network(host, strict=True)
    except ValueError as exc:
        what = "an IPv6 address or network" if looks_v6 else "an address or network"
        raise TargetError(f"bad rule {text!r}: {host!r} is not {what} ({exc})") from None
    if bracketed and network.version != 6:
        raise TargetError(f"bad rule {text!r}: brackets are for IPv6, got {host!r}")
    return network


def parse_rule(text: str) -> Rule:
    """Parse an ``--allow``/``--deny`` pattern; raises :class:`TargetError` naming it."""
    text = text.strip()
    pattern, proto = split_proto(text)
    host, ports, bracketed = _split_rule(pattern)
    low, high = _parse_ports(ports, text)
    if host == "*":
        return Rule(HostKind.ANY, "*", low, high, text, proto=proto)
    network = _network(host, text, bracketed)
    if network is not None:
        return Rule(HostKind.NETWORK, str(network), low, high, text, network, proto)
    kind, name = HostKind.NAME, host
    if host.startswith("*."):
        kind, name = HostKind.SUFFIX, host[2:]
    try:
        parse_target(f"{name}:1")
    except TargetError:
        raise TargetError(f"bad rule {text!r}: {host!r} is not a host name pattern") from None
    canonical = _canonical_name(name)
    host = "." + canonical if kind is HostKind.SUFFIX else canonical
    return Rule(kind, host, low, high, text, proto=proto)


def parse_listen_rule(text: str) -> Rule:
    """An ``--allow-listen`` pattern: HOST is ``*``, an address or a network (the bind
    address), never a name: the server binds addresses."""
    rule = parse_rule(text)
    if rule.kind not in (HostKind.ANY, HostKind.NETWORK):
        raise TargetError(
            f"bad listen rule {text!r}: the host is a bind address: *, an address or a network"
        )
    return rule


#: Denied unless an allow rule names the address or network explicitly.
BUILTIN_DENY: tuple[Rule, ...] = tuple(
    dataclasses.replace(
        parse_rule(pattern), text=f"{pattern} (built-in: link-local/metadata)", proto="any"
    )
    for pattern in ("169.254.0.0/16:*", "[fe80::/10]:*", "[fd00:ec2::254]:*")
)


def _first(
    rules: Iterable[Rule], name: str | None, address: IPAddress, port: int, proto: str
) -> Rule | None:
    for rule in rules:
        if not rule.matches_port(port, proto):
            continue
        if rule.matches_address(address) or (name is not None and rule.matches_name(name)):
            return rule
    return None


@dataclasses.dataclass(frozen=True)
class Policy:
    """The server's allow and deny lists."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    #: Where clients may have the server listen for them (reverse tunnels).
    allow_listen: tuple[Rule, ...] = ()

    @classmethod
    def from_patterns(
        cls,
        allow: Sequence[str],
        *extra: Target,
        deny: Sequence[str] = (),
        allow_listen: Sequence[str] = (),
    ) -> Policy:
        """Rules from patterns, plus exact allow rules for ``extra`` targets."""
        allow_rules = [parse_rule(p) for p in allow]
        allow_rules += [parse_rule(format_target(t.host, t.port)) for t in extra]
        return cls(
            tuple(allow_rules),
            tuple(parse_rule(p) for p in deny),
            tuple(parse_listen_rule(p) for p in allow_listen),
        )

    def merged(self, other: Policy) -> Policy:
        """This policy's rules followed by ``other``'s."""
        return Policy(
            self.allow + other.allow,
            self.deny + other.deny,
            self.allow_listen + other.allow_listen,
        )

    def listen_rules(self, bind: str) -> tuple[Rule, ...]:
        """The ``allow_listen`` rules for bind address ``bind`` (any port)."""
        address = _address(bind)
        if address is None:
            return ()
        return tuple(rule for rule in self.allow_listen if rule.matches_address(address))

    def may_listen(self, bind: str, port: int, proto: str = "tcp") -> bool:
        """Whether a client may have the server listen on ``bind``:``port``
        (port 0: on some port the rules allow)."""
        return any(
            rule.proto == proto and (port == 0 or rule.matches_port(port, proto))
            for rule in self.listen_rules(bind)
        )

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The allow rules (nothing is allowed without one)."""
        return self.allow

    def may_allow(self, target: Target, proto: str = "tcp") -> bool:
        """Whether any address of ``target`` could be allowed; ``False`` saves a lookup."""
        if _address(target.host) is not None:
            return True
        return any(
            rule.matches_port(target.port, proto)
            and (rule.kind is HostKind.NETWORK or rule.matches_name(target.host))
            for rule in self.allow
        )

    def _deny_rule(
        self, name: str | None, address: IPAddress, port: int, proto: str
    ) -> Rule | None:
        rule = _first(self.deny, name, address, port, proto)
        if rule is not None:
            return rule
        builtin = _first(BUILTIN_DENY, None, address, port, proto)
        if builtin is None:
            return None
        explicit = any(
            r.kind is HostKind.NETWORK
            and r.matches_port(port, proto)
            and r.matches_address(address)
            for r in self.allow
        )
        return None if explicit else builtin

    def decide(self, target: Target, addresses: Sequence[str], proto: str = "tcp") -> Decision:
        """Which of ``addresses`` (what ``target`` resolved to) may be dialled, for
        ``proto`` (``tcp`` or ``udp``: a rule is for one of them).

        For an address target, pass ``[target.host]``. Pure: no DNS here.
        """
        name = None if _address(target.host) is not None else target.host
        allowed: list[str] = []
        allowed_by: Rule | None = None
        denied_by: Rule | None = None
        for text in addresses:
            address = _address(text)
            if address is None:
                continue
            deny = self._deny_rule(name, address, target.port, proto)
            if deny is not None:
                denied_by = deny
                continue
            allow = _first(self.allow, name, address, target.port, proto)
            if allow is not None:
                allowed.append(text)
                allowed_by = allowed_by or allow
        if allowed:
            return Decision(tuple(allowed), allowed_by, f"allowed by {allowed_by}")
        if denied_by is not None:
            shown = _shown(target, proto)
            return Decision((), denied_by, f"target not allowed: {shown} (denied by {denied_by})")
        return Decision((), None, self.refusal(target, proto))

    def refusal(self, target: Target, proto: str = "tcp") -> str:
        """Why no allow rule lets ``target`` through, in one fact the client can act on.

        Never the rules themselves: the refusal goes to clients who may not
        be trusted with them (the server's log has them, :meth:`rules_text`).
        """
        reason = f"target not allowed: {_shown(target, proto)}"
        for_port = [rule for rule in self.allow if rule.matches_port(target.port, proto)]
        if not for_port:
            return f"{reason} (no rule allows port {_shown_port(target.port, proto)})"
        by_name = all(rule.kind in (HostKind.NAME, HostKind.SUFFIX) for rule in for_port)
        if _address(target.host) is not None and by_name:
            return (
                f"{reason} (the rules for port {target.port} name hosts, and an address is "
                "allowed only by an address or network rule: ask with the host's name)"
            )
        if _address(target.host) is None and all(r.kind is HostKind.NETWORK for r in for_port):
            return (
                f"{reason} (the rules for port {target.port} allow addresses, and "
                f"{target.host} resolves to none of them)"
            )
        return f"{reason} (no rule allows this host on port {target.port})"

    def rules_text(self) -> str:
        """Every rule, for the server's own log."""
        allow = ", ".join(str(rule) for rule in self.allow) or "(none)"
        deny = ", ".join(str(rule) for rule in self.deny) or "(none)"
        return f"allow {allow}; deny {deny}"


def _shown(target: Target, proto: str) -> str:
    """A target in messages: ``db:5432``, ``dns:53/udp``."""
    return f"{target}/udp" if proto == "udp" else str(target)


def _shown_port(port: int, proto: str) -> str:
    return f"{port}/udp" if proto == "udp" else str(port)


def load_policy_file(path: Path) -> Policy:
    """Rules from a TOML file: ``allow = ["db:5432", ...]``, ``deny = [...]`` and
    ``allow_listen = [...]``.

    Raises :class:`TargetError` naming the file and, for a bad rule, the rule.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"can't read policy file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"policy file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"allow", "deny", "allow_listen"})
    if unknown:
        raise TargetError(f"policy file {path}: unknown key(s) {', '.join(unknown)}")
    lists: dict[str, list[str]] = {}
    for key in ("allow", "deny", "allow_listen"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TargetError(f"policy file {path}: {key!r} must be a list of strings")
        lists[key] = value
    try:
        return Policy.from_patterns(
            lists["allow"], deny=lists["deny"], allow_listen=lists["allow_listen"]
        )
    except TargetError as exc:
        raise TargetError(f"policy file {path}: {exc}") from None
