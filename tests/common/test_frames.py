"""Whole binary frames read off a chunk: exactly what websockets would have parsed.

Two levels: ``take_binary_frames`` alone against websockets' own frame
parser, and a receiving connection fed the same chunks with the fast path
on and off, which must end the same: the same payloads to the hook, the
same messages left for ``recv()``, the same frames written back (pongs,
close frames) and the same state.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol, Side
from websockets.speedups import apply_mask
from websockets.streams import StreamReader

from wstun.common.streams import WS_MAX_SIZE
from wstun.common.streams.frames import take_binary_frames
from wstun.common.streams.internals import TunnelConnection

# ------------------------------------------------------- take_binary_frames


def raw_frame(
    payload: bytes,
    *,
    first: int = 0x82,
    masked: bool,
    length: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """A frame byte by byte: ``first`` is FIN/RSV/opcode, ``length`` may lie."""
    n = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4) if key is None else key
    return header + key + apply_mask(payload, key)


def websockets_frames(wire: bytes, *, masked: bool) -> list[Frame]:
    """The whole frames websockets' own parser reads from ``wire``."""
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=masked, max_size=None, extensions=[])
        try:
            next(parser)
        except StopIteration as stop:
            frames.append(stop.value)
        except Exception:  # EOF or a frame websockets refuses: the end either way
            return frames


def take(wire: bytes, *, masked: bool, max_size: int = WS_MAX_SIZE) -> tuple[int, list[bytes]]:
    got: list[bytes] = []

    def sink(payload: bytes) -> bool:
        got.append(payload)
        return True

    taken = take_binary_frames(
        wire, unmask=apply_mask if masked else None, max_size=max_size, sink=sink
    )
    return taken, got


MASKING = pytest.mark.parametrize("masked", [False, True], ids=["from-server", "from-client"])


@MASKING
@pytest.mark.parametrize("size", [1, 2, 125, 126, 127, 65535, 65536, 300_000])
def test_every_length_form_is_read(masked: bool, size: int) -> None:
    """7-bit, 16-bit and 64-bit lengths, at their edges: the payload websockets reads."""
    payload = os.urandom(size)
    wire = raw_frame(payload, masked=masked) * 2
    taken, got = take(wire, masked=masked)
    assert taken == len(wire)
    assert got == [f.data for f in websockets_frames(wire, masked=masked)] == [payload, payload]


@MASKING
@pytest.mark.parametrize(
    ("first", "payload"),
    [
        pytest.param(0x81, b"text", id="text"),
        pytest.param(0x89, b"ping", id="ping"),
        pytest.param(0x88, b"", id="close"),
        pytest.param(0x02, b"part", id="not-fin"),
        pytest.param(0x80, b"cont", id="continuation"),
        pytest.param(0xC2, b"rsv1", id="rsv1"),
        pytest.param(0x92, b"rsv3", id="rsv3"),
        pytest.param(0x82, b"", id="empty"),
    ],
)
def test_stops_at_the_first_frame_it_does_not_take(
    masked: bool, first: int, payload: bytes
) -> None:
    """Everything from that frame on is left, whatever follows it."""
    head = raw_frame(b"before", masked=masked)
    stop = raw_frame(payload, first=first, masked=masked)
    tail = raw_frame(b"after", masked=masked)
    assert take(head + stop + tail, masked=masked) == (len(head), [b"before"])


@MASKING
@pytest.mark.parametrize("size", [1, 200, 70_000])
def test_a_frame_cut_anywhere_is_left(masked: bool, size: int) -> None:
    """Cut in its first byte, its length, its mask key or its payload: left whole."""
    head = raw_frame(b"before", masked=masked)
    frame = raw_frame(os.urandom(size), masked=masked)
    for end in range(1, len(frame)):
        if end > 20 and end % 997:
            continue  # every header and key position, and a sample of the payload
        assert take(head + frame[:end], masked=masked) == (len(head), [b"before"])


@MASKING
def test_wrong_masking_is_left_to_websockets(masked: bool) -> None:
    """A server must get masked frames and a client unmasked ones (RFC 6455 5.1)."""
    wrong = raw_frame(b"payload", masked=not masked)
    assert take(wrong, masked=masked) == (0, [])
    assert websockets_frames(wrong, masked=masked) == []  # websockets refuses it too


