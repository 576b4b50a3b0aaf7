"""The chunk reader parses exactly what websockets' own StreamReader parses."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from wstun.common.streams import ChunkReader

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 262144, 300001]


def pieces(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` cut at random places, with runs of 1-byte pieces among them."""
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 1, 2, 3, 7, 100, 4096, 65536, 262144])
        yield data[pos : pos + step]
        pos += step


def drive(
    reader: StreamReader, parse: Callable[[], Generator[None, None, Any]], feed: Iterator[bytes]
) -> list[Any]:
    """Run ``parse`` repeatedly, feeding ``reader`` a piece whenever it waits; EOF at the end."""
    results: list[Any] = []
    while True:
        gen = parse()
        try:
            while True:
                next(gen)
                piece = next(feed, None)
                if piece is None:
                    if reader.eof:
                        return results
                    reader.feed_eof()
                else:
                    reader.feed_data(piece)
        except StopIteration as stop:
            results.append(stop.value)
        except EOFError:
            return results


@pytest.mark.parametrize("mask", [False, True], ids=["from-server", "from-client"])
@pytest.mark.parametrize("seed", range(4))
def test_frames_parse_the_same_as_websockets(mask: bool, seed: int) -> None:
    """Frames of every length class, cut anywhere, come out as websockets' reader gives them."""
    rng = random.Random(seed)
    frames = [Frame(Opcode.BINARY, os.urandom(n)) for n in rng.sample(SIZES, len(SIZES))]
    frames.append(Frame(Opcode.PING, b"ping"))
    wire = b"".join(f.serialize(mask=mask, extensions=[]) for f in frames)
    parsed = []
    for reader_class in (StreamReader, ChunkReader):
        reader = reader_class()
        feed = pieces(wire, random.Random(seed))

        def parse(reader: StreamReader = reader) -> Generator[None, None, Frame]:
            frame = yield from Frame.parse(reader.read_exact, mask=mask)
            return frame

        parsed.append([(f.opcode, bytes(f.data), f.fin) for f in drive(reader, parse, feed)])
    assert parsed[1] == parsed[0]
    assert len(parsed[1]) == len(frames)


def test_lines_and_rest_as_websockets_reads_them() -> None:
    """read_line, then read_exact, then read_to_eof: same bytes as the stock reader."""
    wire = b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n" + os.urandom(1000)
    results = []
    for reader_class in (StreamReader, ChunkReader):
        reader = reader_class()
        for piece in pieces(wire, random.Random(1)):
            reader.feed_data(piece)
        reader.feed_eof()
        got = []
        for _ in range(3):
            gen = reader.read_line(8192)
            with pytest.raises(StopIteration) as line:
                next(gen)
            got.append(bytes(line.value.value))
        gen2 = reader.read_exact(10)
        with pytest.raises(StopIteration) as exact:
            next(gen2)
        got.append(bytes(exact.value.value))
        gen3 = reader.read_to_eof(1 << 20)
        with pytest.raises(StopIteration) as rest:
            next(gen3)
        got.append(bytes(rest.value.value))
        results.append(got)
    assert results[1] == results[0]
    assert b"".join(results[1]) == wire


def test_errors_match_websockets() -> None:
    """A short stream and an over-long line fail the same way as the stock reader."""
    for reader_class in (StreamReader, ChunkReader):
        reader = reader_class()
        reader.feed_data(b"abc")
        reader.feed_eof()
        with pytest.raises(EOFError, match="stream ends after 3 bytes, expected 5 bytes"):
            next(reader.read_exact(5))
        with pytest.raises(EOFError, match="stream ended"):
            reader.feed_data(b"x")
        long_line = reader_class()
        long_line.feed_data(b"x" * 100)
        with pytest.raises(RuntimeError, match="read 100 bytes, expected no more than 10"):
            next(long_line.read_line(10))
