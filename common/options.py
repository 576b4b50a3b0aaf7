"""Command-line pieces both commands share: value types, common options, token."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wstun.common.errors import TargetError
from wstun.common.protocol import Target, parse_listen, parse_target

__all__ = [
    "ENV_PREFIX",
    "LISTEN",
    "TARGET",
    "common_options",
    "load_token",
    "seconds_or_off",
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


def common_options(func: F) -> F:
    """Options that mean the same on both sides."""
    decorators = [
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
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def load_token(token_file: Path | None) -> str | None:
    """The token from ``--token-file``, else ``WSTUN_TOKEN``, else ``None``."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(
                f"can't read {token_file}: {exc}", param_hint="--token-file"
            ) from None
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        source = str(token_file)
    else:
        token = os.environ.get(f"{ENV_PREFIX}_TOKEN", "").strip()
        if not token:
            return None
        source = f"{ENV_PREFIX}_TOKEN"
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise click.BadParameter(f"the token in {source} contains whitespace or control characters")
    return token
