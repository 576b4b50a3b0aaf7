"""Users: the users file, each user's rules, who a token is, per-user caps and reloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from websockets.datastructures import Headers

from wstun.common.errors import ConfigError
from wstun.common.protocol import HandshakeRejection, Target
from wstun.server.app import startup_notes
from wstun.server.config import RulesSource, ServerConfig
from wstun.server.handshake import INVALID_TOKEN, MISSING_TOKEN, RequestChecks
from wstun.server.limits import ConnectionLimits
from wstun.server.policy import Policy
from wstun.server.reload import Changes, listen_revoked, target_revoked, user_revoked
from wstun.server.users import (
    ANONYMOUS,
    TOKEN_BYTES,
    Access,
    User,
    Users,
    UsersFileError,
    load_users,
    new_token,
    parse_users,
)


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


ALICE = sha("alice-token")
ROBOT = sha("robot-token")


def table(name: str, digest: str, *lines: str) -> str:
    """A ``[users.NAME]`` table with its hash and more lines."""
    return "\n".join([f"[users.{name}]", f'token_sha256 = "{digest}"', *lines]) + "\n"


def broken(error: str) -> str:
    """The message a broken users file gets."""
    with pytest.raises(UsersFileError) as raised:
        parse_users(error, "users.toml")
    return str(raised.value)


# Each row: the file's text, the line at fault (1-based), the user, what the message says.
BROKEN = [
    pytest.param(
        table("alice", ALICE, "colour = 'blue'"),
        3,
        "alice",
        "unknown key 'colour'",
        id="unknown-key-in-user",
    ),
    pytest.param(
        "# users\nversion = 2\n" + table("alice", ALICE),
        2,
        None,
        "unknown key 'version'",
        id="unknown-top-level-key",
    ),
    pytest.param(
        table("alice", ALICE, 'allow = ["db:5432", "db"]'),
        3,
        "alice",
        "bad rule 'db'",
        id="bad-allow-rule",
    ),
    pytest.param(
        table("alice", ALICE, 'allow = ["db:5432"]', 'allow_listen = ["db.internal:9001"]'),
        4,
        "alice",
        "bad listen rule 'db.internal:9001'",
        id="bad-allow-listen-rule",
    ),
    pytest.param(
        table("alice", ALICE, 'allow = ["db:5432"]', "", 'deny = ["10.0.0.0/8:99999"]'),
        5,
        "alice",
        "port in rule '10.0.0.0/8:99999' must be between 1 and 65535",
        id="bad-deny-rule",
    ),
    pytest.param(
        table("alice", ALICE) + "\n" + table("robot", ALICE.upper()),
        5,
        "robot",
        "token_sha256 is also users.alice's",
        id="duplicate-hash",
    ),
    pytest.param(
        table("alice", ALICE[:63]),
        2,
        "alice",
        "token_sha256 must be 64 hex digits",
        id="hash-too-short",
    ),
    pytest.param(
        table("alice", "g" * 64),
        2,
        "alice",
        "token_sha256 must be 64 hex digits",
        id="hash-not-hex",
    ),
    pytest.param(
        table("alice", ALICE + "0"),
        2,
        "alice",
        "token_sha256 must be 64 hex digits",
        id="hash-too-long",
    ),
    pytest.param(
        table("alice", ALICE) + '[users.robot]\nallow = ["db:5432"]\n',
        3,  # the table's header: the key it lacks has no line
        "robot",
        "token_sha256",
        id="missing-hash",
    ),
    pytest.param(
        table("alice", ALICE, "max_tunnels = 0"),
        3,
        "alice",
        "max_tunnels must be a whole number of at least 1",
        id="max-tunnels-zero",
    ),
    pytest.param(
        table("alice", ALICE, 'max_tunnels = "5"'),
        3,
        "alice",
        "max_tunnels must be a whole number of at least 1",
        id="max-tunnels-string",
    ),
    pytest.param(
        table("alice", ALICE, "max_tunnels = true"),
        3,
        "alice",
        "max_tunnels must be a whole number of at least 1",
        id="max-tunnels-bool",
    ),
    pytest.param(
        table("alice", ALICE, "max_tunnels = 2.5"),
        3,
        "alice",
        "max_tunnels must be a whole number of at least 1",
        id="max-tunnels-float",
    ),
    pytest.param(
        table("alice", ALICE, 'allow = "db:5432"'),
        3,
        "alice",
        "allow must be a list of strings",
        id="allow-not-a-list",
    ),
    pytest.param(
        table("alice", ALICE, 'deny = ["db:5432", 5432]'),
        3,
        "alice",
        "deny must be a list of strings",
        id="deny-not-strings",
    ),
    pytest.param(
        table("alice", ALICE) + table('"bad name"', ROBOT),
        3,
        "bad name",
        "bad user name 'bad name'",
        id="bad-user-name",
    ),
    pytest.param(
        table("alice", ALICE) + table("-robot", ROBOT),
        3,
        "-robot",
        "bad user name '-robot'",
        id="user-name-starting-with-a-dash",
    ),
]


@pytest.mark.parametrize(("text", "line", "user", "said"), BROKEN)
def test_broken_users_file(text: str, line: int, user: str | None, said: str) -> None:
    """A broken users file is an error naming the file and line, the user and the key."""
    message = broken(text)
    assert message.startswith(f"users.toml:{line}: "), message
    if user is not None:
        assert user in message
        if " " not in user and not user.startswith("-"):
            assert f"users.{user}: " in message
    assert said in message


def test_lines_counted_are_the_lines_written() -> None:
    """The line in a message is the one an editor shows for the key (comments, blank lines,
    multi-line lists and other users' keys before it included)."""
    text = (
        "# who may connect\n"  # 1
        "\n"  # 2
        "[users.robot]\n"  # 3
        f'token_sha256 = "{ROBOT}"\n'  # 4
        "max_tunnels = 3\n"  # 5
        "\n"  # 6
        "[users.alice]\n"  # 7
        f'token_sha256 = "{ALICE}"\n'  # 8
        "allow = [\n"  # 9
        '  "db:5432",\n'  # 10
        "]\n"  # 11
        "max_tunnels = -1\n"  # 12
    )
    message = broken(text)
    assert message.startswith("users.toml:12: users.alice: max_tunnels"), message
    assert text.splitlines()[12 - 1].startswith("max_tunnels")


@pytest.mark.parametrize(
    ("key", "lines"),
    [
        ("allow", ['allow = ["db"]']),
        ("deny", ['deny = ["db:x"]']),
        ("allow_listen", ['allow_listen = ["db.internal:9001"]']),
    ],
)
def test_rule_errors_name_their_key(key: str, lines: list[str]) -> None:
    """A bad rule's message says which list it is in, not only which line."""
    assert f"{key}" in broken(table("alice", ALICE, *lines)).partition("users.alice: ")[2]


def test_bad_listen_rule_also_in_allow_is_found_on_its_own_line() -> None:
    """A rule text valid in allow and not in allow_listen is blamed on the allow_listen line."""
    lines = ['allow = ["db.internal:9001"]', 'allow_listen = ["db.internal:9001"]']
    assert broken(table("alice", ALICE, *lines)).startswith("users.toml:4: ")


def test_unknown_top_level_table_gets_its_line() -> None:
    """A typo'd table name ([user.alice] for [users.alice]) is shown at its header."""
    message = broken("# users\n[user.alice]\n" + f'token_sha256 = "{ALICE}"\n')
    assert message.startswith("users.toml:2: "), message


def test_not_toml_at_all() -> None:
    """A file that isn't TOML says so, naming the file and (tomllib's) line."""
    message = broken(table("alice", ALICE) + "this is not toml\n" + table("robot", ROBOT))
    assert message.startswith("users.toml: not valid TOML: ")
    assert "(at line 3, column 6)" in message
    assert "this is not toml" not in message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("users = 3\n", "'users' must be tables"),
        ("[users]\nalice = 3\n", "users.alice must be a table"),
    ],
)
def test_users_that_are_not_tables(text: str, said: str) -> None:
    assert said in broken(text)


