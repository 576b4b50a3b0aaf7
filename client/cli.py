"""``wstun-client``: parse options into a ClientConfig and run the forwards."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import click

from common import __version__
from common.errors import TargetError
from common.options import ENV_PREFIX, common_options, load_token, seconds_or_off
from common.protocol import build_tunnel_url
from common.runtime import configure_logging, install_stop_signals, run

from .forward import ClientConfig, Forward, parse_forward, run_client

__all__ = ["main"]

logger = logging.getLogger("wstun.client")


class _ForwardType(click.ParamType[Forward, str]):
    name = "[BIND:]PORT:HOST:HOSTPORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Forward:
        if isinstance(value, Forward):
            return value
        try:
            return parse_forward(str(value))
        except TargetError as exc:
            self.fail(str(exc), param, ctx)


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        build_tunnel_url(value, None)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command(
    context_settings={"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"]},
    epilog=(
        "Every option can also be set in the environment as WSTUN_<OPTION>, e.g. "
        "WSTUN_LOCAL='5432:db:5432 6379:cache:6379'. The token comes from "
        "--token-file or WSTUN_TOKEN and is sent as 'Authorization: Bearer <token>'."
    ),
)
@click.argument("url", envvar=f"{ENV_PREFIX}_URL", callback=_check_url)
@click.option(
    "-L",
    "--local",
    "forwards",
    envvar=f"{ENV_PREFIX}_LOCAL",
    type=_ForwardType(),
    multiple=True,
    required=True,
    help="Listen on BIND:PORT (BIND defaults to 127.0.0.1) and carry each connection "
    "to HOST:HOSTPORT on the server's side (repeatable; IPv6 in brackets).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the server's WebSocket handshake.",
)
@click.option(
    "--max-tunnels",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tunnels open at once per -L listener (0: unlimited); more are reset.",
)
@common_options
@click.option("--check", is_flag=True, help="Validate the options, print the result and exit.")
@click.version_option(__version__, prog_name="wstun-client")
def main(
    url: str,
    forwards: tuple[Forward, ...],
    connect_timeout: float,
    max_tunnels: int,
    token_file: Path | None,
    idle_timeout: float,
    ping_interval: float,
    ping_timeout: float,
    grace: float,
    log_level: str,
    check: bool,
) -> None:
    """Forward local ports through the wstun server at URL (ws:// or wss://).

    \b
    Example:
      wstun-client -L 16379:127.0.0.1:6379 ws://127.0.0.1:8080/
      redis-cli -p 16379 ping
    """
    config = ClientConfig(
        url=url,
        forwards=forwards,
        token=load_token(token_file),
        connect_timeout=connect_timeout,
        idle_timeout=seconds_or_off(idle_timeout),
        ping_interval=seconds_or_off(ping_interval),
        ping_timeout=seconds_or_off(ping_timeout),
        grace=grace,
        max_tunnels=max_tunnels or None,
    )
    if check:
        click.echo(f"server: {config.url}")
        for forward in forwards:
            click.echo(f"forward: {forward}")
        click.echo(f"token: {'set' if config.token else 'not set'}")
        return
    configure_logging(log_level)
    sys.exit(run(lambda: _forward(config)))


async def _forward(config: ClientConfig) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        await run_client(config, stop)
    except OSError as exc:
        logger.error("%s", exc.strerror or exc)
        return 1
    return 0
