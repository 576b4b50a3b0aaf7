"""``wstun-server``: parse options into a ServerConfig and run the server."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from wstun.common.errors import ConfigError
from wstun.common.options import (
    ENV_PREFIX,
    LISTEN,
    TARGET,
    common_options,
    connect_timeout_option,
    load_token,
    log_level_from,
    seconds_or_off,
    udp_timeout_option,
    usage_errors,
    wstun_command,
)
from wstun.common.protocol import Target
from wstun.common.runtime import configure_logging, install_stop_signals, run
from wstun.common.streams import WS_MAX_SIZE
from wstun.server.app import run_server
from wstun.server.config import (
    RulesSource,
    ServerConfig,
    describe,
    prefix_option,
    tls_context,
    trusted_proxies,
)
from wstun.server.reverse import DEFAULT_MAX_LEASES, DEFAULT_MAX_PENDING, DEFAULT_REVERSE_GRACE
from wstun.server.users import UsersFileError, new_token
from wstun.server.workers import run_workers

__all__ = ["main"]

logger = logging.getLogger("wstun.server")


@wstun_command("WSTUN_LISTEN=0.0.0.0:8080 or WSTUN_ALLOW='db:5432 cache:6379'", subcommands=True)
@click.option(
    "--listen",
    type=LISTEN,
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to accept WebSocket connections on.",
)
@click.option(
    "--path",
    "path_prefix",
    envvar=f"{ENV_PREFIX}_PATH",
    metavar="PREFIX",
    default="/",
    show_default=True,
    help="URL path of the tunnel endpoint, e.g. /tunnel (other paths answer 404).",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="PATTERN",
    help="Target clients may reach: HOST:PORT, HOST:LOW-HIGH, HOST:*, *.SUFFIX:PORT, "
    "CIDR:PORT ([fd00::/8]:* for IPv6), *:* (repeatable); a /udp suffix for UDP "
    "(a rule is for TCP or for UDP, never both). "
    "Nothing is allowed unless allowed here, by --policy-file or by --to.",
)
@click.option(
    "--deny",
    "deny",
    multiple=True,
    metavar="PATTERN",
    help="Target clients may not reach, same syntax as --allow (repeatable); deny wins.",
)
@click.option(
    "--allow-listen",
    "allow_listen",
    multiple=True,
    metavar="PATTERN",
    help="Where clients may have this server listen for reverse tunnels (-R): "
    "BIND:PORT, BIND:LOW-HIGH, BIND:*, with BIND an address, a CIDR network or * "
    "(repeatable). No -R is allowed without one.",
)
@click.option(
    "--reverse-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_REVERSE_GRACE,
    show_default=True,
    help="Seconds a reverse tunnel's port stays held for its client after the client's "
    "connection drops; the same client process gets it back.",
)
@click.option(
    "--reverse-max-leases",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_LEASES,
    show_default=True,
    help="Reverse tunnel ports one client address may hold at once.",
)
@click.option(
    "--reverse-max-pending",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PENDING,
    show_default=True,
    help="Connections on a reverse port that may wait for the client; more are reset.",
)
@udp_timeout_option("Seconds a UDP flow lives without a datagram either way.")
@click.option(
    "--policy-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='TOML file with more rules: allow = ["db:5432", ...], deny = [...], '
    'allow_listen = ["127.0.0.1:9000-9100"].',
)
@click.option(
    "--users-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file of users, a [users.NAME] table each: token_sha256, allow, deny, "
    "allow_listen, max_tunnels (wstun-server new-token NAME prints one). A user's rules "
    "add to the server-wide ones; every deny wins.",
)
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Look at the users and policy files this often and reload them when they change, "
    "as SIGHUP does (0: only on SIGHUP). For files that change under the process, such as "
    "a Kubernetes Secret.",
)
@click.option(
    "--to",
    "default_target",
    envvar=f"{ENV_PREFIX}_TO",
    type=TARGET,
    help="Target for clients that name none (allowed implicitly).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxy",
    multiple=True,
    metavar="CIDR",
    help="Reverse proxy address or network whose X-Forwarded-For / X-Real-IP states the "
    "client address (repeatable, e.g. 10.0.0.0/8). Headers from anyone else are ignored.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve wss:// with this PEM certificate chain (TLS without a proxy).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key for --tls-cert (PEM; default: inside the --tls-cert file).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tunnels open at once, in total (0: unlimited); more get 503.",
)
@click.option(
    "--max-per-client",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tunnels open at once per client address (0: unlimited); more get 503.",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a client has to complete its WebSocket handshake.",
)
@click.option(
    "--max-message-size",
    type=click.IntRange(min=1024),
    default=WS_MAX_SIZE,
    show_default=True,
    help="Largest WebSocket message accepted, in bytes (bigger: close 1009).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes sharing the listening port (SO_REUSEPORT); "
    "one per core uses the whole machine.",
)
@connect_timeout_option("Seconds to wait for the target to accept (504 after that).")
@common_options("wstun-server")
@click.pass_context
def main(
    ctx: click.Context,
    listen: Target,
    path_prefix: str,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    allow_listen: tuple[str, ...],
    reverse_grace: float,
    reverse_max_leases: int,
    reverse_max_pending: int,
    udp_timeout: float,
    policy_file: Path | None,
    users_file: Path | None,
    reload_interval: float,
    default_target: Target | None,
    connect_timeout: float,
    trusted_proxy: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
    metrics_listen: Target | None,
    max_connections: int,
    max_per_client: int,
    handshake_timeout: float,
    max_message_size: int,
    workers: int,
    token_file: Path | None,
    idle_timeout: float,
    ping_interval: float,
    ping_timeout: float,
    grace: float,
    log_level: str,
    verbose: bool,
    quiet: bool,
    check: bool,
) -> None:
    """Accept WebSocket tunnels and relay each to an allowed TCP target.

    SIGHUP reads --users-file and --policy-file again: tunnels the new rules no
    longer allow are closed (1008), the others go on; a broken file changes nothing.

    \b
    Examples:
      wstun-server --listen 127.0.0.1:8080 --allow 127.0.0.1:6379
      wstun-server --listen 127.0.0.1:8080 --allow-listen 127.0.0.1:9000-9100
      wstun-server --users-file users.toml --allow cache.internal:6379
      wstun-server new-token alice >> users.toml
    """
    if ctx.invoked_subcommand is not None:
        return
    with usage_errors():
        path = prefix_option(path_prefix)
        source = RulesSource(allow, deny, allow_listen, policy_file, users_file, default_target)
        if reload_interval and not source.files:
            raise ConfigError(
                "--reload-interval needs a file to look at: --users-file or --policy-file",
                option="--reload-interval",
            )
        trusted = trusted_proxies(trusted_proxy)
        tls = tls_context(tls_cert, tls_key)
        token = load_token(token_file)
        access = source.load(token)
        explicit = ctx.get_parameter_source("log_level") is not click.core.ParameterSource.DEFAULT
        log_level = log_level_from(log_level, verbose=verbose, quiet=quiet, explicit=explicit)
    config = ServerConfig(
        listen=listen,
        path=path,
        policy=access.policy,
        users=access.users,
        rules_source=source,
        reload_interval=reload_interval or None,
        default_target=default_target,
        token=token,
        connect_timeout=connect_timeout,
        idle_timeout=seconds_or_off(idle_timeout),
        ping_interval=seconds_or_off(ping_interval),
        ping_timeout=seconds_or_off(ping_timeout),
        trusted_proxies=trusted,
        tls=tls,
        metrics_listen=metrics_listen,
        grace=grace,
        max_connections=max_connections or None,
        max_per_client=max_per_client or None,
        handshake_timeout=handshake_timeout,
        max_message_size=max_message_size,
        reverse_grace=reverse_grace,
        reverse_max_leases=reverse_max_leases,
        reverse_max_pending=reverse_max_pending,
        udp_timeout=udp_timeout,
    )
    if check:
        click.echo(describe(config))
        click.echo(f"workers: {workers}")
        return
    configure_logging(log_level)
    sys.exit(run_workers(config, workers, lambda cfg: run(lambda: _serve(cfg))))


assert isinstance(main, click.Group)  # wstun_command(subcommands=True)


@main.command("new-token")
@click.argument("name")
def new_token_command(name: str) -> None:
    """Print a fresh token for user NAME, and the [users.NAME] table for --users-file.

    The token (256 random bits) goes to stderr, once: give it to the user, who
    keeps it in a file of their own for --token-file. The table goes to stdout,
    with the token's SHA-256 (the server never stores the token itself).

    \b
    Example:
      wstun-server new-token alice >> users.toml
    """
    try:
        token, table = new_token(name)
    except UsersFileError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(f"token for {name} (shown once; keep it in a file of its own, mode 600):", err=True)
    click.echo(token, err=True)
    click.echo(table, nl=False)


async def _serve(config: ServerConfig) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        await run_server(config, stop)
    except OSError as exc:
        logger.error("can't listen on %s: %s", config.listen, exc.strerror or exc)
        return 1
    return 0
