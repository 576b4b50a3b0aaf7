"""Command-line pieces both commands share: the command itself, value types, the
options that mean the same on both sides, the token, and ConfigError's display."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from wstun.common import __version__
from wstun.common.datagram import DEFAULT_UDP_TIMEOUT
from wstun.common.errors import ConfigError, TargetError
from wstun.common.protocol import Target, parse_listen, parse_target

__all__ = [
    "ENV_PREFIX",
    "LISTEN",
    "TARGET",
    "common_options",
    "connect_timeout_option",
    "load_token",
    "log_level_from",
    "seconds_or_off",
    "usage_errors",
    "warn_if_exposed",
    "wstun_command",
]

#: Every option can also come from WSTUN_<OPTION_NAME>, e.g. WSTUN_PING_INTERVAL.
ENV_PREFIX = "WSTUN"

F = TypeVar("F", bound=Callable[..., Any])


class _TargetType(click.ParamType[Target, str]):
    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Target:
        if isinstance(value, Target):
            return value
        try:
            return parse_target(str(value))
        except TargetError as exc:
            self.fail(str(exc), param, ctx)


class _ListenType(click.ParamType[Target, str]):
    name = "[HOST:]PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Target:
        if isinstance(value, Target):
            return value
        try:
            return parse_listen(str(value))
        except TargetError as exc:
            self.fail(str(exc), param, ctx)


TARGET = _TargetType()
LISTEN = _ListenType()


def seconds_or_off(value: float) -> float | None:
    """0 means "off" for timeouts and intervals."""
    return value if value > 0 else None


class _Option(click.Option):
    """An option whose bad value, when it came from the environment, names the variable."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        if (
            ctx is not None
            and ctx.get_parameter_source(self.name or "") is click.core.ParameterSource.ENVIRONMENT
        ):
            names = self.envvar or f"{ctx.auto_envvar_prefix}_{(self.name or '').upper()}"
            variables = [names] if isinstance(names, str) else list(names)
            set_ones = [name for name in variables if name in os.environ] or variables
            return f"{', '.join(set_ones)} (from the environment)"
        return super().get_error_hint(ctx)


def wstun_command(
    environment_example: str, *, subcommands: bool = False
) -> Callable[[F], click.Command]:
    """A wstun command: WSTUN_<OPTION> for every option, -h, and an epilog saying so.

    A bad value from the environment is reported under the variable's name,
    the one the user set, not the option's. With ``subcommands`` it is a group
    that runs itself when no subcommand is named (its function is called first
    either way: it returns at once when ``ctx.invoked_subcommand`` is set).
    """
    context_settings = {"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"]}
    epilog = (
        f"Every option can also be set in the environment as {ENV_PREFIX}_<OPTION>, e.g. "
        f"{environment_example}. The token comes from --token-file or {ENV_PREFIX}_TOKEN "
        "and is sent as 'Authorization: Bearer <token>'. Shell completion: "
        'eval "$(_WSTUN_CLIENT_COMPLETE=bash_source wstun-client)" (zsh_source, '
        "fish_source; wstun-server likewise)."
    )
    make: Callable[[F], click.Command]
    if subcommands:
        make = click.group(
            invoke_without_command=True, context_settings=context_settings, epilog=epilog
        )
    else:
        make = click.command(context_settings=context_settings, epilog=epilog)

    def decorate(func: F) -> click.Command:
        command = make(func)
        for param in command.params:
            if type(param) is click.Option:
                # Only the error hint differs: the instance keeps all it has.
                param.__class__ = _Option
        return command

    return decorate


def log_level_from(log_level: str, *, verbose: bool, quiet: bool, explicit: bool) -> str:
    """``--log-level``, or ``-v`` (debug) / ``-q`` (warning) as ssh users write them.

    ``explicit`` says --log-level (or WSTUN_LOG_LEVEL) was given; it can't go
    with -v or -q, nor can they with each other.
    """
    if verbose and quiet:
        raise ConfigError("-v and -q contradict each other")
    if (verbose or quiet) and explicit:
        raise ConfigError("-v and -q are short for --log-level; give one of them")
    if verbose:
        return "debug"
    if quiet:
        return "warning"
    return log_level


