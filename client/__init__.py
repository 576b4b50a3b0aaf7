"""wstun-client: local listeners that carry each connection through a WebSocket."""

from __future__ import annotations

__all__: list[str] = []
