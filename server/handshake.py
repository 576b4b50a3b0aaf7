"""What an upgrade request must pass before its target is even looked at.

:class:`RequestChecks` applies, in order: a request line in ASCII, the
tunnel endpoint's path (404), an ``Upgrade: websocket`` header (426), the
request line and WebSocket headers (405, 505, 400, 426), the query string
(400) and the token (401), then names the target (``?to=`` or the server's
default; 400). The target's policy and the dial come after, in
:class:`~wstun.server.targets.TargetDialer`, so that a target named another
way (in-band, after the upgrade) passes exactly the same checks.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request

from wstun.common.protocol import (
    AUTHORIZATION_HEADER,
    QUERY_TARGET,
    SUBPROTOCOL_REVERSE,
    SUBPROTOCOL_V2,
    Failure,
    HandshakeRejection,
    Target,
    bearer_token,
    named_target,
    offers,
    path_matches,
    target_from_query,
)
from wstun.server.badinput import NOT_ASCII, handshake_problem, query_problem
from wstun.server.users import ANONYMOUS, Access

__all__ = ["INVALID_TOKEN", "MISSING_TOKEN", "RequestChecks"]

#: 401 reasons: what the client is missing, and how to give it.
MISSING_TOKEN = (
    "missing bearer token: this server needs one; give the client --token-file FILE "
    "or set WSTUN_TOKEN"
)
INVALID_TOKEN = (
    "invalid token: the client's --token-file or WSTUN_TOKEN holds another token than the server's"
)


class RequestChecks:
    """The request-level checks of one server: its path, who may connect (``access``,
    replaced whole on a reload), its default target."""

    def __init__(self, path: str, access: Access, default_target: Target | None) -> None:
        self.path = path
        self.access = access
        self._default_target = default_target

    def identify(self, headers: Headers) -> str | HandshakeRejection:
        """The user the bearer token names (ANONYMOUS for the ``--token-file`` token, and
        for everyone when no token is needed); 401 otherwise, saying nothing of users."""
        access = self.access
        if not access.needs_token:
            return ANONYMOUS
        token = bearer_token(headers.get(AUTHORIZATION_HEADER))
        if token is None:
            return HandshakeRejection(Failure.UNAUTHORIZED, MISSING_TOKEN)
        found = access.identify(token)
        if found is None:
            return HandshakeRejection(Failure.UNAUTHORIZED, INVALID_TOKEN)
        return ANONYMOUS if found is True else found.name

    def check(self, request: Request) -> tuple[Target | None, str] | HandshakeRejection:
        """Path, upgrade, request, query, token and target, in that order; the target
        and the user.

        No target: an upgrade that offers ``wstun.v2`` and names none, which
        opens a WebSocket for tunnels opened in-band, or one that offers
        ``wstun.reverse.v1`` (server/reverse.py); either dials nothing now.
        """
        if not request.path.isascii():
            return NOT_ASCII  # websockets < 17 lets it through; no answer may quote it
        url = urlsplit(request.path)
        if not path_matches(url.path, self.path):
            return HandshakeRejection(
                Failure.NOT_FOUND,
                f"no tunnel endpoint at {url.path}; the tunnel endpoint is {self.path}",
            )
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return HandshakeRejection(
                Failure.UPGRADE_REQUIRED, "this is a WebSocket tunnel endpoint; upgrade required"
            )
        token = self.access.token
        rejection = handshake_problem(request) or query_problem(
            url.query, token.encode() if token else None
        )
        if rejection is not None:
            return rejection
        user = self.identify(request.headers)
        if isinstance(user, HandshakeRejection):
            return user
        named = QUERY_TARGET in parse_qs(url.query, keep_blank_values=True)
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        if offers(offered, SUBPROTOCOL_REVERSE):
            if named:
                return HandshakeRejection(
                    Failure.BAD_TARGET, "bad target: a reverse tunnel's WebSocket names none"
                )
            return None, user
        if not named and offers(offered, SUBPROTOCOL_V2):
            return None, user
        target = target_from_query(url.query, self._default_target)
        if isinstance(target, HandshakeRejection):
            return target
        return target, user

    def target(self, named: str | None) -> Target | HandshakeRejection:
        """The target of an in-band ``open``: as ``?to=`` would name it, else the default."""
        return named_target(named, self._default_target)
