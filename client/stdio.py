"""stdio forwarding (``-W``): stdin/stdout are the local side of one tunnel.

Made for ``ssh -o ProxyCommand='wstun-client -W %h:%p URL'``: ssh writes to
our stdin and reads our stdout, so stdout carries payload and nothing else
(logs go to stderr), EOF on stdin half-closes the tunnel, and the target's
EOF closes stdout.

:class:`StdioStream` keeps the :class:`~common.streams.ByteStream` contract
over a pair of file descriptors. Pipes (what ssh hands a ProxyCommand) go
through the event loop's pipe transports. Anything else (a regular file, a
terminal, a socket) is served by one daemon thread per direction, so that
a descriptor which can't be made non-blocking still works and nothing on a
shared terminal is switched to non-blocking mode. (A socket is often both
stdin and stdout, e.g. under inetd or socat; the loop's write-pipe transport
takes any readability of its descriptor for "the reader went away", which
on a socket is just incoming data.) On a socket, ending the output is
``shutdown(SHUT_WR)``, so the read direction stays open.

A pipe has no reset: ``abort()`` closes both descriptors like ``close()``
(dropping unwritten output); the process's exit status carries the error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import os
import queue
import select
import signal
import socket
import stat
import sys
import threading
from typing import Any, cast

from wstun.client.config import ClientConfig
from wstun.client.dialer import WebSocketDialer
from wstun.client.tunnel import Dialer, LocalEnd, Tunnel, TunnelSettings
from wstun.common.errors import HandshakeError, StreamBroken, StreamClosed, describe_os_error
from wstun.common.protocol import Target
from wstun.common.report import TunnelEnd
from wstun.common.runtime import install_stop_signals
from wstun.common.streams import ByteStream, StreamState, check_writable

__all__ = [
    "HANGUP_GRACE",
    "StdioEnd",
    "StdioStream",
    "open_stdio",
    "run_stdio",
    "stdio_main",
    "uses_pipe_transport",
]

logger = logging.getLogger("wstun.client")

# Bytes buffered from the read pipe before reading pauses.
_READ_HIGH_WATER = 256 * 1024

# Largest single read the reader thread asks the OS for.
_THREAD_READ_SIZE = 64 * 1024

# How long close() waits for buffered output to flush before dropping it.
_CLOSE_TIMEOUT = 10.0

#: Seconds a tunnel gets to end by itself after SIGHUP.
HANGUP_GRACE = 2.0


def uses_pipe_transport(fd: int) -> bool:
    """Whether ``fd`` goes through the loop's pipe support (only pipes do)."""
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def _wait_ready(fd: int, *, write: bool) -> None:
    """Block until ``fd`` is ready: for a descriptor someone made non-blocking."""
    if write:
        select.select([], [fd], [])
    else:
        select.select([fd], [], [])


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


# ------------------------------------------------------------ read side


