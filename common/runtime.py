"""Process plumbing both commands share: event loop, signals, logging."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["configure_logging", "install_stop_signals", "run"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, *, stream: Any = None) -> None:
    """Log to stderr at ``level``; websockets' own chatter only from WARNING up."""
    logging.basicConfig(
        level=level.upper(), format=LOG_FORMAT, stream=stream or sys.stderr, force=True
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("websockets").setLevel(logging.WARNING)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` instead of killing the process."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
