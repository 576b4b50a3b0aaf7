"""``--header 'Name: value'``: extra HTTP headers on every tunnel handshake."""

from __future__ import annotations

import re

__all__ = ["RESERVED_HEADERS", "parse_header"]

#: Headers the WebSocket handshake itself sets; a user value would break it.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``('Name', 'value')``; ValueError with a reason if invalid.

    The name must be an HTTP token and not one the handshake sets itself;
    the value may not contain control characters (no header injection).
    """
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError(f"expected 'Name: value', got {text!r}")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{name} is set by the WebSocket handshake itself")
    if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"control characters in the value of {name}")
    return name, value