@MASKING
def test_a_frame_over_max_size_is_left(masked: bool) -> None:
    """websockets answers it with 1009; the fast path never takes it."""
    fits = raw_frame(b"x" * 100, masked=masked)
    wire = fits + raw_frame(b"y" * 101, masked=masked)
    assert take(wire, masked=masked, max_size=100) == (len(fits), [b"x" * 100])


def test_a_huge_64_bit_length_is_left() -> None:
    """A length beyond any buffer is never read as one."""
    wire = b"\x82\x7f" + struct.pack("!Q", 1 << 63) + b"x" * 10
    assert take(wire, masked=False) == (0, [])


@MASKING
def test_a_refused_payload_stops_the_taking(masked: bool) -> None:
    """The hook said no: that frame and the rest stay, in order, for websockets."""
    wire = b"".join(raw_frame(p, masked=masked) for p in (b"one", b"two", b"three"))
    offered: list[bytes] = []

    def sink(payload: bytes) -> bool:
        offered.append(payload)
        return payload != b"two"

    taken = take_binary_frames(
        wire, unmask=apply_mask if masked else None, max_size=WS_MAX_SIZE, sink=sink
    )
    assert offered == [b"one", b"two"]
    assert taken == len(raw_frame(b"one", masked=masked))


@MASKING
@pytest.mark.parametrize("seed", range(6))
def test_random_streams_match_websockets(masked: bool, seed: int) -> None:
    """Random runs of frames: what is taken is websockets' frames, up to the first other one."""
    rng = random.Random(seed)
    for _ in range(50):
        frames = [random_frame(rng) for _ in range(rng.randrange(1, 12))]
        wire = b"".join(f.serialize(mask=masked) for f in frames)
        wire = wire[: rng.randrange(len(wire) + 1)] if rng.random() < 0.3 else wire
        taken, got = take(wire, masked=masked)
        parsed = websockets_frames(wire, masked=masked)
        expected = []
        for frame in parsed:
            if frame.opcode is not Opcode.BINARY or not frame.fin or not frame.data:
                break
            expected.append(frame.data)
        assert got == expected
        assert taken == sum(len(f.serialize(mask=masked)) for f in frames[: len(expected)])


def random_frame(rng: random.Random) -> Frame:
    kind = rng.random()
    if kind < 0.7:
        size = rng.choice([1, 3, 125, 126, 200, 65535, 65536, 70_000])
        return Frame(Opcode.BINARY, rng.randbytes(size))
    if kind < 0.8:
        return Frame(Opcode.PING, rng.randbytes(rng.randrange(10)))
    if kind < 0.9:
        return Frame(Opcode.BINARY, rng.randbytes(5), fin=False)
    return Frame(Opcode.BINARY, b"")


# ------------------------------------------------ a receiving connection


class Observed:
    """What one receiving connection did with the chunks it was given."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []
        self.queued: list[bytes | str] = []
        self.sent: list[tuple[Opcode, bytes]] = []
        self.state = ""
        self.close_code: int | None = None
        #: Chunks websockets' own parser was given.
        self.fed = 0


async def receive(side: Side, chunks: list[bytes], *, fast: bool, refuse: bytes) -> Observed:
    """Feed ``chunks`` to a connection of ``side``, as its transport would, one by one.

    The connection runs on a real socket pair; the other end reads what it
    wrote back. Payloads starting with ``refuse`` are refused by the hook, as
    WebSocketStream's hook refuses while read() isn't waiting.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    connection = Receiver(CountingProtocol(side, max_size=WS_MAX_SIZE), ping_interval=None)
    if not fast:
        connection.disable_fast_path()
    seen = Observed()

    def sink(payload: bytes) -> bool:
        if payload.startswith(refuse):
            return False
        seen.taken.append(payload)
        return True

    connection.payload_sink = sink
    await loop.connect_accepted_socket(lambda: connection, ours)
    try:
        for chunk in chunks:
            connection.data_received(chunk)
        seen.state = connection.protocol.state.name
        close = connection.protocol.close_sent
        seen.close_code = close.code if close is not None else None
        seen.fed = connection.fed
        connection.transport.close()
        wire = b""
        while data := await loop.sock_recv(theirs, 65536):
            wire += data
        while True:  # the messages queued for recv(), until it says closed
            try:
                seen.queued.append(await asyncio.wait_for(connection.recv(), 5))
            except ConnectionClosed:
                break
    finally:
        connection.transport.abort()
        theirs.close()
    seen.sent = [
        (f.opcode, bytes(f.data)) for f in websockets_frames(wire, masked=side is Side.CLIENT)
    ]
    return seen


