"""Target policy: nothing is allowed unless a rule allows it; deny wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from wstun.common.errors import TargetError
from wstun.common.protocol import Target, parse_target
from wstun.server.policy import Policy, load_policy_file, parse_rule


def decide(
    allow: list[str], deny: list[str], target: str, resolved: list[str] | None
) -> tuple[tuple[str, ...], str | None]:
    """The addresses kept and the deciding rule's text, for a table row."""
    parsed = parse_target(target)
    addresses = resolved if resolved is not None else [parsed.host]
    decision = Policy.from_patterns(allow, deny=deny).decide(parsed, addresses)
    return decision.addresses, str(decision.rule) if decision.rule else None


LL = "169.254.0.0/16:* (built-in: link-local/metadata)"
FE80 = "[fe80::/10]:* (built-in: link-local/metadata)"


@pytest.mark.parametrize(
    ("allow", "deny", "target", "resolved", "kept", "rule"),
    [
        # Exact host:port, port ranges, host:*.
        ([], [], "127.0.0.1:6379", None, (), None),
        (["127.0.0.1:6379"], [], "127.0.0.1:6379", None, ("127.0.0.1",), "127.0.0.1:6379"),
        (["127.0.0.1:6379"], [], "127.0.0.1:6380", None, (), None),
        (["127.0.0.1:6379"], [], "127.0.0.2:6379", None, (), None),
        (["db.internal:*"], [], "DB.internal:5432", ["10.1.1.1"], ("10.1.1.1",), "db.internal:*"),
        (["db.internal:*"], [], "db.internal.:1", ["10.1.1.1"], ("10.1.1.1",), "db.internal:*"),
        (["db.internal:*"], [], "cache.internal:5432", ["10.1.1.2"], (), None),
        (["web:8000-8100"], [], "web:8000", ["10.0.0.8"], ("10.0.0.8",), "web:8000-8100"),
        (["web:8000-8100"], [], "web:8100", ["10.0.0.8"], ("10.0.0.8",), "web:8000-8100"),
        (["web:8000-8100"], [], "web:8101", ["10.0.0.8"], (), None),
        # `*` as host; first matching rule is reported.
        (["*:443"], [], "anything.example:443", ["192.0.2.1"], ("192.0.2.1",), "*:443"),
        (["*:443"], [], "anything.example:80", ["192.0.2.1"], (), None),
        (["*:*"], [], "10.1.2.3:1", None, ("10.1.2.3",), "*:*"),
        (["a:1", "b:*"], [], "b:9", ["10.0.0.9"], ("10.0.0.9",), "b:*"),
        # IPv6 compared by value.
        (["[::1]:22"], [], "[0:0::1]:22", None, ("0:0::1",), "[::1]:22"),
        (["[::1]:22"], [], "127.0.0.1:22", None, (), None),
        # Wildcard subdomains: any depth, never the bare suffix or a look-alike.
        (["*.internal:443"], [], "db.internal:443", ["10.0.0.1"], ("10.0.0.1",), "*.internal:443"),
        (["*.internal:443"], [], "a.b.INTERNAL:443", ["10.0.0.1"], ("10.0.0.1",), "*.internal:443"),
        (["*.internal:443"], [], "internal:443", ["10.0.0.1"], (), None),
        (["*.internal:443"], [], "evilinternal:443", ["10.0.0.1"], (), None),
        (["*.internal:443"], [], "db.internal:444", ["10.0.0.1"], (), None),
        # CIDRs match addresses, literal or resolved.
        (["10.0.0.0/8:5432"], [], "10.20.30.40:5432", None, ("10.20.30.40",), "10.0.0.0/8:5432"),
        (["10.0.0.0/8:5432"], [], "11.0.0.1:5432", None, (), None),
        (["10.0.0.0/8:5432"], [], "db:5432", ["10.9.9.9"], ("10.9.9.9",), "10.0.0.0/8:5432"),
        (["[fd00::/8]:*"], [], "[fd12::1]:80", None, ("fd12::1",), "[fd00::/8]:*"),
        (["[fd00::/8]:*"], [], "[fe00::1]:80", None, (), None),
        (["[fd00::/8]:*"], [], "10.0.0.1:80", None, (), None),
        # Deny wins, by name, by address or by CIDR.
        (["*:*"], ["10.0.0.0/8:*"], "10.1.1.1:22", None, (), "10.0.0.0/8:*"),
        (["*:*"], ["*.corp:*"], "x.corp:22", ["192.0.2.7"], (), "*.corp:*"),
        (["*:*"], ["*:25"], "mail.example:25", ["192.0.2.7"], (), "*:25"),
        (["*:*"], ["*:25"], "mail.example:587", ["192.0.2.7"], ("192.0.2.7",), "*:*"),
        # A name resolving into a denied CIDR: no DNS trick gets around it.
        (["*.example:443"], ["10.0.0.0/8:*"], "a.example:443", ["10.0.0.5"], (), "10.0.0.0/8:*"),
        # Mixed answers: the denied address is dropped, the rest is dialled.
        (
            ["*.example:443"],
            ["10.0.0.0/8:*"],
            "a.example:443",
            ["10.0.0.5", "192.0.2.5", "::ffff:10.0.0.6"],
            ("192.0.2.5",),
            "*.example:443",
        ),
        # Link-local / metadata: denied unless an address rule names them.
        (["*:*"], [], "169.254.169.254:80", None, (), LL),
        (["metadata.internal:80"], [], "metadata.internal:80", ["169.254.169.254"], (), LL),
        (["*:*"], [], "[fe80::1]:22", None, (), FE80),
        (["*:*"], [], "sneaky:80", ["::ffff:169.254.169.254"], (), LL),
        (
            ["169.254.169.254:80"],
            [],
            "169.254.169.254:80",
            None,
            ("169.254.169.254",),
            "169.254.169.254:80",
        ),
        (["[fe80::/10]:22"], [], "[fe80::1]:22", None, ("fe80::1",), "[fe80::/10]:22"),
        (
            ["169.254.0.0/16:*"],
            ["169.254.169.254:*"],
            "169.254.169.254:80",
            None,
            (),
            "169.254.169.254:*",
        ),
    ],
)
def test_policy_table(
    allow: list[str],
    deny: list[str],
    target: str,
    resolved: list[str] | None,
    kept: tuple[str, ...],
    rule: str | None,
) -> None:
    """Rules, target and resolved addresses -> the addresses kept and the deciding rule."""
    assert decide(allow, deny, target, resolved) == (kept, rule)


