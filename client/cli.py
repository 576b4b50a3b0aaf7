"""``wstun-client``: parse options into a ClientConfig and run the forwards."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import click

from wstun.client.app import run_client
from wstun.client.check import Step, format_step, render_json, run_check, verdict_line
from wstun.client.config import (
    DEFAULT_IDLE,
    DEFAULT_LIFETIME,
    DEFAULT_POOL,
    DEFAULT_REVERSE_CHANNELS,
    ClientConfig,
    check_modes,
    check_proxy_url,
    check_tls_options,
    describe,
    socks_credentials,
)
from wstun.client.configfile import (
    config_file_callback,
    given,
    provenance,
    reads_config_of,
    settle_conflicts,
)
from wstun.client.forward import Forward, parse_forward
from wstun.client.headers import parse_header
from wstun.client.reverse import Remote, parse_remote
from wstun.client.socks import SocksProxy
from wstun.client.status import wanted
from wstun.client.stdio import stdio_main
from wstun.client.udp import DEFAULT_MAX_UDP_FLOWS
from wstun.common.errors import TargetError
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
from wstun.common.protocol import Target, build_tunnel_url
from wstun.common.runtime import configure_logging, install_stop_signals, run

__all__ = ["CHECK", "check_command", "main"]

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


class _RemoteType(click.ParamType[Remote, str]):
    name = "[BIND:]PORT:HOST:HOSTPORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Remote:
        if isinstance(value, Remote):
            return value
        try:
            return parse_remote(str(value))
        except TargetError as exc:
            self.fail(str(exc), param, ctx)


class _HeaderText(click.types.StringParamType):
    """``NAME: VALUE``; from the environment one per line, as a value may hold spaces."""

    name = "header"

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return [line.strip() for line in rv.splitlines() if line.strip()]


def _check_headers(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_header(text) for text in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_proxy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "none":
        return value
    try:
        check_proxy_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


class _UrlType(click.types.StringParamType):
    """The URL, which says where else it may come from when it is missing."""

    def get_missing_message(self, param: click.Parameter, ctx: click.Context | None) -> str:
        return (
            f"Give it on the command line (or as {ENV_PREFIX}_URL), "
            'or as url = "wss://..." in the --config file.'
        )


#: The first word that runs ``wstun-client check`` instead of the client.
CHECK = "check"


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value == CHECK:
        raise click.BadParameter(
            f"'{CHECK}' is a subcommand: it goes first, as in wstun-client {CHECK} [OPTIONS] URL"
        )
    try:
        build_tunnel_url(value, None)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _proxy_setting(proxy: str | None) -> str | Literal[True] | None:
    """--proxy as ClientConfig takes it: not given, the environment's; 'none', direct."""
    return True if proxy is None else None if proxy == "none" else proxy