def test_good_users_file(tmp_path: Path) -> None:
    """Every key read; users in the file's order; an upper-case hash is the same hash."""
    path = tmp_path / "users.toml"
    path.write_text(
        table(
            "alice",
            ALICE.upper(),
            'allow = ["db:5432"]',
            'deny = ["db:5433"]',
            'allow_listen = ["127.0.0.1:9001"]',
            "max_tunnels = 20",
        )
        + table("robot", ROBOT)
    )
    users = load_users(path)
    assert users.names == ["alice", "robot"]
    alice, robot = users.users
    assert alice.token_sha256 == bytes.fromhex(ALICE)
    assert [str(r) for r in alice.policy.allow] == ["db:5432"]
    assert [str(r) for r in alice.policy.deny] == ["db:5433"]
    assert [str(r) for r in alice.policy.allow_listen] == ["127.0.0.1:9001"]
    assert alice.max_tunnels == 20
    assert robot.policy == Policy()
    assert robot.max_tunnels is None
    assert parse_users("", "empty.toml") == Users(())


def test_unreadable_users_file(tmp_path: Path) -> None:
    """A file that can't be read is an error naming it."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(UsersFileError, match=r"can.t read users file .*missing\.toml"):
        load_users(missing)


def test_rules_source_names_the_option(tmp_path: Path) -> None:
    """A broken users file is a ConfigError of --users-file, with file:line, user and key."""
    path = tmp_path / "users.toml"
    path.write_text(table("alice", ALICE, "colour = 'blue'"))
    with pytest.raises(ConfigError) as raised:
        RulesSource(users_file=path).load(None)
    assert raised.value.option == "--users-file"
    assert f"{path}:3: users.alice: unknown key 'colour'" in str(raised.value)
    path.write_text(table("alice", ALICE))
    access = RulesSource(("db:5432",), users_file=path).load("s3cret")
    assert access.token == "s3cret"
    assert access.users is not None
    assert access.users.names == ["alice"]
    assert [str(r) for r in access.policy.allow] == ["db:5432"]


# -- what each user may reach --------------------------------------------------------------

SERVER_WIDE = Policy.from_patterns(
    ["10.9.0.0/16:443"],
    deny=["10.9.9.9:443", "10.1.2.4:5432"],
    allow_listen=["127.0.0.1:9100"],
)
USERS_FILE = table(
    "alice",
    ALICE,
    'allow = ["10.1.2.3:5432", "10.1.2.4:5432", "169.254.169.254:80"]',
    'deny = ["10.9.1.1:443"]',
    'allow_listen = ["127.0.0.1:9001"]',
) + table("robot", ROBOT, 'allow = ["*:80"]')


def access(token: str | None = None) -> Access:
    return Access(SERVER_WIDE, token, parse_users(USERS_FILE, "users.toml"))


@pytest.mark.parametrize(
    ("target", "alice", "robot", "anonymous"),
    [
        # Only alice's own rule allows it.
        ("10.1.2.3:5432", True, False, False),
        # The server-wide allow applies to everyone.
        ("10.9.2.2:443", True, True, True),
        # The server-wide deny beats alice's allow.
        ("10.1.2.4:5432", False, False, False),
        ("10.9.9.9:443", False, False, False),
        # Alice's deny beats the server-wide allow, for her only.
        ("10.9.1.1:443", False, True, True),
        # Robot's *:80 is his; the metadata address needs an address rule (alice has one).
        ("10.7.7.7:80", False, True, False),
        ("169.254.169.254:80", True, False, False),
        # Nobody's rule.
        ("10.1.2.3:5433", False, False, False),
    ],
)
def test_rules_per_user(target: str, alice: bool, robot: bool, anonymous: bool) -> None:
    """A user's rules add to the server-wide ones, every deny wins, "-" gets only the
    server-wide rules."""
    host, _, port = target.rpartition(":")
    rules = access()
    got = {
        name: rules.policy_for(name).decide(Target(host, int(port)), [host], "tcp").allowed
        for name in ("alice", "robot", ANONYMOUS)
    }
    assert got == {"alice": alice, "robot": robot, ANONYMOUS: anonymous}


def test_denied_target_names_the_deny_rule() -> None:
    """What the log says of a refusal: the deny rule, whoever's it is."""
    rules = access()
    decision = rules.policy_for("alice").decide(Target("10.9.1.1", 443), ["10.9.1.1"])
    assert decision.reason == "target not allowed: 10.9.1.1:443 (denied by 10.9.1.1:443)"
    decision = rules.policy_for("alice").decide(Target("10.1.2.4", 5432), ["10.1.2.4"])
    assert decision.reason == "target not allowed: 10.1.2.4:5432 (denied by 10.1.2.4:5432)"