def connect_timeout_option(help: str) -> Callable[[F], F]:
    """``--connect-timeout S``: what it waits for differs by side, the option doesn't."""
    return click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=10.0,
        show_default=True,
        help=help,
    )


def udp_timeout_option(help: str) -> Callable[[F], F]:
    """``--udp-timeout S``: the same on both sides, each ending its flows by it."""
    return click.option(
        "--udp-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_UDP_TIMEOUT,
        show_default=True,
        help=help,
    )


def common_options(prog_name: str) -> Callable[[F], F]:
    """Options that mean the same on both sides, ``--check`` and ``--version`` included."""
    return lambda func: _common_options(func, prog_name)


def _common_options(func: F, prog_name: str) -> F:
    decorators = [
        click.option(
            "--metrics-listen",
            type=LISTEN,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (off unless given).",
        ),
        click.option(
            "--token-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="File holding the bearer token (or set WSTUN_TOKEN).",
        ),
        click.option(
            "--idle-timeout",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Close a tunnel when no data moved for this many seconds (0: never).",
        ),
        click.option(
            "--ping-interval",
            type=click.FloatRange(min=0),
            default=20.0,
            show_default=True,
            help="Seconds between WebSocket keepalive pings (0: no pings).",
        ),
        click.option(
            "--ping-timeout",
            type=click.FloatRange(min=0),
            default=20.0,
            show_default=True,
            help="A peer that sends nothing for this long after a ping is dead (0: never).",
        ),
        click.option(
            "--grace",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            help="On SIGTERM, stop accepting and give open tunnels this many seconds to finish.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            default="info",
            show_default=True,
            help="Log verbosity; each tunnel logs one line at info when it ends.",
        ),
        click.option("-v", "--verbose", is_flag=True, help="Short for --log-level debug."),
        click.option("-q", "--quiet", is_flag=True, help="Short for --log-level warning."),
        click.option(
            "--check", is_flag=True, help="Validate the options, print the result and exit."
        ),
        click.version_option(__version__, prog_name=prog_name),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Show a :class:`ConfigError` as click shows a bad option: exit 2, one message."""
    try:
        yield
    except ConfigError as exc:
        if exc.value:
            raise click.BadParameter(str(exc), param_hint=exc.option) from None
        raise click.UsageError(str(exc)) from None


def load_token(token_file: Path | None) -> str | None:
    """The token from ``--token-file``, else ``WSTUN_TOKEN``, else ``None``.

    Raises :class:`ConfigError` for a file that can't be read or is empty,
    and for a token that can't go in a header.
    """
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except PermissionError:
            raise ConfigError(
                f"can't read {token_file}: permission denied; this process runs as uid "
                f"{os.getuid()}, gid {os.getgid()}: make the file readable by one of them",
                option="--token-file",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"can't read {token_file}: {exc}", option="--token-file") from None
        if not token:
            raise ConfigError(f"{token_file} is empty", option="--token-file")
        warn_if_exposed(token_file)
        source = str(token_file)
    else:
        token = os.environ.get(f"{ENV_PREFIX}_TOKEN", "").strip()
        if not token:
            return None
        source = f"{ENV_PREFIX}_TOKEN"
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError(
            f"the token in {source} contains whitespace or control characters", value=True
        )
    return token


def warn_if_exposed(secret_file: Path) -> None:
    """One warning line on stderr when a file holding a secret (a token, a password) is
    readable by others. Its group may read it: the README's compose setup gives the
    container's group read access (chmod 640)."""
    if os.name != "posix":
        return  # no such mode bits
    try:
        mode = secret_file.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o004:
        click.echo(
            f"warning: {secret_file} is readable by others (mode {mode:04o}); "
            f"make it private: chmod 600 {secret_file} (or 640 for a group that needs it)",
            err=True,
        )
