"""``wstun-client --config FILE``: options from a TOML file, with profiles.

The file's keys are the client's long option names with ``_`` for ``-``
(``local``, ``token_file``, ``ping_interval``) and ``url`` for the URL;
``[profiles.NAME]`` tables replace top-level keys when ``--profile NAME``
picks them. Every value is converted and checked by the option's own click
type and callback, as if it had been typed, then handed to click as the
option's default (``ctx.default_map``). So the order is click's own: the
command line, then the environment, then the file (its profile over its top
level), then the built-in default; ``ctx.get_parameter_source()`` says which
one each value came from, and :func:`provenance` shows it for ``--check``.

Errors are :class:`ConfigError`, with the file, the key and its line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from wstun.common.errors import ConfigError
from wstun.common.options import usage_errors

__all__ = [
    "ConfigFile",
    "config_file_callback",
    "given",
    "load_config_file",
    "provenance",
    "reads_config_of",
    "settle_conflicts",
]

R = TypeVar("R")

#: ctx.meta keys: the loaded file; --config and --profile as their callbacks saw them;
#: the values set aside by a conflicting one from a higher place.
_LOADED = "wstun.configfile"
_SEEN = "wstun.configfile.seen"
_ASIDE = "wstun.configfile.aside"

#: Commands that read another command's config files (``wstun-client check``
#: reads the client's): command -> the command whose keys the file holds.
_KEYS_FROM: dict[click.Command, click.Command] = {}

#: Options that only make sense on the command line (or in the environment).
COMMAND_LINE_ONLY = frozenset({"config", "profile", "check", "help", "version"})

#: Words that make a key a secret, which never goes in the config file itself.
_SECRET_WORDS = ("token", "password", "passwd", "secret")

#: Options that can't go together. When they come from different places the
#: highest one (command line, environment, file) wins and the others are set
#: aside, as ``ssh -W`` sets aside the forwards of ssh_config; from one place
#: they are still an error, which the usual checks report.
EXCLUSIVE: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("stdio_target",), ("forwards", "remotes", "dynamic")),
    (("cacert",), ("insecure",)),
    (("connect_to",), ("proxy",)),
    (("log_level",), ("verbose",), ("quiet",)),
)


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """A config file as loaded: where it is, its profile, and where each value stands."""

    path: Path
    profile: str | None
    #: parameter name -> 1-based line of its key (None: not found in the text)
    lines: Mapping[str, int | None]

    def place(self, name: str) -> str:
        """``FILE:LINE`` of the key that gave parameter ``name`` its value."""
        return _place(self.path, self.lines.get(name))


def _place(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


# -- reading --------------------------------------------------------------------------


def config_file_callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """The callback of the eager ``--config`` and ``--profile``: once both are known
    (in whichever order click processes them), the file's values become the defaults."""
    seen: dict[str, Any] = ctx.meta.setdefault(_SEEN, {})
    seen[param.name or ""] = value
    if {"config", "profile"} <= seen.keys():
        with usage_errors():
            load_config_file(ctx, seen["config"], seen["profile"])


def reads_config_of(command: click.Command, keys_from: click.Command) -> None:
    """Let ``command`` read the config files of ``keys_from``: the whole file is
    checked against ``keys_from``'s options, and only the values of the options
    ``command`` takes too become its defaults; the others are left unused."""
    _KEYS_FROM[command] = keys_from


def load_config_file(ctx: click.Context, path: Path | None, profile: str | None) -> None:
    """Check the file (and its profile) and put its values in ``ctx.default_map``."""
    if path is None:
        if profile is not None:
            raise ConfigError(
                f"{_option_or_variable(ctx, 'profile', 'WSTUN_PROFILE')} needs a config file: "
                "give --config FILE or set WSTUN_CONFIG"
            )
        return
    text = _read(ctx, path)
    tables, others = _tables(path, text, _parse(path, text), profile)
    params = _file_keys(_KEYS_FROM.get(ctx.command, ctx.command))
    taken = _file_keys(ctx.command)
    values: dict[str, Any] = {}
    lines: dict[str, int | None] = {}
    for key, (value, table) in _merge(tables).items():
        line = key_line(text, table, key)
        param = _known(params, key, value, table, _place(path, line))
        raw = _checked(ctx, param, key, value, path, line)
        if key in taken:
            values[taken[key].name or key] = raw
            lines[taken[key].name or key] = line
    # The profiles not chosen are checked too, so a typo or a secret in one is found
    # before the day it is used; the files they name only when it is.
    for table, data in others:
        for key, value in data.items():
            line = key_line(text, table, key)
            param = _known(params, key, value, table, _place(path, line))
            if not isinstance(param.type, click.Path):
                _checked(ctx, param, key, value, path, line)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[_LOADED] = ConfigFile(path, profile, lines)


