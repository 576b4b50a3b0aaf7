"""Process plumbing both commands share: event loop, signals, logging."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

__all__ = [
    "RedactSecrets",
    "Service",
    "configure_logging",
    "install_stop_signals",
    "run",
    "serve_until",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class RedactSecrets(logging.Filter):
    """Hide query strings and credential headers in websockets' debug records.

    At ``--log-level debug`` websockets logs request lines and headers; a
    query string may hold a token a client wrongly put there, and the
    Authorization header always does.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("websockets") or not isinstance(record.args, tuple):
            return True
        args = list(record.args)
        for i, arg in enumerate(args):
            if isinstance(arg, str) and arg.startswith("/") and "?" in arg:
                args[i] = arg.partition("?")[0] + "?<query hidden>"
        if len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            args[1] = "<hidden>"
        record.args = tuple(args)
        return True


def configure_logging(level: str, *, stream: Any = None) -> None:
    """Log to stderr at ``level``; websockets' own chatter only from WARNING up."""
    # What LOG_FORMAT never shows is not gathered for every record (the
    # logging documentation's "Optimization"): each tunnel logs a line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no findCaller(): file and line are not shown
    logging.basicConfig(
        level=level.upper(), format=LOG_FORMAT, stream=stream or sys.stderr, force=True
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
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


class Service(Protocol):
    """A server or client that listens, drains and stops."""

    async def start(self) -> object: ...

    async def drain(self, grace: float) -> None: ...

    async def stop(self) -> None: ...


async def serve_until(
    service: Service, stop: asyncio.Event, grace: float, log: logging.Logger
) -> None:
    """Start ``service``; once ``stop`` is set, drain for ``grace`` seconds, then stop it."""
    await service.start()
    try:
        await stop.wait()
        log.info("shutting down")
        await service.drain(grace)
    finally:
        await service.stop()
