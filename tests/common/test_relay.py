"""copy_bidirectional, tested in the style of tokio's io_copy_bidirectional.rs.

Every case runs twice with the relay's arguments swapped (``symmetric``): the
two streams must be interchangeable. Fault injection uses in-memory fakes; the
main cases also run over real TcpStream pairs on 127.0.0.1, where the test
plays the applications at both ends:

    app_a <-TCP-> relay's a  ==copy_bidirectional==  relay's b <-TCP-> app_b
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from wstun.common import relay as relay_module
from wstun.common.errors import IdleTimeout, RelayError, StreamBroken, StreamClosed
from wstun.common.relay import Transfer, TransferState, copy_bidirectional
from wstun.common.streams import ByteStream, TcpStream

from .conftest import MakePair

T = TypeVar("T")

TIMEOUT = 5.0


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


# ------------------------------------------------------------------ the fake


class FakeStream(ByteStream):
    """An in-memory ByteStream with fault injection.

    The test plays the far side: ``feed``/``feed_eof``/``fail_read`` queue what
    the relay will read; ``written`` and ``calls`` record what the relay did.
    """

    def __init__(self) -> None:
        # What read() hands out, in order: chunks, None for EOF, or an error.
        self._incoming: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._rest = b""
        self._eof_read = False
        # Payload the relay wrote, and every write_eof/close/abort it called.
        self.written = bytearray()
        self.calls: list[str] = []
        # Fault injection for write(): raise this, never drain, or misreport.
        self.write_error: BaseException | None = None
        self.stall_writes = False
        self.report: Callable[[int], int] = lambda n: n
        self._changed = asyncio.Condition()

    # Test side.

    def feed(self, data: bytes) -> None:
        self._incoming.put_nowait(data)

    def feed_eof(self) -> None:
        self._incoming.put_nowait(None)

    def fail_read(self, exc: BaseException) -> None:
        self._incoming.put_nowait(exc)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await bounded(self._changed.wait_for(predicate))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @property
    def finished(self) -> bool:
        return "close" in self.calls or "abort" in self.calls

    # The ByteStream contract.

    async def read(self, max_bytes: int) -> bytes:
        if self.finished:
            raise StreamClosed("read from a closed stream")
        if not self._rest:
            if self._eof_read:
                return b""
            item = await self._incoming.get()
            if item is None:
                self._eof_read = True
                return b""
            if isinstance(item, BaseException):
                raise item
            self._rest = item
        chunk, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
        return chunk

    async def write(self, data: bytes) -> int:
        if not data:
            raise ValueError("empty write")
        if self.finished or "write_eof" in self.calls:
            raise StreamClosed("write after write_eof() or close()")
        if self.write_error is not None:
            raise self.write_error
        if self.stall_writes:
            await asyncio.Event().wait()  # a destination that never drains
        self.written += data
        await self._notify()
        return self.report(len(data))

    async def write_eof(self) -> None:
        self.calls.append("write_eof")
        await self._notify()

    async def close(self) -> None:
        self.calls.append("close")
        await self._notify()

    async def abort(self, reason: str = "") -> None:
        self.calls.append("abort")
        await self._notify()


# ------------------------------------------------- the far ends, fake or TCP


class Side:
    """One end of the relay as the application there sees it."""

    stream: ByteStream

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def receive(self, size: int) -> bytes:
        """Exactly ``size`` bytes that the relay delivered to this end."""
        raise NotImplementedError

    async def receive_eof(self) -> None:
        """Wait until the relay signalled EOF to this end."""
        raise NotImplementedError

    async def assert_broken(self) -> None:
        """The relay aborted this end: the application sees an error."""
        raise NotImplementedError


class FakeSide(Side):
    def __init__(self) -> None:
        self.fake = FakeStream()
        self.stream = self.fake
        self._seen = 0

    async def send(self, data: bytes) -> None:
        self.fake.feed(data)

    async def send_eof(self) -> None:
        self.fake.feed_eof()

    async def receive(self, size: int) -> bytes:
        end = self._seen + size
        await self.fake.until(lambda: len(self.fake.written) >= end)
        data, self._seen = bytes(self.fake.written[self._seen : end]), end
        return data

    async def receive_eof(self) -> None:
        await self.fake.until(lambda: "write_eof" in self.fake.calls)
        assert len(self.fake.written) == self._seen, "unread payload before EOF"

    async def assert_broken(self) -> None:
        await self.fake.until(lambda: "abort" in self.fake.calls)


class TcpSide(Side):
    def __init__(self, app: TcpStream, relayed: TcpStream) -> None:
        self.app = app
        self.stream = relayed

    async def send(self, data: bytes) -> None:
        await bounded(self.app.write(data))

    async def send_eof(self) -> None:
        await self.app.write_eof()

    async def receive(self, size: int) -> bytes:
        received = bytearray()
        while len(received) < size:
            chunk = await bounded(self.app.read(size - len(received)))
            assert chunk, f"EOF after {len(received)} of {size} bytes"
            received += chunk
        return bytes(received)

    async def receive_eof(self) -> None:
        assert await bounded(self.app.read(1)) == b""

    async def assert_broken(self) -> None:
        with pytest.raises(StreamBroken):
            await self._drain()

    async def _drain(self) -> None:
        """Read whatever is left until an error; a clean EOF fails the test."""
        while True:
            assert await bounded(self.app.read(65536)), "clean EOF instead of an error"


@pytest.fixture(params=["fake", "tcp"])
async def sides(request: pytest.FixtureRequest, make_pair: MakePair) -> tuple[Side, Side]:
    """The two far ends, ``a`` and ``b``: in-memory fakes or real TCP connections."""
    if request.param == "fake":
        return FakeSide(), FakeSide()
    app_a, relay_a = await make_pair.tcp()
    app_b, relay_b = await make_pair.tcp()
    return TcpSide(app_a, relay_a), TcpSide(app_b, relay_b)


@pytest.fixture
def fakes() -> tuple[FakeSide, FakeSide]:
    return FakeSide(), FakeSide()


# ------------------------------------------------------------ symmetric runs


@pytest.fixture(params=[False, True], ids=["a,b", "b,a"])
def symmetric(request: pytest.FixtureRequest) -> bool:
    """Whether the relay gets its arguments swapped: (b, a) instead of (a, b)."""
    return bool(request.param)


@dataclasses.dataclass
class Relay:
    """A running copy_bidirectional whose results are reported in (a, b) terms."""

    task: asyncio.Future[tuple[int, int]]
    swapped: bool

    @classmethod
    def start(cls, a: Side, b: Side, swapped: bool, **kwargs: Any) -> Relay:
        if swapped:
            coro = copy_bidirectional(b.stream, a.stream, names=("b", "a"), **kwargs)
        else:
            coro = copy_bidirectional(a.stream, b.stream, names=("a", "b"), **kwargs)
        return cls(asyncio.ensure_future(coro), swapped)

    async def counts(self) -> tuple[int, int]:
        first, second = await bounded(self.task)
        return (second, first) if self.swapped else (first, second)

    async def error(self, kind: type[RelayError] = RelayError) -> RelayError:
        with pytest.raises(kind) as info:
            await bounded(self.task)
        return info.value

    def error_counts(self, error: RelayError) -> tuple[int, int]:
        if self.swapped:
            return error.b_to_a, error.a_to_b
        return error.a_to_b, error.b_to_a

    def error_stream(self, error: RelayError) -> str:
        if self.swapped:
            return {"a": "b", "b": "a"}[error.stream]
        return error.stream


@pytest.fixture
async def running() -> AsyncIterator[list[Relay]]:
    """Relays a test started; any still running at the end is cancelled."""
    relays: list[Relay] = []
    yield relays
    for relay in relays:
        relay.task.cancel()
    await asyncio.gather(*(r.task for r in relays), return_exceptions=True)


# -------------------------------------------------------------- main cases


async def test_exact_counts(
    sides: tuple[Side, Side], symmetric: bool, running: list[Relay]
) -> None:
    """known payloads both ways give exact counts and arrive intact."""
    a, b = sides
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"hello")
    await b.send(b"world!!")
    assert await b.receive(5) == b"hello"
    assert await a.receive(7) == b"world!!"
    await a.send_eof()
    await b.send_eof()
    await b.receive_eof()
    await a.receive_eof()
    assert await relay.counts() == (5, 7)


async def test_exact_counts_large(
    sides: tuple[Side, Side], symmetric: bool, running: list[Relay]
) -> None:
    """a payload of many reads is counted to the byte, in both directions at once."""
    a, b = sides
    up = bytes(range(256)) * 1200  # 307200 bytes: several 64 KiB reads
    down = bytes(reversed(range(256))) * 700
    relay = Relay.start(a, b, symmetric)
    running.append(relay)

    async def upload() -> bytes:
        await a.send(up)
        await a.send_eof()
        return await b.receive(len(up))

    async def download() -> bytes:
        await b.send(down)
        await b.send_eof()
        return await a.receive(len(down))

    assert await bounded(asyncio.gather(upload(), download())) == [up, down]
    await a.receive_eof()
    await b.receive_eof()
    assert await relay.counts() == (len(up), len(down))


async def test_half_close_quux(
    sides: tuple[Side, Side], symmetric: bool, running: list[Relay]
) -> None:
    """after a shuts down, b sending b"quux" gives (0, 4)."""
    a, b = sides
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send_eof()
    await b.receive_eof()
    assert not relay.task.done()
    await b.send(b"quux")
    assert await a.receive(4) == b"quux"
    await b.send_eof()
    await a.receive_eof()
    assert await relay.counts() == (0, 4)


async def test_cancel_aborts_both(
    sides: tuple[Side, Side], symmetric: bool, running: list[Relay]
) -> None:
    """cancelling the relay aborts both streams."""
    a, b = sides
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"x")
    assert await b.receive(1) == b"x"
    relay.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(relay.task)
    await a.assert_broken()
    await b.assert_broken()


async def test_idle_timeout_aborts_both(
    sides: tuple[Side, Side], symmetric: bool, running: list[Relay]
) -> None:
    """no payload for idle_timeout raises IdleTimeout with the counts and aborts both."""
    a, b = sides
    relay = Relay.start(a, b, symmetric, idle_timeout=0.2)
    running.append(relay)
    await a.send(b"x")
    assert await b.receive(1) == b"x"
    error = await relay.error(IdleTimeout)
    assert relay.error_counts(error) == (1, 0)
    assert "idle" in str(error)
    await a.assert_broken()
    await b.assert_broken()


async def test_peer_failure_breaks_the_other_end(
    sides: tuple[Side, Side], symmetric: bool, running: list[Relay]
) -> None:
    """when a's read fails, the relay raises with partial counts and b sees an error."""
    a, b = sides
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"abc")
    await b.send(b"xy")
    assert await b.receive(3) == b"abc"
    assert await a.receive(2) == b"xy"
    if isinstance(a, FakeSide):
        a.fake.fail_read(StreamBroken("connection reset by peer"))
    else:
        assert isinstance(a, TcpSide)
        await a.app.abort("application crashed")  # RST into the relay's a
    error = await relay.error()
    assert relay.error_stream(error) == "a"
    assert error.operation == "read"
    assert relay.error_counts(error) == (3, 2)
    assert isinstance(error.__cause__, StreamBroken)
    await b.assert_broken()


