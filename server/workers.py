"""``--workers N``: N server processes sharing one listening port (SO_REUSEPORT).

The parent forks the workers before any event loop exists, forwards SIGINT
and SIGTERM to them, and waits. The kernel spreads incoming connections over
the workers' listening sockets, so one server uses every core. If a worker
dies, the parent stops the others and exits with the failed worker's status:
a supervisor (systemd, docker) restarts the whole server.

With port 0 the parent first reserves a port with a bound, non-listening
SO_REUSEPORT socket, so every worker listens on the same one.

The server stays one server to its operator: ``--max-connections``,
``--max-per-client`` and users' ``max_tunnels`` count across the workers
(server/shared.py, made before the fork), and with ``--metrics-listen`` the
first worker serves one ``/metrics`` that adds up every worker's
(prometheus-client's multiprocess mode, in a directory the parent makes
and removes; a worker's live gauges go with it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
import traceback
from collections.abc import Callable

from prometheus_client.multiprocess import mark_process_dead

from wstun.common.metrics import share_between_processes
from wstun.common.protocol import Target
from wstun.server.config import ServerConfig
from wstun.server.shared import SharedCounts

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
    metrics_dir = None
    if config.metrics_listen is not None:
        metrics_dir = tempfile.mkdtemp(prefix="wstun-metrics-")
        share_between_processes(metrics_dir)
    config = dataclasses.replace(
        config,
        listen=Target(config.listen.host, port),
        reuse_port=True,
        shared_counts=SharedCounts(),
        metrics_dir=metrics_dir,
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    children: list[int] = []
    for index in range(workers):
        # The first worker serves /metrics for all of them.
        own = config if index == 0 else dataclasses.replace(config, metrics_listen=None)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                reserved.close()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
                code = serve(own)
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
    try:
        return _wait(alive, reserved, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait(alive: set[int], reserved: socket.socket, metrics_dir: str | None) -> int:
    """Reap workers; when one fails, stop the rest. Returns the worst exit code."""
    worst = 0
    try:
        while alive:
            pid, status = os.wait()
            alive.discard(pid)
            if metrics_dir is not None:
                mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
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
