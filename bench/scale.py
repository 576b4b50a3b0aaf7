"""Scale workload helpers, run as separate processes (each needs its own fd budget).

``python bench/scale.py echo``
    An echo server on 127.0.0.1; prints its port, runs until stdin closes.

``python bench/scale.py hold PORT N``
    Opens N connections to 127.0.0.1:PORT, at most ``--concurrency`` being set
    up at a time. Each sends 1 KiB of random bytes and must get exactly those
    bytes back. It prints one JSON line (successes, failures, seconds to open
    them all, first errors), keeps every connection open until a line arrives
    on stdin, then closes them all and prints ``closed``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import sys
import time
from typing import cast

__all__ = ["main"]

PAYLOAD_SIZE = 1024


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


async def _stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.readline)


async def echo() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await _stdin_closed()
    server.close()


async def _one(port: int, gate: asyncio.Semaphore, timeout: float) -> asyncio.StreamWriter | str:
    payload = os.urandom(PAYLOAD_SIZE)
    async with gate:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(payload)
                got = await reader.readexactly(PAYLOAD_SIZE)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            return type(exc).__name__ + (f": {exc.strerror}" if isinstance(exc, OSError) else "")
    if got != payload:
        writer.close()
        return "echo differs"
    return writer


async def hold(port: int, count: int, concurrency: int, timeout: float) -> None:
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    results = await asyncio.gather(*(_one(port, gate, timeout) for _ in range(count)))
    elapsed = time.monotonic() - started
    writers = [r for r in results if isinstance(r, asyncio.StreamWriter)]
    errors = collections.Counter(r for r in results if isinstance(r, str))
    report = {
        "ok": len(writers),
        "failed": count - len(writers),
        "open_seconds": round(elapsed, 3),
        "errors": dict(errors.most_common(5)),
    }
    print(json.dumps(report), flush=True)
    await _stdin_closed()
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    print("closed", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("echo")
    hold_args = sub.add_parser("hold")
    hold_args.add_argument("port", type=int)
    hold_args.add_argument("count", type=int)
    hold_args.add_argument("--concurrency", type=int, default=100)
    hold_args.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    _raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    if args.command == "echo":
        runner(echo())
    else:
        runner(hold(args.port, args.count, args.concurrency, args.timeout))


if __name__ == "__main__":
    main()