@pytest.mark.parametrize(
    ("bind", "port", "proto", "alice", "robot", "anonymous"),
    [
        ("127.0.0.1", 9001, "tcp", True, False, False),
        ("127.0.0.1", 9100, "tcp", True, True, True),
        ("127.0.0.1", 9002, "tcp", False, False, False),
        ("127.0.0.1", 9001, "udp", False, False, False),
        ("0.0.0.0", 9001, "tcp", False, False, False),
        ("127.0.0.1", 0, "tcp", True, True, True),
    ],
)
def test_listen_rules_per_user(
    bind: str, port: int, proto: str, alice: bool, robot: bool, anonymous: bool
) -> None:
    """Alice may listen on 127.0.0.1:9001, robot may not; the server-wide rule is everyone's."""
    rules = access()
    got = {
        name: rules.policy_for(name).may_listen(bind, port, proto)
        for name in ("alice", "robot", ANONYMOUS)
    }
    assert got == {"alice": alice, "robot": robot, ANONYMOUS: anonymous}


def test_unknown_name_gets_the_server_wide_rules() -> None:
    """A name that isn't a user (the anonymous "-", or one since removed): server-wide only."""
    rules = access()
    assert rules.policy_for(ANONYMOUS) == SERVER_WIDE
    assert rules.policy_for("mallory") == SERVER_WIDE
    assert Access(SERVER_WIDE).policy_for("alice") == SERVER_WIDE


