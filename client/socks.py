"""Dynamic forwarding (``-D``): a SOCKS5 server whose CONNECTs become tunnels.

Wire rules (RFC 1928, and RFC 1929 for username/password) are plain
functions over bytes, so tests can call them without sockets: each
``parse_*`` takes the bytes received so far and returns the parsed message
with the number of bytes it used, ``None`` while the message is incomplete,
or raises :class:`SocksError` for input no more bytes can fix. The I/O layer
below them reads a :class:`~common.streams.ByteStream` and answers.

Only CONNECT is supported. A domain name is passed on to the server as the
target and resolved there, never by the client. Each CONNECT is the local
end (:class:`SocksConnection`) of one tunnel of the client's flow; the
server's answer becomes the SOCKS5 reply code (:func:`reply_for_status`),
sent before the local connection is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hmac
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import TypeVar

from wstun.client.tunnel import LocalEnd, Tunnel
from wstun.common.errors import HandshakeError, SocksError, StreamError
from wstun.common.protocol import Target
from wstun.common.report import format_peer
from wstun.common.streams import ByteStream, PrefixedStream, TcpStream

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "AddressType",
    "Command",
    "Credentials",
    "Greeting",
    "Method",
    "Reply",
    "SocksConnection",
    "SocksError",
    "SocksProxy",
    "SocksRequest",
    "auth_reply",
    "build_reply",
    "check_credentials",
    "encode_address",
    "method_reply",
    "negotiate",
    "parse_auth",
    "parse_greeting",
    "parse_request",
    "reply_for_status",
    "select_method",
]

logger = logging.getLogger("wstun.client")

SOCKS_VERSION = 5
AUTH_VERSION = 1  # RFC 1929 sub-negotiation version

#: Seconds a SOCKS client has to finish its greeting, auth and request.
HANDSHAKE_TIMEOUT = 30.0

# After a refusal, how long (and how much) we read and discard before closing,
# so that unread input can't turn our close into a reset that loses the reply.
_LINGER_TIMEOUT = 2.0
_LINGER_BYTES = 64 * 1024

_READ_SIZE = 4096

_T = TypeVar("_T")


class Method(enum.IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


@dataclasses.dataclass(frozen=True)
class Greeting:
    """The client's version/method selection message: the methods it offers."""

    methods: frozenset[int]


@dataclasses.dataclass(frozen=True)
class Credentials:
    """An RFC 1929 username and password."""

    username: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class SocksRequest:
    """A parsed request: the command and where to."""

    command: int
    address_type: AddressType
    target: Target


@dataclasses.dataclass(frozen=True)
class SocksProxy:
    """``-D``: a SOCKS5 listener on ``bind``, optionally requiring ``auth``."""

    bind: Target
    auth: Credentials | None = None

    def __str__(self) -> str:
        return f"socks5 {self.bind}" + (" (username/password)" if self.auth else "")


# ------------------------------------------------------------- wire rules


def parse_greeting(data: bytes) -> tuple[Greeting, int] | None:
    """``VER NMETHODS METHODS...``; SOCKS4 and non-SOCKS input raise SocksError."""
    if not data:
        return None
    if data[0] == 4:
        raise SocksError("SOCKS4 request; only SOCKS5 is supported")
    if data[0] != SOCKS_VERSION:
        raise SocksError(f"not a SOCKS5 greeting (first byte 0x{data[0]:02x})")
    if len(data) < 2:
        return None
    size = 2 + data[1]
    if len(data) < size:
        return None
    return Greeting(frozenset(data[2:size])), size


def select_method(greeting: Greeting, *, auth_required: bool) -> Method:
    """The method we answer with: username/password if required, else none; or 0xFF."""
    wanted = Method.USERNAME_PASSWORD if auth_required else Method.NO_AUTH
    return wanted if wanted in greeting.methods else Method.NO_ACCEPTABLE


def method_reply(method: Method) -> bytes:
    """``VER METHOD``."""
    return bytes([SOCKS_VERSION, method])


def parse_auth(data: bytes) -> tuple[Credentials, int] | None:
    """RFC 1929 ``VER ULEN UNAME PLEN PASSWD``; names and passwords are UTF-8."""
    if not data:
        return None
    if data[0] != AUTH_VERSION:
        raise SocksError(f"bad username/password version 0x{data[0]:02x}", auth_reply(ok=False))
    if len(data) < 2:
        return None
    user_end = 2 + data[1]
    if len(data) < user_end + 1:
        return None
    size = user_end + 1 + data[user_end]
    if len(data) < size:
        return None
    try:
        username = data[2:user_end].decode()
        password = data[user_end + 1 : size].decode()
    except UnicodeDecodeError:
        raise SocksError("username or password is not UTF-8", auth_reply(ok=False)) from None
    return Credentials(username, password), size


