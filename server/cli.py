"""``wstun-server``: parse options into a ServerConfig and run the server."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from common import __version__
from common.errors import TargetError
from common.options import ENV_PREFIX, LISTEN, TARGET, common_options, load_token, seconds_or_off
from common.protocol import Target, normalize_prefix
from common.runtime import configure_logging, install_stop_signals, run

from .app import ServerConfig, run_server
from .policy import Policy
from .workers import run_workers

__all__ = ["main"]

logger = logging.getLogger("wstun.server")


@click.command(
    context_settings={"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"]},
    epilog=(
        "Every option can also be set in the environment as WSTUN_<OPTION>, e.g. "
        "WSTUN_LISTEN=0.0.0.0:8080 or WSTUN_ALLOW='db:5432 cache:6379'. "
        "The token comes from --token-file or WSTUN_TOKEN; clients send it as "
        "'Authorization: Bearer <token>'."
    ),
)
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
    help="Target clients may reach: HOST:PORT, HOST:LOW-HIGH, HOST:*, *:* (repeatable). "
    "Nothing is allowed unless allowed here or by --to.",
)
@click.option(
    "--to",
    "default_target",
    envvar=f"{ENV_PREFIX}_TO",
    type=TARGET,
    help="Target for clients that name none (allowed implicitly).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the target to accept (504 after that).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes sharing the listening port (SO_REUSEPORT); "
    "one per core uses the whole machine.",
)
@common_options
@click.option("--check", is_flag=True, help="Validate the options, print the result and exit.")
@click.version_option(__version__, prog_name="wstun-server")
def main(
    listen: Target,
    path_prefix: str,
    allow: tuple[str, ...],
    default_target: Target | None,
    connect_timeout: float,
    workers: int,
    token_file: Path | None,
    idle_timeout: float,
    ping_interval: float,
    ping_timeout: float,
    log_level: str,
    check: bool,
) -> None:
    """Accept WebSocket tunnels and relay each to an allowed TCP target.

    \b
    Example:
      wstun-server --listen 127.0.0.1:8080 --allow 127.0.0.1:6379
    """
    try:
        path = normalize_prefix(path_prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--path") from None
    extra = (default_target,) if default_target else ()
    try:
        policy = Policy.from_patterns(allow, *extra)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from None
    config = ServerConfig(
        listen=listen,
        path=path,
        policy=policy,
        default_target=default_target,
        token=load_token(token_file),
        connect_timeout=connect_timeout,
        idle_timeout=seconds_or_off(idle_timeout),
        ping_interval=seconds_or_off(ping_interval),
        ping_timeout=seconds_or_off(ping_timeout),
    )
    if check:
        click.echo(describe(config))
        click.echo(f"workers: {workers}")
        return
    configure_logging(log_level)
    if not policy.rules:
        logger.warning("no --allow rule and no --to: every tunnel will be refused with 403")
    sys.exit(run_workers(config, workers, lambda cfg: run(lambda: _serve(cfg))))


def describe(config: ServerConfig) -> str:
    """A readable summary of a configuration (for --check)."""
    rules = ", ".join(str(rule) for rule in config.policy.rules) or "(none)"
    return "\n".join(
        [
            f"listen: {config.listen}",
            f"path: {config.path}",
            f"allow: {rules}",
            f"default target: {config.default_target or '(none)'}",
            f"token: {'set' if config.token else 'not set'}",
            f"connect timeout: {config.connect_timeout:g}s",
            f"idle timeout: {config.idle_timeout or 'off'}",
            f"ping interval: {config.ping_interval or 'off'}",
            f"ping timeout: {config.ping_timeout or 'off'}",
        ]
    )


async def _serve(config: ServerConfig) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        await run_server(config, stop)
    except OSError as exc:
        logger.error("can't listen on %s: %s", config.listen, exc.strerror or exc)
        return 1
    return 0