class CountingProtocol(Protocol):
    """websockets' protocol, counting the chunks its parser is given."""

    fed = 0

    def receive_data(self, data: bytes | bytearray) -> None:
        self.fed += 1
        super().receive_data(data)


class Receiver(TunnelConnection):
    """A tunnel connection already open (no handshake), for feeding chunks."""

    @property
    def fed(self) -> int:
        assert isinstance(self.protocol, CountingProtocol)
        return self.protocol.fed

    def disable_fast_path(self) -> None:
        self._frame_parser = None


def cut(wire: bytes, rng: random.Random) -> Iterator[bytes]:
    pos = 0
    while pos < len(wire):
        step = rng.choice([1, 2, 5, 17, 130, 4096, 70_000, len(wire)])
        yield wire[pos : pos + step]
        pos += step


def stream_wire(rng: random.Random, *, masked: bool) -> bytes:
    """A run of frames a tunnel may get: mostly binary, with pings, pongs,
    fragments, an EOF marker, now and then something websockets refuses, and
    sometimes a close at the end."""
    frames: list[Frame | bytes] = []
    for _ in range(rng.randrange(1, 40)):
        roll = rng.random()
        if roll < 0.6:
            frames.append(
                Frame(Opcode.BINARY, rng.randbytes(rng.choice([1, 7, 126, 3000, 66_000])))
            )
        elif roll < 0.7:
            frames.append(Frame(Opcode.PING, rng.randbytes(rng.randrange(8))))
        elif roll < 0.75:
            frames.append(Frame(Opcode.PONG, b"pong"))
        elif roll < 0.83:
            frames.append(Frame(Opcode.BINARY, b"frag-" + rng.randbytes(3), fin=False))
            frames.append(Frame(Opcode.CONT, rng.randbytes(4)))
        elif roll < 0.85:  # a new message inside a fragmented one: 1002
            frames.append(Frame(Opcode.BINARY, b"frag-" + rng.randbytes(3), fin=False))
            frames.append(Frame(Opcode.BINARY, rng.randbytes(9)))
        elif roll < 0.9:
            frames.append(Frame(Opcode.BINARY, b""))
        elif roll < 0.93:
            frames.append(Frame(Opcode.TEXT, b"text"))
        elif roll < 0.95:
            frames.append(b"rsv2")  # written raw below: websockets won't serialize it
        elif roll < 0.97:
            frames.append(Frame(Opcode.BINARY, b"r-" + rng.randbytes(2)))  # refused by the hook
        else:
            frames.append(Frame(Opcode.CONT, b"stray"))
    if rng.random() < 0.3:
        frames.append(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
        frames.append(Frame(Opcode.BINARY, b"after close"))
    return b"".join(
        raw_frame(f, first=0xA2, masked=masked)
        if isinstance(f, bytes)
        else f.serialize(mask=masked)
        for f in frames
    )


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
@pytest.mark.parametrize("seed", range(8))
async def test_a_connection_ends_the_same_with_and_without_the_fast_path(
    side: Side, seed: int
) -> None:
    """Same chunks, cut anywhere: same payloads taken, messages queued, frames sent, state."""
    rng = random.Random(seed)
    for _ in range(6):
        wire = stream_wire(rng, masked=side is Side.SERVER)
        chunks = list(cut(wire, rng))
        fast = await receive(side, chunks, fast=True, refuse=b"r-")
        slow = await receive(side, chunks, fast=False, refuse=b"r-")
        assert vars(fast) | {"fed": 0} == vars(slow) | {"fed": 0}
        assert fast.fed <= slow.fed


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
async def test_data_ping_data_close_in_one_chunk(side: Side) -> None:
    """The ping between two messages is answered, both messages are taken in
    order, and the close behind them closes."""
    masked = side is Side.SERVER
    wire = b"".join(
        f.serialize(mask=masked)
        for f in (
            Frame(Opcode.BINARY, b"first"),
            Frame(Opcode.PING, b"are you there"),
            Frame(Opcode.BINARY, b"second"),
            Frame(Opcode.CLOSE, Close(1000, "done").serialize()),
        )
    )
    seen = await receive(side, [wire], fast=True, refuse=b"\xff")
    assert seen.taken == [b"first", b"second"]
    assert seen.sent[0] == (Opcode.PONG, b"are you there")
    assert seen.sent[1] == (Opcode.CLOSE, Close(1000, "done").serialize())
    assert seen.close_code == 1000


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
async def test_a_too_large_message_still_gets_1009(side: Side) -> None:
    """The fast path leaves a frame over max_size to websockets, which closes with 1009."""
    masked = side is Side.SERVER
    wire = Frame(Opcode.BINARY, b"ok").serialize(mask=masked) + Frame(
        Opcode.BINARY, b"x" * (WS_MAX_SIZE + 1)
    ).serialize(mask=masked)
    seen = await receive(side, [wire], fast=True, refuse=b"\xff")
    assert seen.taken == [b"ok"]
    assert seen.close_code == 1009


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
async def test_whole_binary_frames_skip_websockets_parser(side: Side) -> None:
    """Chunks of whole binary frames never reach websockets' parser; the first
    chunk that ends inside a frame does, and so does the next one, which
    finishes it; after that the fast path takes over again."""
    masked = side is Side.SERVER
    frame = Frame(Opcode.BINARY, b"x" * 300).serialize(mask=masked)
    chunks = [frame, frame * 3, frame + frame[:10], frame[10:], frame, frame * 2]
    seen = await receive(side, chunks, fast=True, refuse=b"\xff")
    assert seen.taken == [b"x" * 300] * 9
    assert seen.fed == 2
    assert seen.sent == []
    assert seen.state == "OPEN"


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
async def test_a_payload_that_looks_like_a_frame_is_payload(side: Side) -> None:
    """A tunnel may carry WebSocket frames (a tunnelled WebSocket). A chunk that
    starts inside a frame's payload is payload, however much it looks like a
    frame: websockets' parser is mid-frame then, and gets it."""
    masked = side is Side.SERVER
    inner = raw_frame(b"inner", masked=False) * 3
    outer = raw_frame(inner, masked=masked, key=b"\x00" * 4)  # a zero key leaves it as it is
    header = len(outer) - len(inner)
    seen = await receive(side, [outer[:header], outer[header:]], fast=True, refuse=b"\xff")
    assert seen.taken == [inner]
    assert seen.state == "OPEN"


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
@pytest.mark.parametrize("together", [True, False], ids=["one-chunk", "two-chunks"])
async def test_a_new_message_inside_a_fragmented_one_is_1002(side: Side, together: bool) -> None:
    """A whole binary frame while a fragmented message is unfinished is a
    protocol error, also when it arrives on its own at a frame boundary."""
    masked = side is Side.SERVER
    start = Frame(Opcode.BINARY, b"part", fin=False).serialize(mask=masked)
    whole = Frame(Opcode.BINARY, b"whole").serialize(mask=masked)
    chunks = [start + whole] if together else [start, whole]
    seen = await receive(side, chunks, fast=True, refuse=b"\xff")
    assert seen.taken == []
    assert seen.close_code == 1002


@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER], ids=["client", "server"])
async def test_nothing_is_taken_after_a_close_frame(side: Side) -> None:
    """After the peer's close frame, websockets discards what follows (RFC 6455
    5.5.1); a binary frame in a later chunk is not a message either."""
    masked = side is Side.SERVER
    close = Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=masked)
    late = Frame(Opcode.BINARY, b"late").serialize(mask=masked)
    seen = await receive(side, [close, late], fast=True, refuse=b"\xff")
    assert seen.taken == []
    assert seen.queued == []
    assert seen.sent == [(Opcode.CLOSE, Close(1000, "bye").serialize())]
