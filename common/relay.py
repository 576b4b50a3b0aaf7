"""copy_bidirectional: the relay both sides run, after tokio's.

Each direction is a :class:`Transfer` whose state moves
``RUNNING -> SHUTTING_DOWN -> DONE``:

- ``RUNNING``: read a chunk from the source; a non-empty chunk is written to
  the destination and counted; ``b""`` (EOF) moves to ``SHUTTING_DOWN``.
- ``SHUTTING_DOWN``: everything read has been written; ``write_eof()`` on the
  destination, so the peer learns this direction ended.
- ``DONE``: nothing more flows this way. The other direction may go on.

Both directions run concurrently. When both are ``DONE`` the streams are
closed gracefully and the payload counts returned. An error in either
direction cancels the other one and aborts both streams at once (so the
applications at both ends see an error, never a clean but short stream);
``write_eof()`` is never called after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum

from wstun.common.errors import IdleTimeout, RelayError, StreamBroken, TunnelError
from wstun.common.streams import DEFAULT_READ_SIZE, ByteStream

__all__ = ["Transfer", "TransferState", "copy_bidirectional"]


class TransferState(enum.Enum):
    """Where one direction of the relay is in its life."""

    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"
    DONE = "done"


@dataclasses.dataclass
class Transfer:
    """One direction: copy ``src`` into ``dst`` until EOF, then shut ``dst`` down."""

    src: ByteStream
    dst: ByteStream
    src_name: str
    dst_name: str
    state: TransferState = TransferState.RUNNING
    #: Payload bytes ``dst`` accepted so far.
    count: int = 0


class _DirectionFailed(Exception):
    """Internal: which stream failed, doing what, and why."""

    def __init__(self, stream: str, operation: str, cause: BaseException) -> None:
        super().__init__(stream, operation, cause)
        self.stream = stream
        self.operation = operation
        self.cause = cause


class _Activity:
    """State both directions share: when payload last moved (for the idle
    timeout) and whether the relay has failed (then no more write_eof)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        # Set the moment the relay fails (a direction or the idle watchdog):
        # no write_eof() after that.
        self.failed = False

    def touch(self) -> None:
        self.last = self._loop.time()

    async def wait_idle(self, timeout: float) -> None:
        """Return once nothing has moved for ``timeout`` seconds."""
        # A timer re-armed from the last activity: one wake-up per timeout
        # period, instead of an event set on every chunk of the hot path.
        while (remaining := self.last + timeout - self._loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)


# Failures a direction turns into a relay error; anything else is a bug and
# propagates as it is (after both streams are aborted).
_EXPECTED = (TunnelError, OSError, EOFError)


async def _write_all(t: Transfer, chunk: bytes, activity: _Activity) -> None:
    while chunk:
        try:
            n = await t.dst.write(chunk)
        except _EXPECTED as exc:
            raise _DirectionFailed(t.dst_name, "write", exc) from exc
        _check_count(t, n, len(chunk))
        t.count += n
        activity.touch()
        chunk = chunk[n:]


def _check_count(t: Transfer, n: int, given: int) -> None:
    # Invariant: a writer never reports more than it was given. A writer
    # counting its own framing would otherwise corrupt every count.
    if n > given:
        bug = AssertionError(f"writer returned length larger than input: {n} > {given}")
        raise _DirectionFailed(t.dst_name, "write", bug)
    if n <= 0:
        zero = StreamBroken(f"writer accepted {n} bytes of {given}")
        raise _DirectionFailed(t.dst_name, "write", zero)


async def _run(t: Transfer, read_size: int, activity: _Activity) -> None:
    try:
        await _copy(t, read_size, activity)
    except _DirectionFailed:
        # Set before the other direction can run again: it may have read its
        # EOF in the same loop iteration and must not half-close after an error.
        activity.failed = True
        raise


async def _copy(t: Transfer, read_size: int, activity: _Activity) -> None:
    # The RUNNING state is the hot path: one read, one write, no other call
    # when the destination takes the whole chunk, which it normally does.
    src, dst = t.src, t.dst

    def sink(chunk: bytes) -> bool:
        # Called by src as a chunk arrives while our read() waits with
        # nothing buffered: copy it now if dst takes it without waiting,
        # instead of waking this task for it. Same count, same order.
        if activity.failed or len(chunk) > read_size:
            return False
        try:
            if not dst.try_write(chunk):
                return False
        except Exception:  # the slow path will meet the error and report it
            return False
        t.count += len(chunk)
        activity.touch()
        return True

    src.set_sink(sink)
    try:
        await _copy_running(t, read_size, activity)
    finally:
        src.set_sink(None)
    if t.state is TransferState.SHUTTING_DOWN:
        if activity.failed:
            return  # the relay is about to abort both streams
        try:
            await t.dst.write_eof()
        except _EXPECTED as exc:
            raise _DirectionFailed(t.dst_name, "write_eof", exc) from exc
        t.state = TransferState.DONE