# -- who a token is ------------------------------------------------------------------------


def test_identify() -> None:
    """A user's token is that user; the --token-file token is True; anything else None."""
    rules = access(token="anonymous-token")
    alice = rules.identify("alice-token")
    assert isinstance(alice, User)
    assert alice.name == "alice"
    robot = rules.identify("robot-token")
    assert isinstance(robot, User)
    assert robot.name == "robot"
    assert rules.identify("anonymous-token") is True
    assert rules.identify("nobody") is None
    assert rules.identify("alice-token ") is None
    assert rules.identify("") is None
    assert access().identify("anonymous-token") is None
    assert Access(token="anonymous-token").identify("alice-token") is None


def test_every_hash_is_compared() -> None:
    """The user matching the last of 1,000 is found (and so is the first)."""
    text = "".join(table(f"user{i}", sha(f"token-{i}")) for i in range(1000))
    users = parse_users(text, "users.toml")
    assert len(users.users) == 1000
    last = users.identify("token-999")
    assert last is not None
    assert last.name == "user999"
    first = users.identify("token-0")
    assert first is not None
    assert first.name == "user0"
    assert users.identify("token-1000") is None


@pytest.mark.parametrize(
    ("token", "users", "needed"),
    [
        (None, None, False),
        ("s3cret", None, True),
        (None, Users(()), True),
        (None, parse_users(table("alice", ALICE), "u"), True),
        ("s3cret", parse_users(table("alice", ALICE), "u"), True),
    ],
)
def test_needs_token(token: str | None, users: Users | None, needed: bool) -> None:
    """A token is needed when --token-file or --users-file is given (an empty users file
    too: it lets nobody in)."""
    assert Access(Policy(), token, users).needs_token is needed


def bearer(token: str | None) -> Headers:
    return Headers({} if token is None else {"Authorization": f"Bearer {token}"})


def test_request_identify() -> None:
    """The bearer token names the user, "-" for the --token-file token, 401 for the rest."""
    checks = RequestChecks("/", access(token="anonymous-token"), None)
    assert checks.identify(bearer("alice-token")) == "alice"
    assert checks.identify(bearer("robot-token")) == "robot"
    assert checks.identify(bearer("anonymous-token")) == ANONYMOUS
    for headers, reason in [
        (bearer(None), MISSING_TOKEN),
        (Headers({"Authorization": "Basic YWxpY2U6eA=="}), MISSING_TOKEN),
        (bearer("wrong"), INVALID_TOKEN),
    ]:
        refused = checks.identify(headers)
        assert isinstance(refused, HandshakeRejection)
        assert refused.status == 401
        assert refused.reason == reason
    assert RequestChecks("/", Access(), None).identify(bearer(None)) == ANONYMOUS
    assert RequestChecks("/", Access(), None).identify(bearer("anything")) == ANONYMOUS


def test_wrong_token_says_nothing_of_users() -> None:
    """An unknown token gets the same 401 whatever users exist, naming none of them."""
    others = parse_users(table("carol", sha("carol-token")) + table("dave", sha("d")), "x")
    reasons = []
    for checks in [
        RequestChecks("/", access(), None),
        RequestChecks("/", Access(SERVER_WIDE, None, others), None),
        RequestChecks("/", Access(SERVER_WIDE, "anonymous-token", None), None),
    ]:
        refused = checks.identify(bearer("alice-token-guess"))
        assert isinstance(refused, HandshakeRejection)
        assert refused.status == 401
        reasons.append(refused.reason)
    assert len(set(reasons)) == 1
    for name in ("alice", "robot", "carol", "dave", "users."):
        assert name not in reasons[0]


# -- new-token -----------------------------------------------------------------------------