def test_refusal_reason_names_the_deny_rule() -> None:
    """A denied target's reason says which rule denied it."""
    policy = Policy.from_patterns(["*:*"], deny=["10.0.0.0/8:*"])
    decision = policy.decide(Target("db", 5432), ["10.0.0.1"])
    assert not decision.allowed
    assert decision.reason == "target not allowed: db:5432 (denied by 10.0.0.0/8:*)"


def test_default_target_is_allowed_implicitly() -> None:
    """--to adds an exact rule for itself and nothing more."""
    policy = Policy.from_patterns([], Target("127.0.0.1", 8000))
    assert policy.decide(Target("127.0.0.1", 8000), ["127.0.0.1"]).allowed
    assert not policy.decide(Target("127.0.0.1", 8001), ["127.0.0.1"]).allowed


def test_may_allow_saves_lookups_for_names_no_rule_can_reach() -> None:
    """Names no name rule matches skip DNS unless an address rule could match."""
    names_only = Policy.from_patterns(["db.internal:5432"])
    assert names_only.may_allow(Target("db.internal", 5432))
    assert not names_only.may_allow(Target("other.internal", 5432))
    assert not names_only.may_allow(Target("db.internal", 5433))
    with_cidr = Policy.from_patterns(["10.0.0.0/8:5432"])
    assert with_cidr.may_allow(Target("other.internal", 5432))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db", "expected HOST:PORT"),
        (":80", "expected HOST:PORT"),
        ("db:0", "between 1 and 65535"),
        ("db:9-1", "runs backwards"),
        ("db:x", "must be a number"),
        ("::1:22", "need brackets"),
        ("[::1]22", "expected \\[IPv6\\]:PORT"),
        ("[zz]:22", "not an IPv6 address"),
        ("10.0.0.1/8:22", "host bits set"),
        ("10.0.0.0/33:22", "not an address or network"),
        ("[10.0.0.0/8]:22", "brackets are for IPv6"),
        ("*.:443", "not a host name pattern"),
        ("a*b:443", "not a host name pattern"),
        ("bad_host!:1", "not a host name pattern"),
    ],
)
def test_bad_rule_is_a_clear_error_naming_the_rule(text: str, message: str) -> None:
    """A malformed pattern raises an error that names it."""
    with pytest.raises(TargetError, match=message) as info:
        parse_rule(text)
    assert repr(text) in str(info.value)


