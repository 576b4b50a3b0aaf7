"""``--workers N``: N server processes sharing one listening port (SO_REUSEPORT).

The parent forks the workers before any event loop exists, forwards SIGINT
and SIGTERM to them, and waits. The kernel spreads incoming connections over
the workers' listening sockets, so one server uses every core. If a worker
dies, the parent stops the others and exits with the failed worker's status:
a supervisor (systemd, docker) restarts the whole server.

With port 0 the parent first reserves a port with a bound, non-listening
SO_REUSEPORT socket, so every worker listens on the same one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import traceback
from collections.abc import Callable

from wstun.common.protocol import Target
from wstun.server.config import ServerConfig

__all__ = ["run_workers"]

logger = logging.getLogger("wstun.server")

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _reserve_port(listen: Target) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, listen.port))
    return sock


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def run_workers(config: ServerConfig, workers: int, serve: Callable[[ServerConfig], int]) -> int:
    """Run ``serve(config)`` in ``workers`` processes on one port; returns the exit code.

    With one worker, ``serve`` runs in this process and nothing is forked.
    """
    if workers <= 1:
        return serve(config)
    reserved = _reserve_port(config.listen)
    port = reserved.getsockname()[1]
    config = dataclasses.replace(config, listen=Target(config.listen.host, port), reuse_port=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                reserved.close()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
                code = serve(config)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        children.append(pid)
    alive = set(children)

    def forward(signum: int, frame: object) -> None:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    logger.info("started %d workers on port %d: pids %s", workers, port, children)
    return _wait(alive, reserved)


def _wait(alive: set[int], reserved: socket.socket) -> int:
    """Reap workers; when one fails, stop the rest. Returns the worst exit code."""
    worst = 0
    try:
        while alive:
            pid, status = os.wait()
            alive.discard(pid)
            code = _exit_code(status)
            if code and alive:
                logger.error("worker %d exited with %d; stopping the others", pid, code)
                for other in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(other, signal.SIGTERM)
            worst = max(worst, code)
    finally:
        reserved.close()
    return worst
