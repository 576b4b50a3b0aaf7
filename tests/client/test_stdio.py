"""StdioStream keeps the ByteStream contract over pipes, regular files and terminals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.stream_contract import StreamTraits, applicable, check_byte_stream
from wstun.client.stdio import StdioStream, uses_pipe_transport
from wstun.common.errors import StreamBroken, StreamClosed
from wstun.common.streams import ByteStream

TIMEOUT = 10.0


def read_all(fd: int) -> bytes:
    """Blocking read of ``fd`` to EOF (run in a thread)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def write_and_close(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data``, then close (run in a thread)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


class Pipes:
    """A StdioStream over two pipes, and the far ends: ``feed`` in, ``drain`` out."""

    def __init__(self) -> None:
        self.stream_in, self.feed = os.pipe()
        self.drain, self.stream_out = os.pipe()
        self.stream: StdioStream | None = None

    async def open(self) -> StdioStream:
        self.stream = await StdioStream.from_fds(self.stream_in, self.stream_out)
        return self.stream

    def close_far_ends(self) -> None:
        for fd in (self.feed, self.drain):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
async def pipes() -> AsyncIterator[Pipes]:
    p = Pipes()
    yield p
    if p.stream is not None:
        await p.stream.close()
    p.close_far_ends()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A regular input file with 1 MiB + 1 of data, and an empty output file."""
    source, sink = tmp_path / "in", tmp_path / "out"
    source.write_bytes(os.urandom(1024 * 1024 + 1))
    sink.write_bytes(b"")
    return source, sink


async def open_files(source: Path, sink: Path) -> StdioStream:
    return await StdioStream.from_fds(
        os.open(source, os.O_RDONLY), os.open(sink, os.O_WRONLY | os.O_TRUNC)
    )


async def read_to_eof(stream: StdioStream, size: int = 65536) -> bytes:
    chunks = []
    while chunk := await asyncio.wait_for(stream.read(size), TIMEOUT):
        assert len(chunk) <= size
        chunks.append(chunk)
    return b"".join(chunks)


def test_which_descriptors_use_the_loop() -> None:
    """Pipes go through the loop; regular files, terminals and sockets use threads."""
    r, w = os.pipe()
    a, b = socket.socketpair()
    controller, terminal = os.openpty()
    try:
        assert uses_pipe_transport(r)
        assert uses_pipe_transport(w)
        assert not uses_pipe_transport(a.fileno())
        assert not uses_pipe_transport(terminal)
        with open(__file__, "rb") as regular:
            assert not uses_pipe_transport(regular.fileno())
    finally:
        for fd in (r, w, controller, terminal):
            os.close(fd)
        a.close()
        b.close()


# ------------------------------------------------------------ the contract


async def stall_with_a_big_write(left: ByteStream, right: ByteStream) -> asyncio.Future[object]:
    """More output than the pipe or socket holds, to a peer that doesn't read."""
    writing: asyncio.Future[object] = asyncio.ensure_future(left.write(bytes(8 * 1024 * 1024)))
    await asyncio.sleep(0)  # one loop step: the write is handed to the transport
    return writing


# No reset on a pipe: after abort() the peer reads EOF. No fast path either.
TRAITS = StreamTraits(abort_is_error=False, fast_path=False, stall_close=stall_with_a_big_write)


class StdioPairs:
    """Connected StdioStream pairs, all closed at the end of the test."""

    def __init__(self) -> None:
        self.streams: list[StdioStream] = []

    async def pipes(self) -> tuple[ByteStream, ByteStream]:
        """Two pipes crossed: what one writes the other reads (the loop's pipe transports)."""
        a_in, b_out = os.pipe()
        b_in, a_out = os.pipe()
        return await self._pair((a_in, a_out), (b_in, b_out))

    async def socket(self) -> tuple[ByteStream, ByteStream]:
        """Each end one socket as both input and output (reader and writer threads)."""
        a, b = socket.socketpair()
        with a, b:
            return await self._pair(
                (os.dup(a.fileno()), os.dup(a.fileno())), (os.dup(b.fileno()), os.dup(b.fileno()))
            )

    async def _pair(
        self, first: tuple[int, int], second: tuple[int, int]
    ) -> tuple[ByteStream, ByteStream]:
        one, two = await StdioStream.from_fds(*first), await StdioStream.from_fds(*second)
        self.streams += [one, two]
        return one, two

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.abort("test over")


@pytest.fixture
async def stdio_pairs() -> AsyncIterator[StdioPairs]:
    pairs = StdioPairs()
    try:
        yield pairs
    finally:
        await pairs.aclose()


@pytest.mark.parametrize("check", applicable(TRAITS))
@pytest.mark.parametrize("over", ["pipes", "socket"])
async def test_contract(stdio_pairs: StdioPairs, over: str, check: str) -> None:
    """Each promise of the ByteStream contract, over pipes and over a socket."""
    await check_byte_stream(getattr(stdio_pairs, over), TRAITS, only=[check])


# ------------------------------------------------------------------ pipes


async def test_pipe_read_to_eof_exact(pipes: Pipes) -> None:
    """read() hands out what was written, at most max_bytes at a time, then b"" for good."""
    stream = await pipes.open()
    data = os.urandom(1024 * 1024)
    writer = asyncio.create_task(
        asyncio.to_thread(lambda: (os.write(pipes.feed, data), os.close(pipes.feed)))
    )
    assert await read_to_eof(stream, 1000) == data
    await writer
    assert await stream.read(10) == b""
    assert await stream.read(10) == b""


async def test_pipe_write_then_eof(pipes: Pipes) -> None:
    """write() returns the payload size; write_eof() ends the output: the reader sees EOF."""
    stream = await pipes.open()
    data = os.urandom(3 * 1024 * 1024)
    reader = asyncio.create_task(asyncio.to_thread(read_all, pipes.drain))
    for start in range(0, len(data), 100_000):
        chunk = data[start : start + 100_000]
        assert await stream.write(chunk) == len(chunk)
    await stream.write_eof()
    await stream.write_eof()  # idempotent
    assert await asyncio.wait_for(reader, TIMEOUT) == data


async def test_pipe_half_close_keeps_reading(pipes: Pipes) -> None:
    """After write_eof() the input still flows."""
    stream = await pipes.open()
    await stream.write(b"answer")
    await stream.write_eof()
    assert await asyncio.to_thread(read_all, pipes.drain) == b"answer"
    os.write(pipes.feed, b"still coming")
    os.close(pipes.feed)
    assert await read_to_eof(stream) == b"still coming"


async def test_pipe_cancelled_read_loses_nothing(pipes: Pipes) -> None:
    """Cancelling a waiting read is safe: the data is there for the next one."""
    stream = await pipes.open()
    waiting = asyncio.create_task(stream.read(100))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    os.write(pipes.feed, b"kept")
    assert await asyncio.wait_for(stream.read(100), TIMEOUT) == b"kept"


async def test_pipe_reader_gone_is_broken(pipes: Pipes) -> None:
    """Writing to a pipe nobody reads any more raises StreamBroken, not silence."""
    stream = await pipes.open()
    os.close(pipes.drain)

    async def write_until_broken() -> None:
        for _ in range(100):  # the loss is noticed on the write or soon after it
            await stream.write(b"x" * 65536)

    with pytest.raises(StreamBroken):
        await asyncio.wait_for(write_until_broken(), TIMEOUT)


@pytest.mark.parametrize("end", ["close", "abort"])
async def test_pipe_close_and_abort_end_both_ways(pipes: Pipes, end: str) -> None:
    """close() and abort() close both descriptors; misuse afterwards is StreamClosed."""
    stream = await pipes.open()
    await getattr(stream, end)()
    await getattr(stream, end)()  # idempotent
    assert await asyncio.to_thread(read_all, pipes.drain) == b""  # the output ended
    with pytest.raises(StreamClosed):
        await stream.read(1)
    with pytest.raises(StreamClosed):
        await stream.write(b"x")


async def test_pipe_close_wakes_a_waiting_read(pipes: Pipes) -> None:
    """A read waiting when close() comes ends with StreamClosed."""
    stream = await pipes.open()
    waiting = asyncio.create_task(stream.read(100))
    await asyncio.sleep(0)
    await stream.close()
    with pytest.raises(StreamClosed):
        await asyncio.wait_for(waiting, TIMEOUT)


async def test_write_misuse(pipes: Pipes) -> None:
    """write(b"") is a ValueError; writing after write_eof() is StreamClosed."""
    stream = await pipes.open()
    with pytest.raises(ValueError, match="non-empty"):
        await stream.write(b"")
    with pytest.raises(ValueError, match="positive"):
        await stream.read(0)
    await stream.write_eof()
    with pytest.raises(StreamClosed, match="after write_eof"):
        await stream.write(b"x")


# ------------------------------------------- regular files and terminals (threads)


async def test_files_copy_exact(files: tuple[Path, Path]) -> None:
    """A regular file in, a regular file out: everything read, written and flushed."""
    source, sink = files
    stream = await open_files(source, sink)
    data = await read_to_eof(stream, 50_000)
    assert data == source.read_bytes()
    assert await stream.read(1) == b""
    assert await stream.write(data) == len(data)
    await stream.write_eof()
    await stream.close()
    assert sink.read_bytes() == data


async def test_files_misuse_and_close(files: tuple[Path, Path]) -> None:
    """The same contract in thread mode: StreamClosed after write_eof and after close."""
    stream = await open_files(*files)
    await stream.write_eof()
    with pytest.raises(StreamClosed):
        await stream.write(b"x")
    await stream.close()
    await stream.close()
    with pytest.raises(StreamClosed):
        await stream.read(1)


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal in raw mode: (controller, terminal)."""
    controller, term = os.openpty()
    tty.setraw(term)
    yield controller, term
    with contextlib.suppress(OSError):
        os.close(controller)


async def test_terminal_cancelled_read_loses_nothing(
    terminal: tuple[int, int], tmp_path: Path
) -> None:
    """A terminal is read in a thread; a read cancelled while it waits loses nothing."""
    controller, term = terminal
    stream = await StdioStream.from_fds(term, os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT))
    waiting = asyncio.create_task(stream.read(3))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    os.write(controller, b"typed")
    assert await asyncio.wait_for(stream.read(3), TIMEOUT) == b"typ"
    assert await asyncio.wait_for(stream.read(3), TIMEOUT) == b"ed"
    await stream.close()  # doesn't wait for the thread blocked on the terminal


async def test_one_socket_as_input_and_output() -> None:
    """A socket as both stdin and stdout (inetd, socat): half-close works both ways."""
    far, near = socket.socketpair()
    with far:
        stream = await StdioStream.from_fds(os.dup(near.fileno()), os.dup(near.fileno()))
        near.close()
        data = os.urandom(1024 * 1024)
        far_reader = asyncio.create_task(asyncio.to_thread(read_all, far.fileno()))
        assert await stream.write(data) == len(data)
        await stream.write_eof()  # shutdown(SHUT_WR): far reads EOF, our input stays open
        assert await asyncio.wait_for(far_reader, TIMEOUT) == data
        await asyncio.to_thread(far.sendall, b"late answer")
        far.shutdown(socket.SHUT_WR)
        assert await read_to_eof(stream) == b"late answer"
        await stream.close()