def test_policy_file(tmp_path: Path) -> None:
    """A TOML policy file adds allow and deny rules."""
    path = tmp_path / "policy.toml"
    path.write_text('allow = ["*.internal:443", "10.0.0.0/8:5432"]\ndeny = ["10.0.0.9:*"]\n')
    policy = load_policy_file(path)
    assert [str(r) for r in policy.allow] == ["*.internal:443", "10.0.0.0/8:5432"]
    assert [str(r) for r in policy.deny] == ["10.0.0.9:*"]
    assert not policy.decide(Target("10.0.0.9", 5432), ["10.0.0.9"]).allowed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('allow = ["db:5432", "db:0"]', "policy file .*: port in rule 'db:0'"),
        ('deny = ["[zz]:1"]', "policy file .*: bad rule '\\[zz\\]:1'"),
        ('allow = "db:5432"', "'allow' must be a list of strings"),
        ('allowed = ["db:1"]', "unknown key\\(s\\) allowed"),
        ("allow = [", "is not valid TOML"),
    ],
)
def test_bad_policy_file_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    """A bad policy file names the file and the offending rule or key."""
    path = tmp_path / "policy.toml"
    path.write_text(content)
    with pytest.raises(TargetError, match=message):
        load_policy_file(path)


@pytest.mark.parametrize(
    ("rules", "target", "fact"),
    [
        (["localhost:6379"], "127.0.0.1:6379", "an address is allowed only by an address"),
        (["*.internal:6379"], "10.0.0.5:6379", "an address is allowed only by an address"),
        (["db:5432"], "db:6379", "no rule allows port 6379"),
        (["10.0.0.0/8:6379"], "cache.internal:6379", "resolves to none of them"),
        (["db:6379", "10.0.0.0/8:6379"], "cache:6379", "no rule allows this host on port 6379"),
    ],
)
def test_refusal_names_the_fact_not_the_rules(rules: list[str], target: str, fact: str) -> None:
    """A 403's reason says what would let the target through, never lists the rules."""
    policy = Policy.from_patterns(rules)
    reason = policy.refusal(parse_target(target))
    assert reason.startswith(f"target not allowed: {target} (")
    assert fact in reason
    for rule in rules:
        assert rule not in reason.replace(target, "")
    assert all(rule in policy.rules_text() for rule in rules)


