"""What wstun-client is told: :class:`ClientConfig`, the checks its options pass, describe().

The click command only parses; every rule about which options go together
is a function here, raising :class:`ConfigError` with the words to show.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from wstun.client.forward import Forward
from wstun.client.reverse import Remote
from wstun.client.socks import Credentials, SocksProxy
from wstun.common.datagram import DEFAULT_UDP_TIMEOUT
from wstun.common.errors import ConfigError
from wstun.common.options import warn_if_exposed
from wstun.common.protocol import Target
from wstun.common.streams import DEFAULT_READ_SIZE

__all__ = [
    "DEFAULT_IDLE",
    "DEFAULT_LIFETIME",
    "DEFAULT_POOL",
    "DEFAULT_REVERSE_CHANNELS",
    "ClientConfig",
    "ConfigError",
    "check_modes",
    "check_proxy_url",
    "check_tls_options",
    "describe",
    "socks_credentials",
]


#: Idle wstun.v2 WebSockets kept ready (``--pool``; client/pool.py).
DEFAULT_POOL = 2
#: Seconds an idle WebSocket waits for a tunnel before it is closed (``--pool-idle``):
#: under the 60 s idle timeout of most proxies, though pings keep it alive anyway.
DEFAULT_IDLE = 30.0
#: Seconds after which a WebSocket takes no new tunnel (``--pool-lifetime``).
DEFAULT_LIFETIME = 300.0
#: Idle data channels kept per -R forward (``--reverse-channels``).
DEFAULT_REVERSE_CHANNELS = 2


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Everything ``wstun-client`` is told on its command line."""

    url: str
    forwards: tuple[Forward, ...] = ()
    #: ``-R``: ports the server listens on for this client.
    remotes: tuple[Remote, ...] = ()
    socks: tuple[SocksProxy, ...] = ()
    #: ``-W``: stdin/stdout are one tunnel to this target.
    stdio: Target | None = None
    token: str | None = None
    connect_timeout: float = 10.0
    idle_timeout: float | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    read_size: int = DEFAULT_READ_SIZE
    # Extra handshake headers (--header), e.g. for an access gateway.
    headers: tuple[tuple[str, str], ...] = ()
    # HTTP CONNECT proxy URL; True: from HTTPS_PROXY/HTTP_PROXY/NO_PROXY; None: direct.
    proxy: str | Literal[True] | None = True
    # wss:// verification: a PEM CA bundle instead of the system's, or none at all.
    cacert: Path | None = None
    insecure: bool = False
    # Where to serve /metrics (None: not served).
    metrics_listen: Target | None = None
    # TCP destination instead of the URL's host and port (--connect-to); the
    # URL's name still goes in Host, SNI and the certificate check.
    connect_to: Target | None = None
    # Name for SNI and the certificate check instead of the URL's (--tls-server-name).
    tls_server_name: str | None = None
    #: Seconds open tunnels may go on after SIGTERM before they are cut.
    grace: float = 5.0
    #: Tunnels open at once per -L listener (``None``: unlimited).
    max_tunnels: int | None = None
    #: Idle wstun.v2 WebSockets kept ready (0: one fresh WebSocket per tunnel);
    #: how long one may wait idle, and how long one takes new tunnels at all.
    pool: int = DEFAULT_POOL
    pool_idle: float = DEFAULT_IDLE
    pool_lifetime: float = DEFAULT_LIFETIME
    #: Idle data channels each -R forward keeps open, so a connection needs no upgrade.
    reverse_channels: int = DEFAULT_REVERSE_CHANNELS
    #: UDP: seconds a flow lives without a datagram; flows at once per listener.
    udp_timeout: float = DEFAULT_UDP_TIMEOUT
    max_udp_flows: int = 1024

    @property
    def secure(self) -> bool:
        """The server is reached with ``wss://``."""
        return self.url.lower().startswith("wss:")


