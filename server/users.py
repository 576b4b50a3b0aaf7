"""Who may connect, and what each may reach: the users file and the server's access.

``--users-file FILE`` (TOML) names users, one table each::

    [users.alice]
    token_sha256 = "9f86d0..."      # the SHA-256 of her token, never the token
    allow = ["staging-db.internal:5432"]
    deny = []
    allow_listen = ["127.0.0.1:9001"]
    max_tunnels = 20

A request's bearer token is hashed once and compared, in constant time, with
every user's hash (no early exit), so the time taken depends on how many
users the file holds (about 90 ns each) and not on which one, if any,
matches. A user's rules add to the server-wide ones (``--allow``,
``--allow-listen``, the policy file); every deny, server-wide or the
user's, wins. ``--token-file`` keeps working: its
token is one anonymous user with the server-wide rules.

:class:`Access` is one consistent snapshot of all of that; a reload builds a
new one whole (or fails, leaving the old one in force) and swaps it in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from wstun.common.errors import TargetError
from wstun.server.policy import Policy

__all__ = [
    "ANONYMOUS",
    "Access",
    "User",
    "Users",
    "UsersFileError",
    "load_users",
    "new_token",
    "parse_users",
]

#: The name logs and metrics give the ``--token-file`` user (and everyone, with no token).
ANONYMOUS = "-"
#: A user's name: what ``[users.NAME]`` may say (it goes into logs and metric labels).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
_HASH = re.compile(r"[0-9a-f]{64}\Z")
_KEYS = ("token_sha256", "allow", "deny", "allow_listen", "max_tunnels")
#: Bytes of randomness in a token from ``new-token`` (256 bits).
TOKEN_BYTES = 32


class UsersFileError(Exception):
    """A users file that can't be used: the message names the file, line, user and key."""


@dataclasses.dataclass(frozen=True, eq=False)
class User:
    """One user: the hash of their token, their own rules, their tunnel cap."""

    name: str
    token_sha256: bytes
    #: The user's own rules (the server-wide ones are added by :class:`Access`).
    policy: Policy
    max_tunnels: int | None = None

    def same_as(self, other: User) -> bool:
        """The same token, rules and cap: a reload leaves this user's tunnels alone."""
        return (
            self.token_sha256 == other.token_sha256
            and self.max_tunnels == other.max_tunnels
            and self.policy == other.policy
        )


@dataclasses.dataclass(frozen=True)
class Users:
    """The users of a users file, in its order."""

    users: tuple[User, ...] = ()
    # By name, for the lookups of every tunnel (derived from ``users``).
    _by_name: dict[str, User] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {user.name: user for user in self.users})

    def identify(self, token: str) -> User | None:
        """The user whose token this is; every hash is compared, whatever matches."""
        digest = hashlib.sha256(token.encode()).digest()
        found: User | None = None
        for user in self.users:
            if hmac.compare_digest(digest, user.token_sha256):
                found = user
        return found

    def named(self, name: str) -> User | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return [user.name for user in self.users]


@dataclasses.dataclass(frozen=True)
class Access:
    """The server-wide rules, the ``--token-file`` token and the users: one snapshot."""

    policy: Policy = dataclasses.field(default_factory=Policy)
    token: str | None = None
    users: Users | None = None
    _merged: dict[str, Policy] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def needs_token(self) -> bool:
        return self.token is not None or self.users is not None

    def identify(self, token: str) -> User | Literal[True] | None:
        """Who ``token`` is: a user of the file, True for the ``--token-file`` token,
        None for nobody. Every user's hash is compared either way."""
        user = self.users.identify(token) if self.users is not None else None
        anonymous = self.token is not None and hmac.compare_digest(
            token.encode(), self.token.encode()
        )
        if user is not None:
            return user
        return True if anonymous else None

    def policy_for(self, user: str) -> Policy:
        """The rules for ``user`` (a name, or ANONYMOUS): the server-wide ones, then the
        user's own."""
        policy = self._merged.get(user)
        if policy is None:
            found = self.users.named(user) if self.users is not None else None
            policy = self.policy if found is None else self.policy.merged(found.policy)
            self._merged[user] = policy
        return policy

    def user(self, name: str) -> User | None:
        return None if self.users is None else self.users.named(name)