@pytest.mark.parametrize(
    ("rules", "bind", "port", "allowed"),
    [
        ([], "127.0.0.1", 9000, False),
        (["127.0.0.1:9000-9100"], "127.0.0.1", 9000, True),
        (["127.0.0.1:9000-9100"], "127.0.0.1", 9101, False),
        (["127.0.0.1:9000-9100"], "0.0.0.0", 9000, False),
        (["127.0.0.1:9000-9100"], "127.0.0.1", 0, True),
        (["127.0.0.1:9000-9100"], "::1", 0, False),
        (["*:9000"], "0.0.0.0", 9000, True),
        (["*:9000"], "::", 9000, True),
        (["127.0.0.0/8:*"], "127.0.0.2", 1, True),
        (["[::1]:*"], "::1", 22, True),
        (["[::1]:*"], "127.0.0.1", 22, False),
        (["[::]:*"], "::", 22, True),
        (["127.0.0.1:*"], "localhost", 22, False),  # binds are addresses
    ],
)
def test_listen_rules(rules: list[str], bind: str, port: int, allowed: bool) -> None:
    """Reverse tunnels listen only where an allow_listen rule allows: default deny."""
    policy = Policy.from_patterns([], allow_listen=rules)
    assert policy.may_listen(bind, port) is allowed


def test_listen_rules_are_addresses_not_names() -> None:
    with pytest.raises(TargetError, match="the host is a bind address"):
        Policy.from_patterns([], allow_listen=["laptop:9000"])
    with pytest.raises(TargetError, match="the host is a bind address"):
        Policy.from_patterns([], allow_listen=["*.example:9000"])


def test_policy_file_listen_rules(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('allow = ["db:5432"]\nallow_listen = ["127.0.0.1:9000-9001"]\n')
    policy = load_policy_file(path)
    assert [str(rule) for rule in policy.allow_listen] == ["127.0.0.1:9000-9001"]
    assert policy.may_listen("127.0.0.1", 9001)
    path.write_text('allow_listen = ["db:9000"]\n')
    with pytest.raises(TargetError, match=r"policy file .*the host is a bind address"):
        load_policy_file(path)


@pytest.mark.parametrize(
    ("rules", "target", "proto", "allowed"),
    [
        (["10.0.0.2:53/udp"], "10.0.0.2:53", "udp", True),
        (["10.0.0.2:53/udp"], "10.0.0.2:53", "tcp", False),  # a UDP rule never allows TCP
        (["10.0.0.2:53"], "10.0.0.2:53", "udp", False),  # a rule without /udp is TCP only
        (["10.0.0.2:53/tcp"], "10.0.0.2:53", "tcp", True),  # /tcp, the explicit default
        (["10.0.0.0/8:*/udp"], "10.9.9.9:51820", "udp", True),
        (["[fd00::/8]:53/UDP"], "[fd00::5]:53", "udp", True),
        (["*:*/udp"], "169.254.169.254:53", "udp", False),  # metadata: denied for UDP too
        (["169.254.169.254:53/udp"], "169.254.169.254:53", "udp", True),
        (["dns.internal:53/udp"], "dns.internal:53", "udp", True),
    ],
)
def test_rules_are_per_protocol(rules: list[str], target: str, proto: str, allowed: bool) -> None:
    policy = Policy.from_patterns(rules)
    parsed = parse_target(target)
    addresses = ["10.0.0.7"] if parsed.host == "dns.internal" else [parsed.host]
    assert policy.decide(parsed, addresses, proto).allowed is allowed


def test_a_udp_refusal_names_the_protocol() -> None:
    policy = Policy.from_patterns(["10.0.0.2:53"], deny=["10.0.0.3:53/udp"])
    reason = policy.decide(parse_target("10.0.0.2:53"), ["10.0.0.2"], "udp").reason
    assert reason == "target not allowed: 10.0.0.2:53/udp (no rule allows port 53/udp)"
    denied = Policy.from_patterns(["*:53/udp"], deny=["10.0.0.3:53/udp"])
    reason = denied.decide(parse_target("10.0.0.3:53"), ["10.0.0.3"], "udp").reason
    assert reason == "target not allowed: 10.0.0.3:53/udp (denied by 10.0.0.3:53/udp)"
    assert denied.decide(parse_target("10.0.0.3:53"), ["10.0.0.3"], "tcp").rule is None
