"""Live changes to who may connect and what each may reach (SIGHUP, ``--reload-interval``).

A reload reads the users file and the policy file again and builds a new
:class:`Access` whole; a file that is broken leaves the old one in force.
The new one then takes a second look at what is open: a tunnel (or reverse
listener) whose user is gone, whose user's token changed, or whose target
(or listen address) the new rules no longer allow, is closed with 1008 and
the reason. Everything still allowed is left alone. This module holds the
pure part of that: what changed, and what each open thing would be told.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from wstun.common.protocol import Target
from wstun.server.users import ANONYMOUS, Access

__all__ = [
    "Changes",
    "fingerprint",
    "lease_revoked",
    "listen_revoked",
    "target_revoked",
    "tunnel_revoked",
    "user_revoked",
]


@dataclasses.dataclass(frozen=True)
class Changes:
    """What a reload changed, for its log line."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    rules_changed: bool = False

    @classmethod
    def between(cls, old: Access, new: Access) -> Changes:
        before = {user.name: user for user in old.users.users} if old.users else {}
        after = {user.name: user for user in new.users.users} if new.users else {}
        return cls(
            added=tuple(name for name in after if name not in before),
            removed=tuple(name for name in before if name not in after),
            changed=tuple(
                name for name in after if name in before and not before[name].same_as(after[name])
            ),
            rules_changed=old.policy != new.policy,
        )

    def line(self) -> str:
        def names(found: tuple[str, ...]) -> str:
            return ", ".join(found) if found else "none"

        return (
            f"users added: {names(self.added)}; removed: {names(self.removed)}; "
            f"changed: {names(self.changed)}; server-wide rules "
            f"{'changed' if self.rules_changed else 'unchanged'}"
        )


def user_revoked(user: str | None, old: Access, new: Access) -> str | None:
    """Why ``user``'s tunnels must end under ``new`` (None: they may go on)."""
    if user is None or user == ANONYMOUS:
        return None
    now = new.user(user)
    if now is None:
        return f"policy changed: user {user} removed"
    before = old.user(user)
    if before is not None and before.token_sha256 != now.token_sha256:
        return f"policy changed: user {user}'s token changed"
    return None


def target_revoked(
    user: str | None, target: Target, address: str, proto: str, new: Access
) -> str | None:
    """Why a tunnel of ``user`` dialled to ``target`` at ``address`` must end under
    ``new`` (None: the new rules still allow it)."""
    decision = new.policy_for(user or ANONYMOUS).decide(target, [address], proto)
    if decision.allowed:
        return None
    shown = f"{target}/udp" if proto == "udp" else str(target)
    return f"policy changed: target {shown} no longer allowed"


def listen_revoked(user: str | None, bind: Target, proto: str, new: Access) -> str | None:
    """Why a reverse listener of ``user`` on ``bind`` must close under ``new``."""
    if new.policy_for(user or ANONYMOUS).may_listen(bind.host, bind.port, proto):
        return None
    shown = f"{bind}/udp" if proto == "udp" else str(bind)
    return f"policy changed: listening on {shown} no longer allowed"


def tunnel_revoked(
    user: str | None,
    target: Target | None,
    address: str | None,
    proto: str,
    old: Access,
    new: Access,
) -> str | None:
    """Why a WebSocket of ``user`` must close under ``new``: its user is revoked, or the
    tunnel it carries (to ``target``, dialled at ``address``; None: no tunnel) is no
    longer allowed. None: it may go on."""
    why = user_revoked(user, old, new)
    if why is None and target is not None and address is not None:
        why = target_revoked(user, target, address, proto, new)
    return why


def lease_revoked(
    user: str | None, bind: Target, proto: str, old: Access, new: Access
) -> str | None:
    """Why a reverse listener of ``user`` on ``bind`` must close under ``new``: its user
    is revoked, or its listen rule is gone. None: it stays."""
    return user_revoked(user, old, new) or listen_revoked(user, bind, proto, new)


def fingerprint(paths: list[Path]) -> tuple[str, ...]:
    """The files' content, in short: what ``--reload-interval`` compares (a file that
    can't be read counts as its own state, and the reload says why)."""
    prints = []
    for path in paths:
        try:
            prints.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError as exc:
            prints.append(f"unreadable: {exc.errno}")
    return tuple(prints)