class _PipeReader(asyncio.Protocol):
    """Receives from a read-pipe transport into a queue of chunks."""

    def __init__(self) -> None:
        self._transport: asyncio.ReadTransport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        # Set when the writer closed its end; set when the transport is gone.
        self._eof_rcvd = False
        self._lost = False
        self._error: Exception | None = None
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.ReadTransport, transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_HIGH_WATER and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()
        _wake(self._waiter)

    def eof_received(self) -> None:
        self._eof_rcvd = True
        _wake(self._waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        _wake(self._waiter)

    async def read(self, max_bytes: int) -> bytes:
        while not self._chunks:
            if self._closed:
                raise StreamClosed("read from a closed stream")
            if self._error is not None:
                raise StreamBroken(describe_os_error(self._error)) from self._error
            if self._eof_rcvd or self._lost:
                # A read pipe's clean end is EOF, whether or not eof_received came first.
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._closed:
            raise StreamClosed("read from a closed stream")
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _READ_HIGH_WATER // 4 and self._transport:
            self._paused = False
            if not self._lost:
                self._transport.resume_reading()
        return chunk

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        _wake(self._waiter)


class _ThreadReader:
    """Reads a blocking descriptor in a daemon thread, one read per request.

    The thread owns the descriptor and closes it when told to stop or at EOF,
    so a read blocked on a terminal never races a close. A read cancelled
    while the thread is still reading loses nothing: the next read picks up
    the same result.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        # Sizes to read; None tells the thread to close the descriptor and stop.
        self._requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        # The result of the read in flight, and bytes read but not yet handed out.
        self._inflight: asyncio.Future[bytes] | None = None
        self._pending = b""
        self._eof_rcvd = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"wstun-read-{fd}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (size := self._requests.get()) is not None:
                try:
                    result: bytes | OSError = self._read(size)
                except OSError as exc:
                    result = exc
                try:
                    self._loop.call_soon_threadsafe(self._deliver, result)
                except RuntimeError:  # the loop is gone: nobody is reading any more
                    return
                if not result or isinstance(result, OSError):
                    return
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _read(self, size: int) -> bytes:
        while True:
            try:
                return os.read(self._fd, size)
            except BlockingIOError:
                _wait_ready(self._fd, write=False)

    def _deliver(self, result: bytes | OSError) -> None:
        future = self._inflight
        if future is None or future.done():
            return
        if isinstance(result, OSError):
            future.set_exception(StreamBroken(describe_os_error(result)))
        else:
            future.set_result(result)

    async def read(self, max_bytes: int) -> bytes:
        if self._closed:
            raise StreamClosed("read from a closed stream")
        if not self._pending:
            if self._eof_rcvd:
                return b""
            if self._inflight is None:
                self._inflight = self._loop.create_future()
                self._requests.put(_THREAD_READ_SIZE)
            self._pending = await asyncio.shield(self._inflight)
            self._inflight = None
            if not self._pending:
                self._eof_rcvd = True
                return b""
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._requests.put(None)
        future = self._inflight
        if future is not None and not future.done():
            future.set_exception(StreamClosed("read from a closed stream"))
            future.exception()  # retrieved: nobody else may be waiting for it


# ----------------------------------------------------------- write side


class _PipeWriter(asyncio.Protocol):
    """Writes through a write-pipe transport with its flow control."""

    def __init__(self) -> None:
        self._transport: asyncio.WriteTransport | None = None
        self._paused = False
        self._lost = False
        self._error: Exception | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_waiter = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        _wake(self._drain_waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        _wake(self._drain_waiter)
        _wake(self._lost_waiter)

    def _broken(self) -> StreamBroken:
        if self._error is not None:
            return StreamBroken(describe_os_error(self._error))
        return StreamBroken("the reader closed the pipe")

    async def write(self, data: bytes) -> None:
        assert self._transport is not None
        if self._lost or self._transport.is_closing():
            raise self._broken() from self._error
        self._transport.write(data)
        while self._paused and not self._lost:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._lost and self._error is not None:
            raise self._broken() from self._error

    def finish(self) -> None:
        """Close once the buffered output is written: the reader sees EOF."""
        assert self._transport is not None
        self._transport.close()

    async def close(self) -> None:
        assert self._transport is not None
        self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost_waiter), _CLOSE_TIMEOUT)
        except TimeoutError:
            self._transport.abort()

    def abort(self) -> None:
        """Drop unwritten output and close now (nothing once the pipe is gone)."""
        assert self._transport is not None
        if not self._lost:
            self._transport.abort()


_FINISH = object()  # tells the writer thread to close the descriptor and stop


class _ThreadWriter:
    """Writes to a blocking descriptor in a daemon thread, in order."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        # (data, future) to write, or _FINISH.
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._aborted = False
        self._finished = False
        self._closed_waiter: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"wstun-write-{fd}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        error: OSError | None = None  # once a write failed, every later one fails the same
        try:
            while (request := self._requests.get()) is not _FINISH:
                data, future = request
                if error is None and not self._aborted:
                    error = self._write_all(data)
                self._resolve(future, error)
        finally:
            self._end_output()
            self._resolve(self._closed_waiter, None)

    def _write_all(self, data: bytes) -> OSError | None:
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except BlockingIOError:
                    _wait_ready(self._fd, write=True)
        except OSError as exc:
            return exc
        return None

    def _end_output(self) -> None:
        """Close the descriptor; on a socket, shut down sending first (its reader sees EOF)."""
        with contextlib.suppress(OSError):
            if not self._aborted and stat.S_ISSOCK(os.fstat(self._fd).st_mode):
                sock = socket.socket(fileno=self._fd)
                try:
                    sock.shutdown(socket.SHUT_WR)
                finally:
                    sock.detach()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _resolve(self, future: asyncio.Future[None], error: OSError | None) -> None:
        def resolve() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(StreamBroken(describe_os_error(error)))

        with contextlib.suppress(RuntimeError):  # the loop is gone
            self._loop.call_soon_threadsafe(resolve)

    async def write(self, data: bytes) -> None:
        if self._finished or self._closed_waiter.done():
            raise StreamBroken("the output is closed")
        future: asyncio.Future[None] = self._loop.create_future()
        self._requests.put((data, future))
        await future

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._requests.put(_FINISH)

    async def close(self) -> None:
        self.finish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed_waiter), _CLOSE_TIMEOUT)

    def abort(self) -> None:
        """Drop what is still queued; close() stops waiting for the thread."""
        self._aborted = True
        self.finish()
        # A write the thread is blocked in can't be interrupted; the daemon
        # thread finishes it, or the process exits without it.
        if not self._closed_waiter.done():
            self._closed_waiter.set_result(None)


