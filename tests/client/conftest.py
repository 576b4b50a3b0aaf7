"""Async client tests (StdioStream) run on asyncio's loop and on uvloop, like the streams'."""

from __future__ import annotations

from tests.common.conftest import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