def test_new_token() -> None:
    """256 random bits, base64url; the table it comes with lets exactly that token in."""
    token, text = new_token("alice")
    assert TOKEN_BYTES == 32
    assert len(token) >= 43
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert new_token("alice")[0] != token
    users = parse_users(text, "new.toml")
    assert users.names == ["alice"]
    found = users.identify(token)
    assert found is not None
    assert found.name == "alice"
    assert found.policy == Policy()
    assert found.max_tunnels is None
    assert sha(token) in text


@pytest.mark.parametrize("name", ["bad name", "", "-alice", "a" * 65, "alice/bob", "ålice"])
def test_new_token_bad_name(name: str) -> None:
    with pytest.raises(UsersFileError, match="bad user name"):
        new_token(name)


@pytest.mark.parametrize(
    "name",
    [
        "robot-1",
        "A_b",
        "a" * 64,
        pytest.param(
            "svc.backup",
        ),
        pytest.param(
            "alice@example.com",
        ),
    ],
)
def test_new_token_table_parses_for_every_good_name(name: str) -> None:
    """Every name new_token accepts gives a table parse_users reads back as that user."""
    token, text = new_token(name)
    found = parse_users(text, "new.toml").identify(token)
    assert found is not None
    assert found.name == name


# -- per-user tunnel caps ------------------------------------------------------------------


def test_tunnel_cap_per_user() -> None:
    """A cap of 2 refuses the third with 503 naming the user and the limit; giving one back
    frees it; other users and uncapped users are not affected."""
    limits = ConnectionLimits()
    assert limits.take_tunnel("alice", 2) is None
    assert limits.take_tunnel("alice", 2) is None
    refused = limits.take_tunnel("alice", 2)
    assert refused is not None
    assert refused.status == 503
    assert refused.reason == "too many tunnels for user alice (limit 2)"
    assert limits.take_tunnel("robot", 2) is None
    assert limits.take_tunnel("robot", 2) is None
    limits.give_tunnel("alice")
    assert limits.take_tunnel("alice", 2) is None
    assert limits.take_tunnel("alice", 2) is not None
    for _ in range(1000):
        assert limits.take_tunnel(ANONYMOUS, None) is None
    assert limits.per_user == {"alice": 2, "robot": 2, ANONYMOUS: 1000}
    for user in ("alice", "alice", "robot", "robot"):
        limits.give_tunnel(user)
    assert limits.per_user == {ANONYMOUS: 1000}
    assert limits.total == 0


# -- reloads -------------------------------------------------------------------------------


def users_of(*tables: str) -> Users:
    return parse_users("".join(tables), "users.toml")


def test_same_as() -> None:
    """A user is the same when token, rules and cap are; any of them changed, not."""
    base = users_of(table("alice", ALICE, 'allow = ["db:5432"]', "max_tunnels = 2")).users[0]
    for lines, same in [
        (['allow = ["db:5432"]', "max_tunnels = 2"], True),
        (['allow = [" db:5432 "]', "max_tunnels = 2"], True),
        (['allow = ["db:5433"]', "max_tunnels = 2"], False),
        (['allow = ["db:5432"]', 'deny = ["db:5432"]', "max_tunnels = 2"], False),
        (['allow = ["db:5432"]', 'allow_listen = ["127.0.0.1:1"]', "max_tunnels = 2"], False),
        (['allow = ["db:5432"]', "max_tunnels = 3"], False),
        (['allow = ["db:5432"]'], False),
    ]:
        other = users_of(table("alice", ALICE, *lines)).users[0]
        assert base.same_as(other) is same, lines
    other = users_of(table("alice", ROBOT, 'allow = ["db:5432"]', "max_tunnels = 2")).users[0]
    assert not base.same_as(other)


def test_changes_between() -> None:
    """Added, removed and changed users in file order; the server-wide rules compared."""
    old = Access(
        SERVER_WIDE,
        None,
        users_of(table("alice", ALICE), table("robot", ROBOT), table("carol", sha("c"))),
    )
    new = Access(
        SERVER_WIDE,
        None,
        users_of(
            table("carol", sha("c")),
            table("alice", ALICE, "max_tunnels = 1"),
            table("dave", sha("d")),
        ),
    )
    changes = Changes.between(old, new)
    assert changes == Changes(("dave",), ("robot",), ("alice",), False)
    assert changes.line() == (
        "users added: dave; removed: robot; changed: alice; server-wide rules unchanged"
    )
    same = Changes.between(old, Access(SERVER_WIDE, None, old.users))
    assert same == Changes()
    assert same.line() == (
        "users added: none; removed: none; changed: none; server-wide rules unchanged"
    )
    rules = Changes.between(old, Access(Policy.from_patterns(["db:5432"]), None, old.users))
    assert rules == Changes(rules_changed=True)
    dropped = Changes.between(old, Access(SERVER_WIDE))
    assert dropped.removed == ("alice", "robot", "carol")
    added = Changes.between(Access(SERVER_WIDE), old)
    assert added.added == ("alice", "robot", "carol")