# --------------------------------------------------------------- stream


class StdioStream(ByteStream):
    """A read descriptor and a write descriptor as one half-closeable stream.

    The stream owns both descriptors. ``write_eof()`` closes the write
    descriptor once what was written is flushed, so its reader sees EOF.
    ``close()`` closes both. Cancelling ``read`` is safe: no data is lost.
    """

    def __init__(
        self, reader: _PipeReader | _ThreadReader, writer: _PipeWriter | _ThreadWriter
    ) -> None:
        self._reader = reader
        self._writer = writer
        # What this side did: write_eof(), then close() or abort().
        self._state = StreamState.OPEN

    @classmethod
    async def from_fds(cls, read_fd: int, write_fd: int) -> StdioStream:
        """Wrap two descriptors (pipe transports or threads, as each one needs)."""
        loop = asyncio.get_running_loop()
        reader: _PipeReader | _ThreadReader
        writer: _PipeWriter | _ThreadWriter
        if uses_pipe_transport(read_fd):
            _, reader = await loop.connect_read_pipe(_PipeReader, io.FileIO(read_fd, "r"))
        else:
            reader = _ThreadReader(read_fd)
        if uses_pipe_transport(write_fd):
            _, writer = await loop.connect_write_pipe(_PipeWriter, io.FileIO(write_fd, "w"))
        else:
            writer = _ThreadWriter(write_fd)
        return cls(reader, writer)

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._state is StreamState.CLOSED:
            raise StreamClosed("read from a closed stream")
        return await self._reader.read(max_bytes)

    async def write(self, data: bytes) -> int:
        check_writable(data, self._state)
        await self._writer.write(data)
        if self._state is StreamState.CLOSED:
            raise StreamClosed("stream closed while the write waited to drain")
        return len(data)

    async def write_eof(self) -> None:
        if self._state is not StreamState.OPEN:
            return
        self._state = StreamState.EOF_SENT
        self._writer.finish()

    async def close(self) -> None:
        if self._state is StreamState.CLOSED:
            return
        self._state = StreamState.CLOSED
        self._reader.close()
        await self._writer.close()

    async def abort(self, reason: str = "") -> None:
        if self._state is StreamState.CLOSED:
            self._writer.abort()  # cuts short a close() still flushing; else nothing
            return
        self._state = StreamState.CLOSED
        self._reader.close()
        self._writer.abort()

    def __repr__(self) -> str:
        return f"<StdioStream {type(self._reader).__name__}/{type(self._writer).__name__}>"