def new_token(name: str) -> tuple[str, str]:
    """A fresh token for ``name`` and the TOML table that lets it in."""
    if not _NAME.match(name):
        raise UsersFileError(
            f"bad user name {name!r}: letters, digits and . _ @ - (up to 64, starting "
            "with a letter or digit)"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    digest = hashlib.sha256(token.encode()).hexdigest()
    key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'  # TOML bare key?
    table = (
        f"[users.{key}]\n"
        f'token_sha256 = "{digest}"\n'
        "allow = []\n"
        "deny = []\n"
        "allow_listen = []\n"
        "# max_tunnels = 20\n"
    )
    return token, table


def load_users(path: Path) -> Users:
    """The users of the file at ``path``; :class:`UsersFileError` says what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"can't read users file {path}: {exc}") from None
    return parse_users(text, str(path))


def parse_users(text: str, source: str) -> Users:
    """The users of a users file's ``text`` (``source`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"{source}: not valid TOML: {exc}") from None
    lines = text.splitlines()
    unknown = sorted(set(data) - {"users"})
    if unknown:
        raise UsersFileError(
            f"{_where(source, lines, None, unknown[0])}: unknown key {unknown[0]!r} "
            "(the file holds [users.NAME] tables)"
        )
    tables = data.get("users", {})
    if not isinstance(tables, dict):
        raise UsersFileError(f"{source}: 'users' must be tables: [users.NAME]")
    users: list[User] = []
    seen: dict[bytes, str] = {}
    for name, table in tables.items():
        user = _user(name, table, source, lines)
        if user.token_sha256 in seen:
            raise UsersFileError(
                f"{_where(source, lines, name, 'token_sha256')}: users.{name}: token_sha256 "
                f"is also users.{seen[user.token_sha256]}'s: each user needs a token of their own"
            )
        seen[user.token_sha256] = name
        users.append(user)
    return Users(tuple(users))


def _user(name: str, table: Any, source: str, lines: list[str]) -> User:

    def where() -> str:  # only for an error: it scans the file
        return _where(source, lines, name, None)

    if not _NAME.match(name):
        raise UsersFileError(
            f"{where()}: bad user name {name!r}: letters, digits and . _ @ - (up to 64)"
        )
    if not isinstance(table, dict):
        raise UsersFileError(f"{where()}: users.{name} must be a table")
    for key in table:
        if key not in _KEYS:
            raise UsersFileError(
                f"{_where(source, lines, name, key)}: users.{name}: unknown key {key!r} "
                f"(known: {', '.join(_KEYS)})"
            )
    digest = table.get("token_sha256")
    if digest is None:
        raise UsersFileError(
            f"{where()}: users.{name}: token_sha256 is missing: the SHA-256 of the user's token "
            "(wstun-server new-token NAME prints one)"
        )
    if not isinstance(digest, str) or not _HASH.match(digest.lower()):
        raise UsersFileError(
            f"{_where(source, lines, name, 'token_sha256')}: users.{name}: token_sha256 must "
            "be 64 hex digits, the SHA-256 of the token (wstun-server new-token NAME prints one)"
        )
    lists = {key: _strings(table, key, name, source, lines) for key in _KEYS[1:4]}
    for key, rules in lists.items():  # each list on its own: an error names its own key
        try:
            Policy.from_patterns(
                rules if key == "allow" else (),
                deny=rules if key == "deny" else (),
                allow_listen=rules if key == "allow_listen" else (),
            )
        except TargetError as exc:
            raise UsersFileError(
                f"{_where(source, lines, name, key)}: users.{name}: {key}: {exc}"
            ) from None
    policy = Policy.from_patterns(
        lists["allow"], deny=lists["deny"], allow_listen=lists["allow_listen"]
    )
    cap = table.get("max_tunnels")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise UsersFileError(
            f"{_where(source, lines, name, 'max_tunnels')}: users.{name}: max_tunnels must be "
            "a whole number of at least 1"
        )
    return User(name, bytes.fromhex(digest), policy, cap)


def _strings(
    table: Mapping[str, Any], key: str, name: str, source: str, lines: list[str]
) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsersFileError(
            f"{_where(source, lines, name, key)}: users.{name}: {key} must be a list of strings"
        )
    return value


def _where(source: str, lines: list[str], user: str | None, key: str | None) -> str:
    """``FILE:LINE`` of ``key`` in ``[users.USER]`` (or of the table, or the top level)."""
    header = re.compile(rf"^\s*\[\s*users\s*\.\s*\"?{re.escape(user)}\"?\s*\]") if user else None
    in_table = header is None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            if header is not None and header.match(line):
                if key is None:
                    return f"{source}:{number}"
                in_table = True
                continue
            if in_table and header is not None:
                break
            in_table = False
            continue
        if in_table and key is not None and re.match(rf"{re.escape(key)}\s*=", stripped):
            return f"{source}:{number}"
    if user is None and key is not None:  # a top-level table: [key] or [key.something]
        table = re.compile(rf"^\s*\[\s*\"?{re.escape(key)}\"?\s*[.\]]")
        for number, line in enumerate(lines, start=1):
            if table.match(line):
                return f"{source}:{number}"
    return source