class _ClientCommand(click.Command):
    """wstun-client, which runs :data:`check_command` when its first word is ``check``.

    Not a click.Group: a group's own positional URL would take the word
    ``check``, and everything after the URL (``wstun-client URL -L ...``)
    would be read as a subcommand's name and arguments.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        *rest: Any,
        **extra: Any,
    ) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if words[:1] == [CHECK]:
            name = prog_name or os.path.basename(sys.argv[0]) or "wstun-client"
            return check_command.main(words[1:], f"{name} {CHECK}", *rest, **extra)
        return super().main(args, prog_name, *rest, **extra)


@wstun_command("WSTUN_LOCAL='5432:db:5432 6379:cache:6379'")
@click.argument("url", envvar=f"{ENV_PREFIX}_URL", type=_UrlType(), callback=_check_url)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=config_file_callback,
    help="Read options from this TOML file: keys are the long option names with _ for - "
    '(local = ["5432:db:5432"], token_file = "~/.config/wstun/token"), and url for URL. '
    "The command line, then the environment, win over it; a repeatable option given "
    "there replaces the file's list.",
)
@click.option(
    "--profile",
    metavar="NAME",
    is_eager=True,
    expose_value=False,
    callback=config_file_callback,
    help="Use the config file's [profiles.NAME] table too: its keys replace the top "
    "level's (a list replaces the list). Needs --config.",
)
@click.option(
    "-L",
    "--local",
    "forwards",
    envvar=f"{ENV_PREFIX}_LOCAL",
    type=_ForwardType(),
    multiple=True,
    help="Listen on BIND:PORT (BIND defaults to 127.0.0.1) and carry each connection "
    "to HOST:HOSTPORT on the server's side (repeatable; IPv6 in brackets; a /udp "
    "suffix forwards UDP datagrams).",
)
@click.option(
    "-R",
    "--remote",
    "remotes",
    envvar=f"{ENV_PREFIX}_REMOTE",
    type=_RemoteType(),
    multiple=True,
    help="Have the server listen on BIND:PORT (BIND defaults to 127.0.0.1; PORT 0: the "
    "server picks) and carry each connection to HOST:HOSTPORT as this client sees it "
    "(repeatable; the server must --allow-listen it; a /udp suffix forwards UDP datagrams).",
)
@click.option(
    "-D",
    "--dynamic",
    "dynamic",
    envvar=f"{ENV_PREFIX}_DYNAMIC",
    type=LISTEN,
    metavar="[BIND:]PORT",
    multiple=True,
    help="Run a SOCKS5 proxy on [BIND:]PORT; each CONNECT becomes a tunnel to the "
    "requested host, which the server resolves (repeatable).",
)
@click.option(
    "--socks-user",
    metavar="NAME",
    help="Require this username (RFC 1929) on the -D ports; needs --socks-password-file.",
)
@click.option(
    "--socks-password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the password for --socks-user.",
)
@click.option(
    "-W",
    "--stdio",
    "stdio_target",
    envvar=f"{ENV_PREFIX}_STDIO",
    type=TARGET,
    help="Tunnel stdin/stdout to HOST:PORT, e.g. as ssh's ProxyCommand "
    "(logs only warnings unless --log-level is given).",
)
@click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify the wss:// server's certificate against this PEM CA bundle "
    "instead of the system's.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Do not verify the wss:// server's certificate or name (for tests only).",
)
@click.option(
    "-H",
    "--header",
    "headers",
    envvar=f"{ENV_PREFIX}_HEADER",
    type=_HeaderText(),
    multiple=True,
    metavar="'NAME: VALUE'",
    callback=_check_headers,
    help="Extra HTTP header on every handshake, e.g. for an access gateway (repeatable).",
)
@click.option(
    "--proxy",
    metavar="URL",
    callback=_check_proxy,
    help="HTTP CONNECT proxy, e.g. http://proxy.corp:3128 ('none': connect directly). "
    "Default: from the environment, WSS_PROXY or HTTPS_PROXY for wss://, WS_PROXY, "
    "HTTPS_PROXY or HTTP_PROXY for ws://, honouring NO_PROXY.",
)
@click.option(
    "--connect-to",
    type=TARGET,
    help="Dial HOST:PORT instead of the URL's host and port (directly, no proxy); the URL's "
    "name is still sent as Host and checked in the certificate.",
)
@click.option(
    "--tls-server-name",
    metavar="NAME",
    help="Name for SNI and the wss:// certificate check instead of the URL's host.",
)
@click.option(
    "--max-tunnels",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tunnels open at once per -L listener (0: unlimited); more are reset.",
)
@click.option(
    "--pool",
    type=click.IntRange(min=0),
    default=DEFAULT_POOL,
    show_default=True,
    help="Idle WebSockets to keep ready when the server speaks wstun.v2: a new "
    "connection then needs no upgrade (0: one fresh WebSocket per connection).",
)
@click.option(
    "--pool-idle",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_IDLE,
    show_default=True,
    help="Seconds an idle pooled WebSocket waits for a connection before it is closed.",
)
@click.option(
    "--pool-lifetime",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_LIFETIME,
    show_default=True,
    help="Seconds after which a pooled WebSocket takes no new connection.",
)
@click.option(
    "--reverse-channels",
    type=click.IntRange(min=1, max=64),
    default=DEFAULT_REVERSE_CHANNELS,
    show_default=True,
    help="Idle data channels each -R keeps open, so a connection on the server's port "
    "needs no new WebSocket (more are opened when connections wait).",
)
@udp_timeout_option("Seconds a UDP flow (-L or -R .../udp) lives without a datagram either way.")
@click.option(
    "--max-udp-flows",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_UDP_FLOWS,
    show_default=True,
    help="UDP flows (source addresses) open at once per -L .../udp; datagrams from more "
    "are dropped.",
)
@connect_timeout_option("Seconds to wait for the server's WebSocket handshake.")
@common_options("wstun-client")
@click.pass_context
@settle_conflicts
def main(
    ctx: click.Context,
    url: str,
    forwards: tuple[Forward, ...],
    remotes: tuple[Remote, ...],
    dynamic: tuple[Target, ...],
    socks_user: str | None,
    socks_password_file: Path | None,
    stdio_target: Target | None,
    connect_timeout: float,
    cacert: Path | None,
    insecure: bool,
    headers: tuple[tuple[str, str], ...],
    proxy: str | None,
    connect_to: Target | None,
    tls_server_name: str | None,
    metrics_listen: Target | None,
    max_tunnels: int,
    pool: int,
    pool_idle: float,
    pool_lifetime: float,
    reverse_channels: int,
    udp_timeout: float,
    max_udp_flows: int,
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
    """Forward local ports through the wstun server at URL (ws:// or wss://).

    \b
    Examples:
      wstun-client -L 16379:127.0.0.1:6379 ws://127.0.0.1:8080/
      redis-cli -p 16379 ping
    \b
      wstun-client -D 1080 ws://127.0.0.1:8080/
      curl --socks5-hostname 127.0.0.1:1080 http://intranet/
    \b
      ssh -o ProxyCommand='wstun-client -W %h:%p ws://127.0.0.1:8080/' host
    \b
      wstun-client -R 9000:127.0.0.1:3000 ws://127.0.0.1:8080/
      curl http://127.0.0.1:9000/    # on the server: the laptop's port 3000
    \b
      wstun-client check wss://tunnel.example.com/    # where does the path break?
    """
    with usage_errors():
        check_modes(forwards, dynamic, stdio_target, remotes)
        auth = socks_credentials(socks_user, socks_password_file)
        check_tls_options(
            url,
            cacert=cacert,
            insecure=insecure,
            tls_server_name=tls_server_name,
            connect_to=connect_to,
            proxy=proxy,
        )
        token = load_token(token_file)
        explicit = given(ctx, "log_level")
        if stdio_target is not None and not explicit:
            log_level = "warning"  # ssh shows a ProxyCommand's stderr to the user
        log_level = log_level_from(log_level, verbose=verbose, quiet=quiet, explicit=explicit)
    config = ClientConfig(
        url=url,
        forwards=forwards,
        remotes=remotes,
        socks=tuple(SocksProxy(bind, auth) for bind in dynamic),
        stdio=stdio_target,
        token=token,
        connect_timeout=connect_timeout,
        idle_timeout=seconds_or_off(idle_timeout),
        ping_interval=seconds_or_off(ping_interval),
        ping_timeout=seconds_or_off(ping_timeout),
        headers=headers,
        proxy=_proxy_setting(proxy),
        cacert=cacert,
        insecure=insecure,
        metrics_listen=metrics_listen,
        connect_to=connect_to,
        tls_server_name=tls_server_name,
        grace=grace,
        max_tunnels=max_tunnels or None,
        pool=pool,
        pool_idle=pool_idle,
        pool_lifetime=pool_lifetime,
        reverse_channels=reverse_channels,
        udp_timeout=udp_timeout,
        max_udp_flows=max_udp_flows,
    )
    if check:  # nothing connects: no TLS context, no --insecure warning
        click.echo(describe(config))
        click.echo("\n".join(["", *_provenance(ctx, token_file, token)]))
        return
    configure_logging(log_level)
    if stdio_target is not None:
        sys.exit(run(lambda: stdio_main(config, stdio_target)))
    sys.exit(run(lambda: _forward(config, status=wanted(sys.stderr, log_level))))


def _provenance(ctx: click.Context, token_file: Path | None, token: str | None) -> list[str]:
    """Where each value that isn't the default came from, the token's included."""
    lines = provenance(ctx)
    if token is not None and token_file is None:
        lines.append(f"from: token = environment ({ENV_PREFIX}_TOKEN)")
    return lines


async def _forward(config: ClientConfig, *, status: bool) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        return await run_client(config, stop, status=status)
    except OSError as exc:
        logger.error("%s", exc.strerror or exc)
        return 1


# The client command routes ``wstun-client check ...`` to check_command (see _ClientCommand);
# wstun_command made it a click.Command, and only main() differs.
main.__class__ = _ClientCommand

#: The client's options that check takes too, the very same objects: one type,
#: callback, environment variable and help text for both.
_CHECK_SHARED = (
    "config",
    "profile",
    "token_file",
    "cacert",
    "insecure",
    "tls_server_name",
    "connect_to",
    "proxy",
    "headers",
    "connect_timeout",
    "ping_interval",
)


@click.command(
    CHECK,
    context_settings={"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 when every step passed, 1 when one failed, 2 for bad options. "
    f"The shared options come from {ENV_PREFIX}_<OPTION> too, as for wstun-client.",
)
@click.argument("url", envvar=f"{ENV_PREFIX}_URL", type=_UrlType(), callback=_check_url)
@click.option(
    "--target",
    type=TARGET,
    allow_from_autoenv=False,
    help="Also ask the server to open a tunnel to HOST:PORT: is it allowed, and can the "
    "server reach it? (The check closes it at once.)",
)
@click.option(
    "--idle-probe",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    metavar="S",
    allow_from_autoenv=False,
    help="Also hold an idle WebSocket, no pings from this side, up to S seconds, and say "
    "when the path closes it: set --ping-interval below that.",
)
@click.option(
    "--json", "as_json", is_flag=True, allow_from_autoenv=False, help="Print the report as JSON."
)
@click.pass_context
@settle_conflicts
def check_command(
    ctx: click.Context,
    url: str,
    target: Target | None,
    idle_probe: float | None,
    as_json: bool,
    token_file: Path | None,
    cacert: Path | None,
    insecure: bool,
    tls_server_name: str | None,
    connect_to: Target | None,
    proxy: str | None,
    headers: tuple[tuple[str, str], ...],
    connect_timeout: float,
    ping_interval: float,
) -> None:
    """Walk the path to the wstun server at URL and say where it breaks.

    One line per step: proxy, resolve, tcp, connect (the proxy's CONNECT), tls,
    upgrade, token, target (--target), ping (10 round trips) and idle
    (--idle-probe), then the verdict. It goes the way tunnels go: the same
    proxy, --connect-to, TLS options, headers and token, from the command
    line, the environment or the client's --config file (whose other keys,
    such as local, it checks and leaves unused).

    \b
    Examples:
      wstun-client check wss://tunnel.example.com/tunnel/
      wstun-client check --target db:5432 --idle-probe 120 wss://tunnel.example.com/
      wstun-client check --json ws://127.0.0.1:8080/ | jq .failed
    """
    with usage_errors():
        check_tls_options(
            url,
            cacert=cacert,
            insecure=insecure,
            tls_server_name=tls_server_name,
            connect_to=connect_to,
            proxy=proxy,
        )
        token = load_token(token_file)
    config = ClientConfig(
        url=url,
        token=token,
        connect_timeout=connect_timeout,
        ping_interval=seconds_or_off(ping_interval),
        headers=headers,
        proxy=_proxy_setting(proxy),
        cacert=cacert,
        insecure=insecure,
        connect_to=connect_to,
        tls_server_name=tls_server_name,
    )
    # The report says everything, --insecure included; logs would only repeat it.
    configure_logging("error")
    sys.exit(run(lambda: _check(config, target, idle_probe, as_json=as_json)))


check_command.params.extend(param for param in main.params if param.name in _CHECK_SHARED)
reads_config_of(check_command, main)


async def _check(
    config: ClientConfig, target: Target | None, idle_probe: float | None, *, as_json: bool
) -> int:
    """Run the check; text lines as each step ends (the idle probe takes a while), or JSON."""

    def show(step: Step) -> None:
        click.echo(format_step(step))

    report = await run_check(
        config, target=target, idle_probe=idle_probe, on_step=None if as_json else show
    )
    click.echo(render_json(report) if as_json else verdict_line(report))
    return 0 if report.ok else 1