async def open_stdio() -> StdioStream:
    """stdin and stdout as a StdioStream.

    The stream gets duplicates of descriptors 0 and 1, and 0 and 1 are then
    pointed at /dev/null: closing the stream's copy really ends the output
    (no other descriptor keeps the pipe open), and nothing else in the
    process can write into the payload by accident.
    """
    sys.stdout.flush()
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
    finally:
        os.close(devnull)
    return await StdioStream.from_fds(read_fd, write_fd)


def _fail(message: str) -> int:
    """Print the one-line reason a -W run failed; returns the exit status."""
    line = " ".join(message.split())
    print(f"wstun-client: {line}", file=sys.stderr, flush=True)
    return 1


class StdioEnd(LocalEnd):
    """stdin/stdout as the local end of the ``-W`` tunnel, opened once the tunnel is.

    A refusal touches neither; the exit status and its one line tell it.
    """

    peer = "stdio"
    name = "stdio"

    def __init__(self) -> None:
        #: Why stdin/stdout could not be used, when they couldn't.
        self.failure: str | None = None

    async def refused(self, error: HandshakeError) -> None:
        pass

    async def opened(self, remote: ByteStream) -> ByteStream | None:
        try:
            return await open_stdio()
        except OSError as exc:
            await remote.abort("client can't use stdin/stdout")
            self.failure = f"can't use stdin/stdout: {describe_os_error(exc)}"
            return None

    async def abandon(self) -> None:
        pass  # stdin/stdout are opened only with the tunnel, and relayed from then on


async def run_stdio(
    config: ClientConfig,
    target: Target,
    stop: asyncio.Event,
    hangup: asyncio.Event,
    *,
    dialer: Dialer | None = None,
) -> int:
    """Tunnel stdin/stdout to ``target`` until both directions end or a signal stops it.

    ``stop`` ends the tunnel at once. ``hangup`` gives it :data:`HANGUP_GRACE`
    seconds to end by itself first: ssh hangs up on its ProxyCommand as it
    exits, usually a moment before the tunnel's own clean end arrives.

    Returns the exit status: 0 when both directions ended cleanly; 1 with a
    one-line reason on stderr when the server refused, the tunnel broke or
    a signal cut it.
    """
    refusals: list[str] = []
    local = StdioEnd()
    tunnel = Tunnel(
        target,
        local,
        dialer=dialer if dialer is not None else WebSocketDialer(config),
        settings=TunnelSettings(config.read_size, config.idle_timeout, "stopped by a signal"),
        log_failure=refusals.append,
    )
    relay = asyncio.create_task(tunnel.run())
    stopped = asyncio.create_task(stop.wait())
    hung_up = asyncio.create_task(hangup.wait())
    cut = False
    try:
        await asyncio.wait({relay, stopped, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        if hung_up.done() and not relay.done():
            await asyncio.wait(
                {relay, stopped}, timeout=HANGUP_GRACE, return_when=asyncio.FIRST_COMPLETED
            )
    finally:
        stopped.cancel()
        hung_up.cancel()
        if not relay.done():
            cut = True
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
    report = tunnel.report
    if refusals:
        return _fail(refusals[0])
    if local.failure is not None:
        return _fail(local.failure)
    reason = report.reason or ("stopped by a signal" if cut else "")
    if report.end is TunnelEnd.EOF and not reason:
        return 0
    return _fail(f"tunnel to {target} ended: {reason or report.end}")


async def stdio_main(config: ClientConfig, target: Target) -> int:
    """The ``-W`` process: SIGINT/SIGTERM stop, SIGHUP hangs up, then :func:`run_stdio`."""
    stop, hangup = asyncio.Event(), asyncio.Event()
    install_stop_signals(stop)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.set)
    return await run_stdio(config, target, stop, hangup)
