"""Everything wstun uses of websockets beyond its documented API, in one module.

The documented API (``serve``, ``connect``, ``recv``, ``send``, ``close``,
``ping``, ``process_request``, ``respond``, ``Request``, ``Response``) is
used anywhere. These are not promised and may move in any release:

- reading: ``Protocol.reader``/``parser``/``parse()``, replaced by a
  :class:`ChunkReader` and started again before the first byte
  (:func:`install_chunk_reader`); ``websockets.streams.StreamReader``'s
  generator interface (``read_line``, ``read_exact``, ``read_to_eof``,
  ``at_eof``, ``feed_data``, ``feed_eof``, ``discard``, ``eof``,
  ``buffer``), which ChunkReader implements; ``Connection.data_received()``
  and ``process_event()``, wrapped to stamp arrivals and feed the relay's
  sink; the assembler ``Connection.recv_messages`` and its ``paused``,
  ``get_in_progress`` and ``frames``.
- reading whole binary frames without the parser (:class:`TunnelConnection`):
  that ``Protocol.parse()`` asks ``reader.at_eof()`` before each frame (and
  ``discard()`` does, once ``Protocol.parser`` is replaced when closing);
  ``Protocol.parser``, ``current_size``, ``max_message_size``,
  ``max_fragment_size`` and ``debug``.
- writing (:func:`write_frame_now`): ``Connection.transport``, ``paused``,
  ``drain()``, ``send_in_progress``;
  ``Protocol.writes``, ``expect_continuation_frame``, ``extensions``;
  ``websockets.speedups.apply_mask`` (or ``websockets.utils``').
- closing: ``Connection.connection_lost_waiter``,
  ``Connection.protocol.close_exc``.
- the client's proxy from the environment, looked up once rather than on
  every ``connect(proxy=True)`` (:func:`environment_proxy`):
  ``websockets.proxy.get_proxy`` and ``websockets.uri.parse_uri``.
- the server's handshake: its ``ServerProtocol`` gets its class swapped for
  a subclass whose ``send_response()`` and ``send_eof()`` route every answer
  through the server (:func:`route_answers`), reading ``handshake_exc``,
  ``state`` and ``CONNECTING``; ``Request.method``/``protocol`` exist from
  17 on, before which parsing refuses anything but ``GET ... HTTP/1.1`` with
  the messages in :func:`parse_failure` (which reads ``MAX_NUM_HEADERS``).

:func:`missing` says which of these a live connection of the installed
release lacks; the tests run it on both sides, so a release that moves one
fails with its name.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import struct
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.frames import Frame, Opcode
from websockets.http11 import MAX_NUM_HEADERS, Request, Response
from websockets.protocol import CONNECTING, Event, Protocol, Side, State
from websockets.proxy import get_proxy
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from wstun.common.streams.chunk_reader import ChunkReader
from wstun.common.streams.frames import FIN_BINARY, take_binary_frames

__all__ = [
    "TLS_RECORD_START",
    "ParseFailure",
    "ParseProblem",
    "ServerAnswers",
    "TunnelClientConnection",
    "TunnelConnection",
    "TunnelServerConnection",
    "close_exception",
    "close_or_drop",
    "drain",
    "drop",
    "install_chunk_reader",
    "lost_waiter",
    "missing",
    "parse_failure",
    "reading_paused",
    "recv_waits_on_nothing",
    "request_line",
    "route_answers",
    "send_message",
    "transport_closing",
    "write_frame_now",
    "write_now",
    "write_paused",
]

# ------------------------------------------------------------------ reading


def install_chunk_reader(protocol: Protocol) -> None:
    """Give a fresh websockets protocol the chunk reader, before any byte arrives.

    The parser generator was started on the stock reader; it has consumed
    nothing yet, so it is simply started again on the new one.
    """
    if type(protocol.reader) is StreamReader and not protocol.reader.buffer:
        protocol.reader = ChunkReader()
        protocol.parser = protocol.parse()
        next(protocol.parser)


_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


class TunnelConnection(Connection):
    """What wstun adds to websockets' connections, on both sides.

    - Liveness: every byte received is timestamped, so any frame counts as
      proof of life (``last_received``, ``wait_received``).
    - The chunk reader, installed before any byte arrives.
    - ``payload_sink``: WebSocketStream's hook that takes the payload of a
      single-frame binary message as it is parsed, while its read() waits
      with nothing queued.
    - ``idle_hook``: while a reusable WebSocket waits for its next tunnel, no
      message may come; any data frame is dropped and the hook told
      ("payload" or "a control message"), with no task waiting in recv().
    - While the hook is set and websockets' parser waits at a frame boundary
      (the chunk reader says so), the whole binary frames at the start of a
      received chunk are read by :func:`take_binary_frames` and go to the
      hook directly; websockets parses whatever is left, as before. Only
      while the connection is open, no fragmented message is being received,
      no extension is in use and websockets doesn't log frames.

    A base placed before websockets' ServerConnection/ClientConnection, so
    its overrides wrap theirs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        install_chunk_reader(self.protocol)
        self.last_received = self.loop.time()
        self._rx_waiter: asyncio.Future[None] | None = None
        self.payload_sink: Callable[[bytes], bool] | None = None
        self.idle_hook: Callable[[str], None] | None = None
        protocol = self.protocol
        # The frame parser the fast path stands in for, while it is the one
        # running (websockets swaps it for discard() once closing).
        self._frame_parser = protocol.parser if isinstance(protocol.reader, ChunkReader) else None
        self._unmask = apply_mask if protocol.side is Side.SERVER else None
        limits = [n for n in (protocol.max_message_size, protocol.max_fragment_size) if n]
        self._fast_max_size = min(limits, default=1 << 63)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        sink = self.payload_sink
        if sink is not None and self._at_frame_boundary():
            taken = take_binary_frames(
                data, unmask=self._unmask, max_size=self._fast_max_size, sink=sink
            )
            if taken == len(data):
                return
            data = data[taken:]
        super().data_received(data)

    def _at_frame_boundary(self) -> bool:
        """websockets' frame parser waits for the first byte of a frame, and
        would hand a binary frame to process_event unchanged."""
        protocol = self.protocol
        reader = protocol.reader
        return (
            protocol.parser is self._frame_parser
            and isinstance(reader, ChunkReader)
            and reader.at_boundary
            and protocol.state is State.OPEN
            and protocol.current_size is None
            and not protocol.extensions
            and not protocol.debug
        )

    def process_event(self, event: Event) -> None:
        idle = self.idle_hook
        if idle is not None and isinstance(event, Frame) and event.opcode in _DATA_OPCODES:
            idle("a control message" if event.opcode is Opcode.TEXT else "payload")
            return
        sink = self.payload_sink
        if (
            sink is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and event.data
            and sink(bytes(event.data))
        ):
            return
        super().process_event(event)

    async def wait_received(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for any bytes from the peer."""
        self._rx_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._rx_waiter), timeout)
        except TimeoutError:
            pass
        finally:
            self._rx_waiter = None


#: How a TLS handshake starts: a handshake record (22), TLS major version 3.
TLS_RECORD_START = b"\x16\x03"


class TunnelServerConnection(TunnelConnection, ServerConnection):
    """websockets' server connection plus liveness stamps.

    A TLS ClientHello as the first bytes of a plain connection is not fed to
    the HTTP parser: :meth:`tls_handshake_received` is told, and the
    connection dropped (no answer can be read by a client speaking TLS).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_bytes = True

    def data_received(self, data: bytes) -> None:
        if self._first_bytes:
            self._first_bytes = False
            if self.protocol.state is CONNECTING and data.startswith(TLS_RECORD_START):
                self.tls_handshake_received()
                drop(self)
                return
        super().data_received(data)

    def tls_handshake_received(self) -> None:
        """A client began a TLS handshake on this plain connection (override to tell)."""


class TunnelClientConnection(TunnelConnection, ClientConnection):
    """websockets' client connection plus liveness stamps."""


def reading_paused(connection: Connection) -> bool:
    """websockets stopped reading the socket: its queue of received frames is full."""
    return bool(connection.recv_messages.paused)


def recv_waits_on_nothing(connection: Connection) -> bool:
    """A ``recv()`` is waiting and no frame of a message is queued before the next."""
    assembler = connection.recv_messages
    return bool(getattr(assembler, "get_in_progress", False)) and not len(assembler.frames)


# ------------------------------------------------------------------ writing

_HEADER_SHORT = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _frame_header(first: int, length: int, mask_bit: int) -> bytes:
    """FIN and opcode (``first``), the mask bit and the payload length (RFC 6455 5.2)."""
    if length < 126:
        return _HEADER_SHORT.pack(first, mask_bit | length)
    if length < 65536:
        return _HEADER_16.pack(first, mask_bit | 126, length)
    return _HEADER_64.pack(first, mask_bit | 127, length)


# FIN plus the opcode of a text frame (a binary one's is FIN_BINARY).
_FIN_TEXT = 0x81


def write_frame_now(connection: Connection, data: bytes | str) -> bool:
    """Write ``data`` as one frame (binary, or text for a str) straight to the
    transport, if allowed now.

    Allowed when websockets itself would only serialize the frame and write
    it: the connection is open, nothing of its own waits to be written (so
    frames stay in order), no message is being sent in fragments and no
    extension transforms frames. Then header and payload go out in one
    vectored write: the payload is not copied (servers) or copied once by the
    mask (clients, RFC 6455 section 5.3). False: nothing was written.
    """
    protocol = connection.protocol
    if (
        protocol.state is not State.OPEN
        or protocol.writes
        or protocol.expect_continuation_frame
        or protocol.extensions
        or connection.send_in_progress is not None
    ):
        return False
    first = FIN_BINARY
    if isinstance(data, str):
        first, data = _FIN_TEXT, data.encode()
    if protocol.side is Side.CLIENT:
        mask = secrets.token_bytes(4)
        connection.transport.writelines(
            (_frame_header(first, len(data), 0x80), mask, apply_mask(data, mask))
        )
    else:
        connection.transport.writelines((_frame_header(first, len(data), 0), data))
    return True


def write_now(connection: Connection, message: bytes | str) -> bool:
    """:func:`write_frame_now` while the transport takes more; False: nothing written."""
    return not connection.paused and write_frame_now(connection, message)


async def send_message(connection: Connection, message: bytes | str) -> None:
    """Send one message as ``send()`` would, but straight to the transport
    (:func:`write_now`) when nothing stands in the way: the transport takes
    more, and websockets has nothing of its own to write first.
    Raises ConnectionClosed as ``send()`` does."""
    if not write_now(connection, message):
        await connection.send(message)


def write_paused(connection: Connection) -> bool:
    """The transport asked websockets to stop writing (its buffer is full)."""
    return bool(connection.paused)


async def drain(connection: Connection) -> None:
    """Wait until the transport takes more; raises when the connection is lost."""
    await connection.drain()


def drop(connection: Connection) -> None:
    """Drop the TCP connection at once, without a closing handshake."""
    connection.transport.abort()


async def close_or_drop(connection: Connection, code: int, reason: str) -> None:
    """The closing handshake, 2 s at most; after that, on any failure, or when
    cancelled, the TCP connection is dropped (so no socket outlives its owner)."""
    try:
        await asyncio.wait_for(connection.close(code, reason[:120]), 2.0)
    except asyncio.CancelledError:
        drop(connection)
        raise
    except Exception:  # a timeout, or the connection already broken
        drop(connection)


def transport_closing(connection: Connection) -> bool:
    """The TCP connection is closing or gone."""
    return bool(connection.transport.is_closing())


def close_exception(connection: Connection) -> ConnectionClosed:
    """The ConnectionClosed a send() or recv() on ``connection`` raises now."""
    return connection.protocol.close_exc


def lost_waiter(connection: Connection) -> asyncio.Future[None]:
    """Completed when the TCP connection is gone."""
    waiter: asyncio.Future[None] = connection.connection_lost_waiter
    return waiter


# ------------------------------------------------------ the server's handshake


def request_line(request: Request) -> tuple[str, str]:
    """The method and HTTP version (before 17 only ``GET`` and ``HTTP/1.1`` get here)."""
    return str(getattr(request, "method", "GET")), str(getattr(request, "protocol", "HTTP/1.1"))


class ParseProblem(enum.Enum):
    """Why a request could not be parsed, the same on every release; with it
    goes a short detail that never quotes the request."""

    WRONG_METHOD = "wrong method"
    HTTP_1_0 = "HTTP/1.0"
    REQUEST_LINE_TOO_LONG = "request line too long"
    HEADER_LINE_TOO_LONG = "header line too long"
    TOO_MANY_HEADERS = "too many headers"
    NOT_ASCII = "not ASCII"
    MALFORMED = "malformed"


#: A parse failure: its kind and a short detail.
ParseFailure = tuple[ParseProblem, str]

# What websockets before 17 raises while parsing, for what 17 parses and
# answers itself (414, 431) or leaves to the server (the method, HTTP/1.0).
_OLD_METHOD_ERROR = "unsupported HTTP method; expected GET; got "
_OLD_PROTOCOL_ERROR = "unsupported protocol; expected HTTP/1.1: "
_OLD_LINE_TOO_LONG = "line too long"
_OLD_TOO_MANY_HEADERS = "too many HTTP headers"


def parse_failure(cause: BaseException | None, lines_read: int) -> ParseFailure:
    """What was wrong with a request websockets could not parse.

    ``lines_read`` is how many whole lines the reader had handed out, to tell
    a request line that is too long from a header line.
    """
    text = str(cause) if cause is not None else ""
    if text.startswith(_OLD_METHOD_ERROR):
        return (ParseProblem.WRONG_METHOD, "")
    if text.startswith(_OLD_PROTOCOL_ERROR) and text.endswith(" HTTP/1.0"):
        return (ParseProblem.HTTP_1_0, "")
    if text == _OLD_LINE_TOO_LONG and cause is not None:
        # ChunkReader's own words on the limit are the exception's context.
        detail = str(cause.__context__ or text)
        if lines_read == 0:
            return (ParseProblem.REQUEST_LINE_TOO_LONG, detail)
        return (ParseProblem.HEADER_LINE_TOO_LONG, detail)
    if text == _OLD_TOO_MANY_HEADERS:
        detail = f"expected no more than {MAX_NUM_HEADERS} headers"
        return (ParseProblem.TOO_MANY_HEADERS, detail)
    if isinstance(cause, UnicodeError):
        return (ParseProblem.NOT_ASCII, "")
    detail = text.partition(": ")[0] if cause is not None else ""
    if not detail or not (detail.isprintable() and detail.isascii()):
        detail = "malformed request"
    return (ParseProblem.MALFORMED, detail)


class ServerAnswers(TypingProtocol):
    """What :func:`route_answers` needs from the server's connection."""

    #: The last answer the server made itself (already through its refusal path).
    responded: Response | None

    def websockets_answer(self, response: Response) -> Response:
        """The response to send instead of one websockets made on its own."""
        ...

    def parse_failure_answer(self, failure: ParseFailure) -> Response:
        """The response to a request that could not be parsed."""
        ...


class _AnsweringProtocol(ServerProtocol):
    """websockets' server protocol, routing every non-101 answer to the server."""

    # Set by route_answers() right after the class swap.
    answers: ServerAnswers
    answered: bool

    def send_response(self, response: Response) -> None:
        if response.status_code != 101 and response is not self.answers.responded:
            response = self.answers.websockets_answer(response)
        self.answered = True
        super().send_response(response)

    def send_eof(self) -> None:
        exc = self.handshake_exc
        if self.state is CONNECTING and not self.answered and isinstance(exc, InvalidMessage):
            # Handled here: websockets before 17 would re-raise it from the
            # handshake and log it as an error with a traceback.
            self.handshake_exc = None
            cause = exc.__cause__
            if not isinstance(cause, EOFError):  # the client left: nobody to answer
                # Unparseable request: websockets would just close. Say why first.
                failure = parse_failure(cause, getattr(self.reader, "lines_read", 0))
                self.send_response(self.answers.parse_failure_answer(failure))
                return  # send_response ends with send_eof(), which lands below
        super().send_eof()


def route_answers(protocol: ServerProtocol, answers: ServerAnswers) -> None:
    """Send every answer of ``protocol`` other than a 101 through ``answers``.

    A subclass that only overrides methods: swapping the class of the
    protocol websockets built keeps all its state.
    """
    protocol.__class__ = _AnsweringProtocol
    assert isinstance(protocol, _AnsweringProtocol)
    protocol.answers = answers
    protocol.answered = False


# ------------------------------------------------------------------- checks

# What missing() looks for: (label, where) pairs, each a dotted path read
# from the connection ("protocol.reader") or a class name ("StreamReader.eof").
_EXPECTED = (
    *(f"protocol.{name}" for name in ("reader", "parser", "parse", "writes", "close_exc")),
    "protocol.expect_continuation_frame",
    "protocol.extensions",
    *(f"connection.{name}" for name in ("recv_messages", "transport", "paused", "drain")),
    *(f"connection.{name}" for name in ("connection_lost_waiter", "data_received")),
    "connection.process_event",
    *(f"protocol.{name}" for name in ("state", "current_size", "debug", "side")),
    *(f"protocol.{name}" for name in ("max_message_size", "max_fragment_size")),
    "connection.send_in_progress",
    *(f"connection.recv_messages.{name}" for name in ("paused", "get_in_progress", "frames")),
    *(f"reader.{name}" for name in ("read_line", "read_exact", "read_to_eof", "at_eof")),
    *(f"reader.{name}" for name in ("feed_data", "feed_eof", "discard", "eof", "buffer")),
)
_EXPECTED_ON_SERVERS = tuple(
    f"protocol.{name}" for name in ("handshake_exc", "state", "send_response", "send_eof")
)


def environment_proxy(url: str) -> str | None:
    """The proxy ``connect(url, proxy=True)`` would take from the environment, or None.

    websockets reads the environment (``getproxies()``, ``proxy_bypass()``) on
    every connect; it doesn't change under a running client, so once is enough.
    """
    return get_proxy(parse_uri(url))


def missing(connection: Connection) -> list[str]:
    """The private websockets names above that ``connection``'s release lacks."""
    roots = {"connection": connection, "protocol": connection.protocol, "reader": StreamReader()}
    expected = _EXPECTED
    if isinstance(connection.protocol, ServerProtocol):
        expected += _EXPECTED_ON_SERVERS
    absent = []
    for path in expected:
        root, *names = path.split(".")
        owner: object = roots[root]
        for name in names:
            # dir(), not hasattr(): a property may refuse to be read in this state.
            if name not in dir(owner):
                absent.append(path)
                break
            owner = getattr(type(owner), name, None) or getattr(owner, name)
    return absent
