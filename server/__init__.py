"""wstun-server: the WebSocket endpoint that checks, dials and relays."""

from __future__ import annotations

__all__: list[str] = []