def test_user_revoked() -> None:
    """A user removed or given a new token loses their tunnels; new rules alone don't."""
    old = access()
    moved = Access(
        SERVER_WIDE, None, users_of(table("alice", sha("new-alice-token")), table("robot", ROBOT))
    )
    gone = Access(SERVER_WIDE, None, users_of(table("robot", ROBOT, 'allow = ["*:*"]')))
    assert user_revoked("alice", old, gone) == "policy changed: user alice removed"
    assert user_revoked("alice", old, Access(SERVER_WIDE)) == "policy changed: user alice removed"
    assert user_revoked("alice", old, moved) == "policy changed: user alice's token changed"
    assert user_revoked("robot", old, gone) is None
    assert user_revoked("robot", old, moved) is None
    assert user_revoked(ANONYMOUS, old, gone) is None
    assert user_revoked(None, old, gone) is None


def test_target_revoked() -> None:
    """A tunnel the new rules no longer allow is told so, naming the target."""
    old = access()
    new = Access(
        SERVER_WIDE,
        None,
        users_of(table("alice", ALICE, 'allow = ["10.1.2.3:5433"]', 'deny = ["10.9.2.2:443"]')),
    )
    db = Target("10.1.2.3", 5432)
    assert target_revoked("alice", db, "10.1.2.3", "tcp", old) is None
    assert target_revoked("alice", db, "10.1.2.3", "tcp", new) == (
        "policy changed: target 10.1.2.3:5432 no longer allowed"
    )
    web = Target("10.9.2.2", 443)
    assert target_revoked("alice", web, "10.9.2.2", "tcp", new) == (
        "policy changed: target 10.9.2.2:443 no longer allowed"
    )
    assert target_revoked(ANONYMOUS, web, "10.9.2.2", "tcp", new) is None
    assert target_revoked(None, web, "10.9.2.2", "tcp", new) is None
    # A name target: the address it was dialled at is what is judged.
    named = Target("db.internal", 5432)
    assert target_revoked("alice", named, "10.1.2.3", "tcp", old) is None
    assert target_revoked("alice", named, "10.1.2.3", "tcp", new) == (
        "policy changed: target db.internal:5432 no longer allowed"
    )
    dns = Access(Policy.from_patterns(["10.0.0.53:53/udp"]))
    assert target_revoked(None, Target("10.0.0.53", 53), "10.0.0.53", "udp", dns) is None
    assert target_revoked(None, Target("10.0.0.53", 53), "10.0.0.53", "udp", Access()) == (
        "policy changed: target 10.0.0.53:53/udp no longer allowed"
    )


def test_listen_revoked() -> None:
    """A reverse listener the new rules no longer allow is told so, naming where it listens."""
    old = access()
    new = Access(SERVER_WIDE, None, users_of(table("alice", ALICE)))
    bind = Target("127.0.0.1", 9001)
    assert listen_revoked("alice", bind, "tcp", old) is None
    assert listen_revoked("alice", bind, "tcp", new) == (
        "policy changed: listening on 127.0.0.1:9001 no longer allowed"
    )
    assert listen_revoked("alice", Target("127.0.0.1", 9100), "tcp", new) is None
    assert listen_revoked(None, bind, "udp", old) == (
        "policy changed: listening on 127.0.0.1:9001/udp no longer allowed"
    )


# -- what the server says at startup ------------------------------------------------------


@pytest.mark.parametrize(
    ("users", "token", "said"),
    [
        (Users(()), None, "the users file has no users and there is no --token-file"),
        (
            Users(()),
            "t0ken",
            "users: 0 (none), each with a token of their own; and the --token-file",
        ),
        (
            parse_users(table("alice", ALICE) + table("robot", ROBOT), "users.toml"),
            None,
            "users: 2 (alice, robot), each with a token of their own",
        ),
    ],
)
def test_startup_says_who_may_connect(users: Users, token: str | None, said: str) -> None:
    notes = startup_notes(ServerConfig(users=users, token=token))
    assert any(said in line for _, line in notes), notes
