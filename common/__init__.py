"""Mechanics shared by wstun's client and server: streams, relay, wire protocol."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
