"""What wstun-server is told: :class:`ServerConfig`, the checks its options pass, describe().

Each check turns the option values into what the config holds, or raises
:class:`ConfigError` naming the option; the click command only parses.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

from wstun.common.datagram import DEFAULT_UDP_TIMEOUT
from wstun.common.errors import ConfigError, TargetError
from wstun.common.protocol import Target, normalize_prefix
from wstun.common.streams import DEFAULT_READ_SIZE, WS_MAX_SIZE
from wstun.server.forwarded import TrustedProxies
from wstun.server.policy import Policy, load_policy_file
from wstun.server.reverse import DEFAULT_MAX_LEASES, DEFAULT_MAX_PENDING, DEFAULT_REVERSE_GRACE
from wstun.server.shared import SharedCounts
from wstun.server.tls import server_tls_context
from wstun.server.users import Access, Users, UsersFileError, load_users

__all__ = [
    "RulesSource",
    "ServerConfig",
    "describe",
    "policy_from",
    "prefix_option",
    "tls_context",
    "trusted_proxies",
]


@dataclasses.dataclass(frozen=True)
class RulesSource:
    """Where the server's rules and users come from, to be read again on a reload: the
    command line's rules (fixed) and the policy and users files (re-read)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_listen: tuple[str, ...] = ()
    policy_file: Path | None = None
    users_file: Path | None = None
    default_target: Target | None = None

    @property
    def files(self) -> list[Path]:
        return [path for path in (self.policy_file, self.users_file) if path is not None]

    def load(self, token: str | None) -> Access:
        """Every rule and user, read and checked whole; :class:`ConfigError` names the
        option (and the file, line, user and key) of the first problem."""
        policy = policy_from(
            self.allow, self.deny, self.policy_file, self.default_target, self.allow_listen
        )
        users: Users | None = None
        if self.users_file is not None:
            try:
                users = load_users(self.users_file)
            except UsersFileError as exc:
                raise ConfigError(str(exc), option="--users-file") from None
        return Access(policy, token, users)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``wstun-server`` is told on its command line."""

    listen: Target = dataclasses.field(default_factory=lambda: Target("127.0.0.1", 8080))
    path: str = "/"
    policy: Policy = dataclasses.field(default_factory=Policy)
    default_target: Target | None = None
    token: str | None = None
    connect_timeout: float = 10.0
    idle_timeout: float | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    read_size: int = DEFAULT_READ_SIZE
    # Peers allowed to state the client address in X-Forwarded-For/X-Real-IP.
    trusted_proxies: TrustedProxies = dataclasses.field(default_factory=TrustedProxies)
    # TLS in the server itself (None: plain ws://, e.g. behind a TLS proxy).
    tls: ssl.SSLContext | None = None
    # Where to serve /metrics (None: not served).
    metrics_listen: Target | None = None
    #: Seconds open tunnels may go on after SIGTERM before they are closed (1001).
    grace: float = 5.0
    #: Tunnels at once, in total and per client address (``None``: unlimited).
    max_connections: int | None = None
    max_per_client: int | None = None
    #: Seconds a client has to complete its opening handshake.
    handshake_timeout: float = 10.0
    #: Largest WebSocket message accepted (bigger ones close with 1009).
    max_message_size: int = WS_MAX_SIZE
    #: Listen with SO_REUSEPORT, so --workers processes share the port.
    reuse_port: bool = False
    #: Reverse tunnels: seconds a port is kept after its client's control channel
    #: drops; leases per client address; inbound connections waiting per lease.
    reverse_grace: float = DEFAULT_REVERSE_GRACE
    reverse_max_leases: int = DEFAULT_MAX_LEASES
    reverse_max_pending: int = DEFAULT_MAX_PENDING
    #: Seconds a UDP flow lives without a datagram either way.
    udp_timeout: float = DEFAULT_UDP_TIMEOUT
    #: The users (``--users-file``; None: the token, or nobody, as one anonymous user).
    users: Users | None = None
    #: Where the rules came from, for SIGHUP and ``--reload-interval`` (None: fixed).
    rules_source: RulesSource | None = None
    #: Seconds between looks at the users and policy files for a change (None: off).
    reload_interval: float | None = None
    #: With ``--workers N``: the limits' counts, shared by every worker (server/shared.py).
    shared_counts: SharedCounts | None = None
    #: With ``--workers N`` and metrics: prometheus-client's multiprocess directory, and
    #: whether this worker serves ``/metrics`` (the sum of every worker's).
    metrics_dir: str | None = None

    @property
    def access(self) -> Access:
        """Who may connect and what each may reach, as configured at startup."""
        return Access(self.policy, self.token, self.users)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_prefix(self.path))


def _seconds(value: float | None) -> str:
    return f"{value:g}s" if value else "off"


def describe(config: ServerConfig) -> str:
    """A readable summary of a configuration (for --check)."""
    rules = ", ".join(str(rule) for rule in config.policy.allow) or "(none)"
    denied = ", ".join(str(rule) for rule in config.policy.deny) or "(none)"
    listen = ", ".join(str(rule) for rule in config.policy.allow_listen) or "(none: no -R)"
    return "\n".join(
        [
            f"listen: {config.listen}",
            f"path: {config.path}",
            f"allow: {rules}",
            f"deny: {denied}",
            f"allow listen: {listen}",
            f"reverse grace: {config.reverse_grace:g}s",
            f"udp timeout: {config.udp_timeout:g}s",
            f"reverse max leases per client: {config.reverse_max_leases}",
            f"reverse max pending per lease: {config.reverse_max_pending}",
            f"default target: {config.default_target or '(none)'}",
            f"token: {'set' if config.token else 'not set'}",
            f"users: {_users(config.users)}",
            f"reload interval: {_seconds(config.reload_interval)}",
            f"connect timeout: {config.connect_timeout:g}s",
            f"idle timeout: {_seconds(config.idle_timeout)}",
            f"ping interval: {_seconds(config.ping_interval)}",
            f"ping timeout: {_seconds(config.ping_timeout)}",
            f"trusted proxies: {config.trusted_proxies}",
            f"tls: {'on' if config.tls else 'off'}",
            f"metrics: {config.metrics_listen or 'off'}",
            f"grace: {config.grace:g}s",
            f"max connections: {config.max_connections or 'unlimited'}",
            f"max per client: {config.max_per_client or 'unlimited'}",
            f"handshake timeout: {config.handshake_timeout:g}s",
            f"max message size: {config.max_message_size}",
        ]
    )


def _users(users: Users | None) -> str:
    if users is None:
        return "(no users file)"
    return f"{len(users.users)}: {', '.join(users.names)}" if users.users else "0"


def prefix_option(prefix: str) -> str:
    """``--path``, made canonical."""
    try:
        return normalize_prefix(prefix)
    except ValueError as exc:
        raise ConfigError(str(exc), option="--path") from None


def policy_from(
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    policy_file: Path | None,
    default_target: Target | None,
    allow_listen: tuple[str, ...] = (),
) -> Policy:
    """The command line's rules, then the policy file's; a bad rule names its option."""
    extra = (default_target,) if default_target else ()
    try:
        policy = Policy.from_patterns(allow, *extra)
    except TargetError as exc:
        raise ConfigError(str(exc), option="--allow") from None
    try:
        policy = policy.merged(Policy.from_patterns((), deny=deny))
    except TargetError as exc:
        raise ConfigError(str(exc), option="--deny") from None
    try:
        policy = policy.merged(Policy.from_patterns((), allow_listen=allow_listen))
    except TargetError as exc:
        raise ConfigError(str(exc), option="--allow-listen") from None
    if policy_file is not None:
        try:
            policy = policy.merged(load_policy_file(policy_file))
        except TargetError as exc:
            raise ConfigError(str(exc), option="--policy-file") from None
    return policy


def trusted_proxies(cidrs: tuple[str, ...]) -> TrustedProxies:
    """``--trusted-proxy`` addresses and networks."""
    try:
        return TrustedProxies(cidrs)
    except ValueError as exc:
        raise ConfigError(str(exc), option="--trusted-proxy") from None


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """TLS in the server from ``--tls-cert``/``--tls-key``, or None without them."""
    if cert is None:
        if key is not None:
            raise ConfigError("--tls-key needs --tls-cert", option="--tls-key")
        return None
    try:
        return server_tls_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"can't load {cert}{f' / {key}' if key else ''}: {exc}", option="--tls-cert"
        ) from None