async def _copy_running(t: Transfer, read_size: int, activity: _Activity) -> None:
    """RUNNING: read and write until EOF (then SHUTTING_DOWN) or an error."""
    src, dst = t.src, t.dst
    while t.state is TransferState.RUNNING:
        try:
            chunk = await src.read(read_size)
        except _EXPECTED as exc:
            raise _DirectionFailed(t.src_name, "read", exc) from exc
        if not chunk:
            t.state = TransferState.SHUTTING_DOWN
            break
        activity.touch()
        try:
            n = await dst.write(chunk)
        except _EXPECTED as exc:
            raise _DirectionFailed(t.dst_name, "write", exc) from exc
        _check_count(t, n, len(chunk))
        t.count += n
        activity.touch()
        if n < len(chunk):
            await _write_all(t, chunk[n:], activity)


async def _abort_both(a: ByteStream, b: ByteStream, reason: str) -> None:
    await asyncio.gather(a.abort(reason), b.abort(reason), return_exceptions=True)


async def _close_both(a: ByteStream, b: ByteStream) -> None:
    """Close both at once; a failing close is the stream's own business by now."""
    # One task, not gather()'s two: every tunnel that ends cleanly comes here.
    other = asyncio.ensure_future(b.close())
    try:
        with contextlib.suppress(Exception):  # both directions are done: nothing to report
            await a.close()
        if not other.done():
            await asyncio.wait((other,))
    except BaseException:
        other.cancel()
        raise
    if not other.cancelled():
        other.exception()  # retrieved: not reported as never retrieved


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def copy_bidirectional(
    a: ByteStream,
    b: ByteStream,
    *,
    read_size: int = DEFAULT_READ_SIZE,
    idle_timeout: float | None = None,
    names: tuple[str, str] = ("a", "b"),
    progress: list[Transfer] | None = None,
) -> tuple[int, int]:
    """Copy ``a -> b`` and ``b -> a`` until both reach EOF; close both.

    Returns ``(a_to_b, b_to_a)``, the payload bytes each destination accepted.
    ``names`` label the streams in error messages and abort reasons.
    ``progress``, when given, gets the two :class:`Transfer` objects, whose
    ``count`` tells the bytes moved so far while the relay runs.

    Raises :class:`RelayError` (with partial counts) when a read, write or
    ``write_eof`` fails, and :class:`IdleTimeout` when no payload moved for
    ``idle_timeout`` seconds; both streams are aborted first. Cancelling the
    relay aborts both streams too.
    """
    a_name, b_name = names
    forward = Transfer(a, b, a_name, b_name)
    backward = Transfer(b, a, b_name, a_name)
    if progress is not None:
        progress += (forward, backward)
    activity = _Activity()
    transfers = [
        asyncio.ensure_future(_run(forward, read_size, activity)),
        asyncio.ensure_future(_run(backward, read_size, activity)),
    ]
    watchdog = asyncio.ensure_future(activity.wait_idle(idle_timeout)) if idle_timeout else None
    try:
        error = await _wait(transfers, watchdog)
        # Before any other await: a direction that reaches EOF from here on
        # must not half-close a relay that is about to abort.
        activity.failed = error is not None
    except BaseException:
        await _cancel([*transfers, *([watchdog] if watchdog else [])])
        await _abort_both(a, b, "tunnel cancelled")
        raise
    if watchdog is not None:
        await _cancel([watchdog])
    if error is None:
        await _close_both(a, b)
        return forward.count, backward.count
    await _cancel(transfers)
    counts = {"a_to_b": forward.count, "b_to_a": backward.count}
    if isinstance(error, _DirectionFailed):
        message = f"{error.stream} {error.operation} failed: {error.cause}"
        await _abort_both(a, b, message)
        stream = "a" if error.stream == a_name else "b"
        raise RelayError(message, stream=stream, operation=error.operation, **counts) from (
            error.cause
        )
    message = f"idle timeout: no data for {idle_timeout:g}s"
    await _abort_both(a, b, message)
    raise IdleTimeout(message, stream="", operation="idle", **counts)


async def _wait(
    transfers: list[asyncio.Task[None]], watchdog: asyncio.Future[None] | None
) -> _DirectionFailed | IdleTimeout | None:
    """Wait until both transfers finish, one fails, or the watchdog fires."""
    # One future woken by done callbacks, rather than asyncio.wait() per wake-up.
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    watched: list[asyncio.Future[None]] = [*transfers]
    if watchdog is not None:
        watched.append(watchdog)
    for task in watched:
        task.add_done_callback(wake)
    try:
        while True:
            await waiter
            if watchdog is not None and watchdog.done() and not watchdog.cancelled():
                return IdleTimeout("idle", a_to_b=0, b_to_a=0, stream="", operation="idle")
            for task in transfers:
                if task.done() and (exc := task.exception()) is not None:
                    if isinstance(exc, _DirectionFailed):
                        return exc
                    raise exc
            if all(task.done() for task in transfers):
                return None
            waiter = loop.create_future()
    finally:
        for task in watched:
            task.remove_done_callback(wake)
