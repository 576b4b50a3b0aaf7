"""websockets' undocumented parts that wstun uses are all in one module, and all there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from websockets.version import version as websockets_version

from wstun.common.streams import internals

from .conftest import MakePair

REPO = Path(__file__).resolve().parents[2]

#: Attributes of websockets' connections and protocols that its documentation
#: doesn't promise. Only internals.py may touch them.
PRIVATE_NAMES = frozenset(
    {
        "recv_messages",
        "transport",
        "paused",
        "drain",
        "connection_lost_waiter",
        "close_exc",
        "send_in_progress",
        "writes",
        "expect_continuation_frame",
        "extensions",
        "reader",
        "parser",
        "handshake_exc",
        "process_event",
        "get_in_progress",
        "current_size",
        "max_message_size",
        "max_fragment_size",
    }
)

#: websockets modules whose contents are not documented API.
PRIVATE_MODULES = frozenset({"websockets.streams", "websockets.speedups", "websockets.utils"})

#: Where they may appear: the module that lists them, and the reader it installs.
ALLOWED = {"common/streams/internals.py", "common/streams/chunk_reader.py"}

#: Our own objects with attributes of the same names (not websockets').
OWN = {
    ("common/runtime.py", "drain"),  # Service.drain: a TunnelClient's or TunnelServer's
    ("server/app.py", "max_message_size"),  # ServerConfig's
    ("server/config.py", "max_message_size"),
}


@pytest.mark.parametrize("kind", ["ws-v1", "ws-plain"])
async def test_every_internal_is_where_wstun_expects_it(make_pair: MakePair, kind: str) -> None:
    """Both sides' live connections have every private name internals.py relies on."""
    pair = await make_pair(kind)
    for connection in (pair.left_ws, pair.right_ws):
        assert connection is not None
        missing = internals.missing(connection)
        assert not missing, (
            f"websockets {websockets_version} no longer has {', '.join(missing)}: "
            "wstun.common.streams.internals must be adapted to this release"
        )


def _uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in PRIVATE_MODULES:
            found.append(f"{node.lineno}: from {node.module}")
    return found


def test_no_private_websockets_name_outside_internals() -> None:
    """No package module but internals.py reaches into websockets' undocumented parts."""
    offenders = {}
    for part in ("client", "server", "common"):
        for path in sorted((REPO / part).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name in ALLOWED:
                continue
            uses = [use for use in _uses(path) if (name, use.rpartition(".")[2]) not in OWN]
            if uses:
                offenders[name] = uses
    assert not offenders, f"use wstun.common.streams.internals instead: {offenders}"