def check_modes(
    forwards: tuple[Forward, ...],
    dynamic: tuple[Target, ...],
    stdio: Target | None,
    remotes: tuple[Remote, ...] = (),
) -> None:
    """At least one of -L, -D, -R, -W; -W alone."""
    if stdio is not None and (forwards or dynamic or remotes):
        raise ConfigError("-W uses stdin/stdout for one tunnel; it can't go with -L, -D or -R")
    if stdio is None and not forwards and not dynamic and not remotes:
        raise ConfigError("nothing to do: give at least one -L, -D or -R, or -W")


def check_tls_options(
    url: str,
    *,
    cacert: Path | None,
    insecure: bool,
    tls_server_name: str | None,
    connect_to: Target | None,
    proxy: str | None,
) -> None:
    """The TLS options apply to wss:// only; --connect-to dials without a proxy."""
    secure = url.lower().startswith("wss:")
    if (cacert or insecure) and not secure:
        option = "--cacert" if cacert else "--insecure"
        raise ConfigError(f"{option} applies to wss:// URLs only", option=option)
    if tls_server_name is not None and not secure:
        raise ConfigError("applies to wss:// URLs only", option="--tls-server-name")
    if connect_to is not None and proxy not in (None, "none"):
        raise ConfigError("--connect-to dials directly; it can't go with --proxy")
    if cacert and insecure:
        raise ConfigError("--cacert and --insecure contradict each other", value=True)


def check_proxy_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an ``http://`` or ``https://`` CONNECT proxy."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http:// and https:// (CONNECT) proxies")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that isn't one
    except ValueError:
        raise ValueError(f"{url}: invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url}: no proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url}: a proxy URL has no path, query or fragment")


def socks_credentials(user: str | None, password_file: Path | None) -> Credentials | None:
    """Username and password for the -D ports, both or neither."""
    if user is None and password_file is None:
        return None
    if user is None or password_file is None:
        raise ConfigError("--socks-user and --socks-password-file go together")
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"can't read {password_file}: {exc}", option="--socks-password-file"
        ) from None
    warn_if_exposed(password_file)
    if not 0 < len(user.encode()) <= 255 or not 0 < len(password.encode()) <= 255:
        raise ConfigError("SOCKS5 usernames and passwords are 1 to 255 bytes (RFC 1929)")
    return Credentials(user, password)


def describe(config: ClientConfig) -> str:
    """A readable summary of a configuration (for --check)."""
    lines = [f"server: {config.url}"]
    lines += [f"forward: {forward}" for forward in config.forwards]
    lines += [
        f"reverse: {str(remote).replace(' -> ', ' on the server -> ')}"
        + (" (the server picks the port)" if remote.bind.port == 0 else "")
        for remote in config.remotes
    ]
    lines += [
        f"socks5: {socks.bind}{' (username/password)' if socks.auth else ''}"
        for socks in config.socks
    ]
    if config.stdio is not None:
        lines.append(f"stdio: {config.stdio}")
    lines.append(f"token: {'set' if config.token else 'not set'}")
    if config.secure:
        cas = f"on, CAs from {config.cacert or 'the system'}"
        lines.append(f"tls verification: {'OFF (--insecure)' if config.insecure else cas}")
    lines += [f"header: {name}" for name, _ in config.headers]
    if config.connect_to is not None:
        lines.append(f"connect to: {config.connect_to} (directly)")
    else:
        proxy = config.proxy
        shown = "from the environment" if proxy is True else "none" if proxy is None else proxy
        lines.append(f"proxy: {shown}")
    if config.tls_server_name is not None:
        lines.append(f"tls server name: {config.tls_server_name}")
    if config.pool:
        lines.append(
            f"pool: {config.pool} idle WebSockets (idle {config.pool_idle:g}s, "
            f"lifetime {config.pool_lifetime:g}s)"
        )
    else:
        lines.append("pool: off")
    if config.remotes:
        lines.append(f"reverse channels: {config.reverse_channels} idle per -R")
    if any(forward.proto == "udp" for forward in config.forwards):
        lines.append(
            f"udp: flows end after {config.udp_timeout:g}s idle, "
            f"at most {config.max_udp_flows} per listener"
        )
    lines.append(f"metrics: {config.metrics_listen or 'off'}")
    return "\n".join(lines)
