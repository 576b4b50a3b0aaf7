"""Byte streams: the contract the relay relies on and the adapters that keep it.

- :mod:`.contract`: :class:`ByteStream`, :class:`StreamState`, the shared checks;
- :mod:`.tcp`: :class:`TcpStream`;
- :mod:`.websocket`: :class:`WebSocketStream` and the options every wstun
  WebSocket is opened with;
- :mod:`.keepalive`: wstun's own keepalive, any byte counting as life;
- :mod:`.prefixed`: :class:`PrefixedStream`, bytes already read handed out first;
- :mod:`.chunk_reader`: a websockets stream reader that copies less;
- :mod:`.internals`: every use of websockets beyond its documented API,
  including the connection classes both sides open.
"""

from __future__ import annotations

from wstun.common.streams.chunk_reader import ChunkReader
from wstun.common.streams.contract import (
    DEFAULT_READ_SIZE,
    ByteStream,
    ChunkSink,
    StreamState,
    check_writable,
)
from wstun.common.streams.internals import (
    TunnelClientConnection,
    TunnelConnection,
    TunnelServerConnection,
)
from wstun.common.streams.prefixed import PrefixedStream
from wstun.common.streams.tcp import TcpStream, open_tcp, tcp_protocol_factory
from wstun.common.streams.websocket import (
    WS_MAX_QUEUE,
    WS_MAX_SIZE,
    WS_OPTIONS,
    WS_WRITE_LIMIT,
    WebSocketStream,
)

__all__ = [
    "DEFAULT_READ_SIZE",
    "WS_MAX_QUEUE",
    "WS_MAX_SIZE",
    "WS_OPTIONS",
    "WS_WRITE_LIMIT",
    "ByteStream",
    "ChunkReader",
    "ChunkSink",
    "PrefixedStream",
    "StreamState",
    "TcpStream",
    "TunnelClientConnection",
    "TunnelConnection",
    "TunnelServerConnection",
    "WebSocketStream",
    "check_writable",
    "open_tcp",
    "tcp_protocol_factory",
]