def check_credentials(given: Credentials, expected: Credentials) -> bool:
    """Compare both fields in constant time."""
    user_ok = hmac.compare_digest(given.username.encode(), expected.username.encode())
    password_ok = hmac.compare_digest(given.password.encode(), expected.password.encode())
    return user_ok and password_ok


def auth_reply(*, ok: bool) -> bytes:
    """``VER STATUS``: 0 is success; anything else and the server closes."""
    return bytes([AUTH_VERSION, 0 if ok else 1])


def _address_length(data: bytes) -> int | None:
    """Bytes of ``ATYP DST.ADDR DST.PORT`` from data[3], or None if not known yet."""
    address_type = data[3]
    if address_type == AddressType.IPV4:
        return 1 + 4 + 2
    if address_type == AddressType.IPV6:
        return 1 + 16 + 2
    if address_type == AddressType.DOMAIN:
        return None if len(data) < 5 else 1 + 1 + data[4] + 2
    raise SocksError(
        f"address type 0x{address_type:02x} not supported",
        build_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
    )


def _decode_host(address_type: int, raw: bytes) -> str:
    if address_type == AddressType.IPV4:
        return str(ipaddress.IPv4Address(raw))
    if address_type == AddressType.IPV6:
        return str(ipaddress.IPv6Address(raw))
    name = raw[1:]
    if not name:
        raise SocksError("empty domain name", build_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise SocksError(
            "domain name is not UTF-8", build_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        ) from None


def parse_request(data: bytes) -> tuple[SocksRequest, int] | None:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT``.

    The command is returned as sent: refusing BIND or UDP ASSOCIATE is the
    caller's decision. Domain names are decoded, not validated or resolved:
    the server judges them.
    """
    if not data:
        return None
    if data[0] != SOCKS_VERSION:
        raise SocksError(f"bad request version 0x{data[0]:02x}", build_reply(Reply.GENERAL_FAILURE))
    if len(data) < 5:
        return None
    address_length = _address_length(data)
    if address_length is None or len(data) < 3 + address_length:
        return None
    size = 3 + address_length
    address_type = AddressType(data[3])
    host = _decode_host(address_type, data[4 : size - 2])
    (port,) = struct.unpack("!H", data[size - 2 : size])
    return SocksRequest(data[1], address_type, Target(host, port)), size


def encode_address(host: str, port: int) -> bytes:
    """``ATYP ADDR PORT`` for an IP address or a name (at most 255 bytes)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode()
        if not 0 < len(name) <= 255:
            raise ValueError(f"a SOCKS5 domain name is 1 to 255 bytes, got {len(name)}") from None
        packed = bytes([AddressType.DOMAIN, len(name)]) + name
    else:
        kind = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
        packed = bytes([kind]) + address.packed
    return packed + struct.pack("!H", port)


#: What replies report as the bound address: the real one is on the server's side.
UNSPECIFIED = Target("0.0.0.0", 0)


def build_reply(code: Reply, bound: Target = UNSPECIFIED) -> bytes:
    """``VER REP RSV ATYP BND.ADDR BND.PORT``.

    The server's side of the tunnel is on another machine, so the bound
    address reported is 0.0.0.0:0 unless told otherwise.
    """
    return bytes([SOCKS_VERSION, code, 0]) + encode_address(bound.host, bound.port)


def reply_for_status(status: int) -> Reply:
    """The SOCKS5 reply for a refused tunnel, from the server's HTTP status.

    0 means no HTTP answer came (server unreachable, handshake timeout): the
    failure is ours, "general SOCKS server failure". 400 is the server
    refusing the address itself (e.g. a name it won't accept).
    """
    return {
        403: Reply.NOT_ALLOWED,
        502: Reply.CONNECTION_REFUSED,
        504: Reply.TTL_EXPIRED,
        400: Reply.ADDRESS_TYPE_NOT_SUPPORTED,
    }.get(status, Reply.GENERAL_FAILURE)


# ---------------------------------------------------------------- the I/O


class _Reader:
    """Accumulates bytes from a stream until a parser is satisfied."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def parse(self, parser: Callable[[bytes], tuple[_T, int] | None], what: str) -> _T:
        while True:
            parsed = parser(self.buffer)
            if parsed is not None:
                value, used = parsed
                self.buffer = self.buffer[used:]
                return value
            chunk = await self.stream.read(_READ_SIZE)
            if not chunk:
                raise SocksError(f"connection closed in the middle of the {what}")
            self.buffer += chunk


async def negotiate(local: ByteStream, auth: Credentials | None) -> tuple[SocksRequest, bytes]:
    """Greeting, optional username/password, request: returns the CONNECT and extra bytes.

    Raises :class:`SocksError` (carrying the answer to send) for anything
    else, including BIND and UDP ASSOCIATE; stream errors propagate.
    """
    reader = _Reader(local)
    greeting = await reader.parse(parse_greeting, "greeting")
    method = select_method(greeting, auth_required=auth is not None)
    if method is Method.NO_ACCEPTABLE:
        offered = ", ".join(f"0x{m:02x}" for m in sorted(greeting.methods)) or "none"
        raise SocksError(f"no acceptable method (offered: {offered})", method_reply(method))
    await local.write(method_reply(method))
    if auth is not None:
        given = await reader.parse(parse_auth, "username/password")
        if not check_credentials(given, auth):
            reason = f"wrong username or password for {given.username!r}"
            raise SocksError(reason, auth_reply(ok=False))
        await local.write(auth_reply(ok=True))
    request = await reader.parse(parse_request, "request")
    if request.command != Command.CONNECT:
        name = _command_name(request.command)
        raise SocksError(
            f"{name} is not supported, only CONNECT", build_reply(Reply.COMMAND_NOT_SUPPORTED)
        )
    return request, reader.buffer


def _command_name(command: int) -> str:
    try:
        return Command(command).name.replace("_", " ")
    except ValueError:
        return f"command 0x{command:02x}"


async def _answer_and_close(local: ByteStream, answer: bytes) -> None:
    """Send ``answer``, end our side, drain what the client still sends, close.

    Closing with unread input would make the kernel send a reset, which can
    destroy the answer before the client reads it.
    """
    try:
        if answer:
            await local.write(answer)
        await local.write_eof()
        async with asyncio.timeout(_LINGER_TIMEOUT):
            drained = 0
            while drained < _LINGER_BYTES and (chunk := await local.read(_READ_SIZE)):
                drained += len(chunk)
    except (StreamError, TimeoutError):
        pass
    finally:
        await local.close()


class SocksConnection(LocalEnd):
    """A connection accepted on a ``-D`` port: SOCKS5 first, then one tunnel.

    ``tunnel`` makes the client's tunnel for a target and this local end;
    ``log_failure`` takes one line per refused SOCKS5 client and may
    rate-limit it.
    """

    def __init__(
        self,
        stream: TcpStream,
        proxy: SocksProxy,
        *,
        tunnel: Callable[[Target, LocalEnd], Tunnel],
        log_failure: Callable[[str], object],
    ) -> None:
        self.stream = stream
        self.peer = format_peer(stream.peername)
        self._proxy = proxy
        self._tunnel = tunnel
        self._log_failure = log_failure
        # Payload the client sent right behind its request.
        self._extra = b""

    async def serve(self) -> None:
        """Negotiate, then carry the CONNECT; nothing is raised but cancellation."""
        local, peer = self.stream, self.peer
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                request, self._extra = await negotiate(local, self._proxy.auth)
        except (SocksError, TimeoutError) as exc:
            reason = str(exc) or f"no SOCKS5 request within {HANDSHAKE_TIMEOUT:g}s"
            self._log_failure(f"SOCKS5 client {peer.rpartition(':')[0]} refused: {reason}")
            await _answer_and_close(local, exc.answer if isinstance(exc, SocksError) else b"")
            return
        except StreamError as exc:
            logger.info("SOCKS5 client %s went away during the handshake: %s", peer, exc)
            await local.abort()
            return
        except asyncio.CancelledError:
            await local.abort()
            raise
        await self._tunnel(request.target, self).run()

    def refusal_note(self, error: HandshakeError) -> str:
        return f" (SOCKS5 reply 0x{reply_for_status(error.status):02x})"

    async def refused(self, error: HandshakeError) -> None:
        await _answer_and_close(self.stream, build_reply(reply_for_status(error.status)))

    async def opened(self, remote: ByteStream) -> ByteStream | None:
        try:
            await self.stream.write(build_reply(Reply.SUCCEEDED))
        except StreamError as exc:
            logger.info("SOCKS5 client %s went away before the reply: %s", self.peer, exc)
            await asyncio.gather(self.stream.abort(), remote.abort("SOCKS5 client went away"))
            return None
        return PrefixedStream(self.stream, self._extra)

    async def abandon(self) -> None:
        await self.stream.abort()