# ------------------------------------------------------ fault injection (fakes)


async def test_blocked_side_does_not_block_the_other(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """a destination that never drains stalls only its own direction."""
    a, b = fakes
    a.fake.stall_writes = True
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await b.send(b"stuck")  # b -> a now hangs in a.write()
    await a.send(b"flows")
    assert await b.receive(5) == b"flows"
    await a.send_eof()
    await b.receive_eof()
    assert not relay.task.done()
    assert a.fake.written == b""


async def test_read_error_ends_relay_at_once(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """a read error ends the relay while the other direction is idle, aborting both."""
    a, b = fakes
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"abc")
    await b.send(b"xy")
    assert await b.receive(3) == b"abc"
    assert await a.receive(2) == b"xy"
    boom = OSError(104, "Connection reset by peer")
    a.fake.fail_read(boom)
    a.fake.feed(b"never relayed")
    a.fake.feed_eof()  # queued behind the error: must never turn into write_eof
    error = await relay.error()
    assert error.__cause__ is boom
    assert relay.error_stream(error) == "a"
    assert error.operation == "read"
    assert relay.error_counts(error) == (3, 2)
    assert a.fake.calls == ["abort"]
    assert b.fake.calls == ["abort"]


async def test_write_error_ends_relay_at_once(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """a write error ends the relay, aborts both and never calls write_eof."""
    a, b = fakes
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await b.send(b"xy")
    assert await a.receive(2) == b"xy"
    boom = StreamBroken("peer closed the WebSocket with 1011")
    b.fake.write_error = boom
    await a.send(b"data")
    await a.send_eof()  # right behind the failing chunk
    error = await relay.error()
    assert error.__cause__ is boom
    assert relay.error_stream(error) == "b"
    assert error.operation == "write"
    assert relay.error_counts(error) == (0, 2)
    assert a.fake.calls == ["abort"]
    assert b.fake.calls == ["abort"]


async def test_no_write_eof_once_the_other_direction_failed(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """an EOF arriving together with the other direction's error is not forwarded."""
    a, b = fakes
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"1")
    await b.send(b"2")
    assert await b.receive(1) == b"1"
    assert await a.receive(1) == b"2"
    # Both reads are pending; the failure and the EOF land in the same instant.
    # Whichever read wakes first, the relay must not half-close after a failure.
    first, second = (b, a) if symmetric else (a, b)
    first.fake.fail_read(StreamBroken("reset"))
    second.fake.feed_eof()
    await relay.error()
    assert "write_eof" not in a.fake.calls
    assert "write_eof" not in b.fake.calls
    assert "abort" in a.fake.calls
    assert "abort" in b.fake.calls


async def test_over_reporting_writer_is_caught(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """a writer reporting more bytes than given ends the relay with an AssertionError cause."""
    a, b = fakes
    b.fake.report = lambda n: n + 2  # e.g. counting a WebSocket header
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"data")
    error = await relay.error()
    assert isinstance(error.__cause__, AssertionError)
    assert relay.error_stream(error) == "b"
    assert error.operation == "write"
    assert relay.error_counts(error) == (0, 0)
    assert a.fake.calls == ["abort"]
    assert b.fake.calls == ["abort"]


async def test_zero_reporting_writer_ends_the_relay(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """a writer that accepts nothing ends the relay instead of spinning forever."""
    a, b = fakes
    b.fake.report = lambda n: 0
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"data")
    error = await relay.error()
    assert relay.error_stream(error) == "b"
    assert error.operation == "write"
    assert b.fake.calls == ["abort"]


async def test_both_eof_closes_gracefully(
    fakes: tuple[FakeSide, FakeSide], symmetric: bool, running: list[Relay]
) -> None:
    """when both sides reach EOF, both streams are closed, never aborted."""
    a, b = fakes
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"ab")
    await a.send_eof()
    await b.send_eof()
    assert await relay.counts() == (2, 0)
    assert a.fake.calls == ["write_eof", "close"]
    assert b.fake.calls == ["write_eof", "close"]


async def test_transfer_states(
    fakes: tuple[FakeSide, FakeSide],
    symmetric: bool,
    running: list[Relay],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """each direction moves RUNNING -> SHUTTING_DOWN -> DONE, in that order."""
    assert [state.name for state in TransferState] == ["RUNNING", "SHUTTING_DOWN", "DONE"]
    visited: dict[str, list[TransferState]] = {}

    class RecordingTransfer(Transfer):
        def __setattr__(self, name: str, value: object) -> None:
            if name == "state":
                assert isinstance(value, TransferState)
                visited.setdefault(self.src_name, []).append(value)
            super().__setattr__(name, value)

    monkeypatch.setattr(relay_module, "Transfer", RecordingTransfer)
    a, b = fakes
    # What the a -> b direction had been through when it called b.write_eof().
    at_write_eof: list[list[TransferState]] = []
    write_eof = b.fake.write_eof

    async def recording_write_eof() -> None:
        at_write_eof.append(list(visited["a"]))
        await write_eof()

    monkeypatch.setattr(b.fake, "write_eof", recording_write_eof)
    relay = Relay.start(a, b, symmetric)
    running.append(relay)
    await a.send(b"up")
    await a.send_eof()
    assert await b.receive(2) == b"up"
    await b.receive_eof()
    assert at_write_eof == [[TransferState.RUNNING, TransferState.SHUTTING_DOWN]]
    assert visited["b"] == [TransferState.RUNNING]
    await b.send_eof()
    assert await relay.counts() == (2, 0)
    expected = [TransferState.RUNNING, TransferState.SHUTTING_DOWN, TransferState.DONE]
    assert visited == {"a": expected, "b": expected}