def _option_or_variable(ctx: click.Context, name: str, variable: str) -> str:
    from_environment = ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT
    return variable if from_environment else f"--{name}"


def _read(ctx: click.Context, path: Path) -> str:
    """The file's text; the error names --config or WSTUN_CONFIG, as click's own do."""
    from_environment = ctx.get_parameter_source("config") is ParameterSource.ENVIRONMENT
    hint = "WSTUN_CONFIG (from the environment)" if from_environment else "'--config'"
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"can't read {path}: not UTF-8 text", option=hint) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"can't read {path}: {reason}", option=hint) from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


Table = tuple[str, ...]


def _tables(
    path: Path, text: str, data: dict[str, Any], profile: str | None
) -> tuple[list[tuple[Table, dict[str, Any]]], list[tuple[Table, dict[str, Any]]]]:
    """The top level, then the chosen profile's table (the later one's keys win);
    and the profiles not chosen."""
    profiles = data.pop("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(t, dict) for t in profiles.values()):
        where = _place(path, key_line(text, (), "profiles"))
        raise ConfigError(f"{where}: 'profiles' holds tables: [profiles.NAME]")
    tables: list[tuple[Table, dict[str, Any]]] = [((), data)]
    others: list[tuple[Table, dict[str, Any]]] = [
        (("profiles", name), table) for name, table in profiles.items() if name != profile
    ]
    if profile is None:
        return tables, others
    if profile not in profiles:
        names = ", ".join(sorted(profiles)) if profiles else "none"
        raise ConfigError(f"{path}: no profile {profile!r}; the file's profiles: {names}")
    chosen: dict[str, Any] = profiles[profile]
    tables.append((("profiles", profile), chosen))
    return tables, others


def _merge(tables: list[tuple[Table, dict[str, Any]]]) -> dict[str, tuple[Any, Table]]:
    """Each key's value and the table it came from; a later table's key replaces it whole."""
    merged: dict[str, tuple[Any, Table]] = {}
    for table, data in tables:
        merged.update({key: (value, table) for key, value in data.items()})
    return merged


def _table_name(table: Table) -> str:
    return "[" + ".".join(table) + "]" if table else "the top level"


# -- keys -----------------------------------------------------------------------------


def _file_keys(command: click.Command) -> dict[str, click.Parameter]:
    """The keys a config file may hold: each option's long name with ``_``, and ``url``."""
    keys: dict[str, click.Parameter] = {}
    for param in command.params:
        key = file_key(param)
        if key not in COMMAND_LINE_ONLY:
            keys[key] = param
    return keys


def file_key(param: click.Parameter) -> str:
    """``--token-file`` is ``token_file``; an argument is its name (``url``)."""
    longs = [opt for opt in param.opts if opt.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs else param.name or ""


def _known(
    params: dict[str, click.Parameter], key: str, value: Any, table: Table, where: str
) -> click.Parameter:
    """The parameter for ``key``, or the error that says what to write instead."""
    if key in params:
        return params[key]
    if any(word in key.lower() for word in _SECRET_WORDS):
        what, instead = ("passwords", "socks_password_file") if "pass" in key else (
            "tokens", "token_file"
        )  # fmt: skip
        raise ConfigError(
            f"{where}: '{key}' is refused: {what} don't go in the config file, they live in "
            f'files of their own: {instead} = "..." (chmod 600)'
        )
    if key in COMMAND_LINE_ONLY:
        raise ConfigError(f"{where}: '{key}' goes on the command line, not in the config file")
    if isinstance(value, dict):
        hint = f"; profiles go in [profiles.{key}]" if not table else ""
        raise ConfigError(f"{where}: unexpected table {_table_name((*table, key))}{hint}")
    inside = f" in {_table_name(table)}" if table else ""
    raise ConfigError(f"{where}: unknown key '{key}'{inside}{_suggestion(params, key)}")


def _suggestion(params: dict[str, click.Parameter], key: str) -> str:
    """``; did you mean 'local'?`` for ``lcoal``, and for ``forwards`` or ``L`` too."""
    names = {name: name for name in params}
    for name, param in params.items():
        names.update({opt.lstrip("-"): name for opt in param.opts if not opt.startswith("--")})
        names.setdefault(param.name or name, name)
    close = difflib.get_close_matches(key, list(names), n=1)
    return f"; did you mean '{names[close[0]]}'?" if close else ""


# -- values ---------------------------------------------------------------------------


def _checked(
    ctx: click.Context,
    param: click.Parameter,
    key: str,
    value: Any,
    path: Path,
    line: int | None,
) -> Any:
    """``value`` as click will take it from ``default_map``, checked by the option's own
    type and callback; a bad one is an error naming the file, the key and the line."""
    hint = f"'{key}' in {_place(path, line)}"
    raw = _raw(param, value, hint)
    if isinstance(param.type, click.Path):
        raw = [_relative_to(path, item) for item in raw] if param.multiple else (
            _relative_to(path, raw)
        )  # fmt: skip
    try:
        param.process_value(ctx, raw)
    except click.BadParameter as exc:
        raise ConfigError(exc.message, option=hint) from None
    return raw


def _raw(param: click.Parameter, value: Any, hint: str) -> Any:
    """The TOML value as the command line would have given it (lists for repeatable
    options, one string being a list of one), or an error for a TOML type that can't be."""
    if not param.multiple:
        return _scalar(param, value, hint)
    items = value if isinstance(value, list) else [value]
    return [_scalar(param, item, hint, repeatable=True) for item in items]


def _scalar(param: click.Parameter, value: Any, hint: str, *, repeatable: bool = False) -> Any:
    """Strings go to click as typed; numbers and booleans where the option takes them."""
    expected = _expected(param)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        if expected == "true or false":
            return value
    elif isinstance(value, int):
        if expected != "true or false":
            return value if expected != "a string" else str(value)
    elif isinstance(value, float) and expected == "a number":
        return value
    if repeatable:
        expected = f"a list of {expected.removeprefix('a ')}s (or one)"
    raise ConfigError(f"expected {expected}, got {_toml_kind(value)}", option=hint)


def _expected(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "true or false"
    if isinstance(param.type, click.types.IntParamType):
        return "an integer"
    if isinstance(param.type, click.types.FloatParamType):
        return "a number"
    return "a string"


def _toml_kind(value: Any) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (list, "a list"),
        (dict, "a table"),
        ((datetime, date, time), "a date or time"),
    ]
    return next((name for kind, name in kinds if isinstance(value, kind)), "a string")


def _relative_to(config: Path, value: Any) -> Any:
    """A path from the file: ``~`` expanded, and relative to the file's own folder."""
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else config.parent / path)


# -- lines ----------------------------------------------------------------------------

_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_HEADER = re.compile(rf"^\s*\[\s*({_PART}(?:\s*\.\s*{_PART})*)\s*\]\s*(?:#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[")
_ASSIGN = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")
_PARTS = re.compile(r"""[A-Za-z0-9_-]+|"([^"]*)"|'([^']*)'""")


def _dotted(text: str) -> Table:
    return tuple(
        next((group for group in match.groups() if group is not None), match.group(0))
        for match in _PARTS.finditer(text)
    )


def key_line(text: str, table: Table, key: str) -> int | None:
    """The 1-based line where ``key`` of ``table`` (``()``: the top level) is set.

    tomllib keeps no positions, so this scans the text: table headers and
    ``key =`` lines, dotted keys included. Good enough for a message; when the
    key can't be found (an inline table) it is the table's header, else None.
    """
    wanted = (*table, key)
    current: Table = ()
    header_line: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if _ARRAY_HEADER.match(line):
            current = ("[[",)  # arrays of tables hold no options
        elif header := _HEADER.match(line):
            current = _dotted(header.group(1))
            if current == wanted:  # a table where a value should be
                return number
            if current == table:
                header_line = number
        elif (assign := _ASSIGN.match(line)) and (*current, *_dotted(assign.group(1))) == wanted:
            return number
    return header_line


# -- the command line and the file together ------------------------------------------


def settle_conflicts(func: Callable[..., R]) -> Callable[..., R]:
    """Run the command with the values that a conflicting one from a higher place set
    aside (see :data:`EXCLUSIVE`) replaced by their option's "not given"."""

    @functools.wraps(func)
    def settled(ctx: click.Context, /, **params: Any) -> R:
        aside = _set_aside(ctx, params)
        ctx.meta[_ASIDE] = aside
        params.update({name: _not_given(ctx, name) for name in aside})
        return func(ctx, **params)

    return settled


def _set_aside(ctx: click.Context, params: Mapping[str, Any]) -> dict[str, str]:
    """Parameter name -> the name of the one from a higher place that sets it aside."""
    aside: dict[str, str] = {}
    for sides in EXCLUSIVE:
        ranks = {side: _rank(ctx, params, side) for side in sides}
        active = {side: rank for side, rank in ranks.items() if rank is not None}
        best = min(active.values(), default=None)
        winners = [side for side, rank in active.items() if rank == best]
        if len(active) < 2 or len(winners) > 1:
            continue
        for side in active.keys() - {winners[0]}:
            aside.update({name: winners[0][0] for name in side if _is_set(ctx, params, name)})
    return aside


def _rank(ctx: click.Context, params: Mapping[str, Any], side: tuple[str, ...]) -> int | None:
    """The highest place (lowest ParameterSource) any of ``side`` was set in."""
    sources = [_source(ctx, name) for name in side if _is_set(ctx, params, name)]
    return min(sources, default=None)


def _is_set(ctx: click.Context, params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    return (
        _source(ctx, name) != ParameterSource.DEFAULT
        and value is not None
        and value is not False
        and value != ()
    )


def _source(ctx: click.Context, name: str) -> ParameterSource:
    return ctx.get_parameter_source(name) or ParameterSource.DEFAULT


def _not_given(ctx: click.Context, name: str) -> Any:
    param = next(param for param in ctx.command.params if param.name == name)
    if param.multiple:
        return ()
    if isinstance(param, click.Option) and param.is_flag:
        return False
    return param.to_info_dict().get("default")


def given(ctx: click.Context, name: str) -> bool:
    """Parameter ``name`` was given somewhere (not its default) and not set aside."""
    return _source(ctx, name) != ParameterSource.DEFAULT and name not in ctx.meta.get(_ASIDE, {})


# -- provenance -----------------------------------------------------------------------


def provenance(ctx: click.Context, *, skip: frozenset[str] = frozenset({"check"})) -> list[str]:
    """``from: KEY = WHERE`` for every value that isn't the default, for --check:
    ``command line``, ``environment (WSTUN_...)`` or ``FILE:LINE``."""
    loaded: ConfigFile | None = ctx.meta.get(_LOADED)
    lines = []
    if loaded is not None:
        profile = f", profile {loaded.profile}" if loaded.profile else ""
        lines.append(f"config file: {loaded.path}{profile}")
    lines += [f"from: {file_key(param)} = {where}" for param, where in _places(ctx, skip)]
    return lines


def _places(ctx: click.Context, skip: frozenset[str]) -> Iterator[tuple[click.Parameter, str]]:
    aside: dict[str, str] = ctx.meta.get(_ASIDE, {})
    by_name = {param.name: param for param in ctx.command.params}
    for param in ctx.command.params:
        name = param.name or ""
        if name in skip or _source(ctx, name) is ParameterSource.DEFAULT:
            continue
        where = _where(ctx, param)
        if name in aside:
            winner = by_name[aside[name]]
            where += f" (not used: {file_key(winner)} = {_where(ctx, winner)} wins)"
        yield param, where


def _where(ctx: click.Context, param: click.Parameter) -> str:
    """``command line``, ``environment (WSTUN_...)`` or ``FILE:LINE``."""
    source = _source(ctx, param.name or "")
    loaded: ConfigFile | None = ctx.meta.get(_LOADED)
    if source is ParameterSource.DEFAULT_MAP and loaded is not None:
        return loaded.place(param.name or "")
    if source is ParameterSource.ENVIRONMENT:
        return f"environment ({_variable(ctx, param)})"
    return "command line"


def _variable(ctx: click.Context, param: click.Parameter) -> str:
    """The environment variable that gave ``param`` its value."""
    names = param.envvar or []
    candidates = [names] if isinstance(names, str) else list(names)
    candidates.append(f"{ctx.auto_envvar_prefix}_{(param.name or '').upper()}")
    return next((name for name in candidates if os.environ.get(name)), candidates[0])
