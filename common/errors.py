"""The exception tree shared by the client and the server.

Every error wstun raises on purpose derives from :class:`TunnelError`.
Errors that wrap a lower-level failure are raised ``from`` it, so the
original exception stays reachable as ``__cause__``.

- :class:`StreamClosed`: local misuse, e.g. writing after ``write_eof()``
  or using a stream after ``close()``.
- :class:`StreamBroken`: the peer or the transport failed (reset, abnormal
  WebSocket close, keepalive timeout, protocol violation).
- :class:`HandshakeError`: the server refused to open a tunnel; carries the
  HTTP status and the one-line reason from the response body.
- :class:`TargetError`: a ``HOST:PORT`` string that can't be parsed.
- :class:`RelayError`: a relay ended on an error; carries the partial
  payload counts and which stream failed in which operation.
- :class:`IdleTimeout`: a relay closed because no payload moved.
- :class:`ConfigError`: options that can't be used (together); the commands
  show it as a usage error.
- :class:`SocksError`: a SOCKS5 client broke the protocol; carries the
  answer to send it before closing.
"""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "HandshakeError",
    "IdleTimeout",
    "RelayError",
    "SocksError",
    "StreamBroken",
    "StreamClosed",
    "StreamError",
    "TargetError",
    "TunnelError",
    "describe_os_error",
]


class TunnelError(Exception):
    """Base class for every error raised by wstun."""


class StreamError(TunnelError):
    """Base class for errors raised by byte streams."""


class StreamClosed(StreamError):
    """The stream was used after this side closed it (local misuse)."""


class StreamBroken(StreamError):
    """The peer or the transport failed; the stream can't be used any more."""


class HandshakeError(TunnelError):
    """The server answered the opening handshake with something other than 101.

    ``status`` is the HTTP status code (0 when no HTTP answer came at all, e.g.
    the server was unreachable) and ``reason`` a one-line explanation.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason

    @property
    def outcome(self) -> str:
        """``refused: 403 <reason>`` when the server answered, ``failed: <reason>`` if not."""
        return f"refused: {self}" if self.status else f"failed: {self}"


class TargetError(TunnelError, ValueError):
    """A target or listen address string is malformed."""


class RelayError(TunnelError):
    """A bidirectional copy ended on an error.

    ``a_to_b`` and ``b_to_a`` are the payload bytes each destination accepted
    before the failure; ``stream`` names the stream that failed (``"a"`` or
    ``"b"``) and ``operation`` what was being done with it (``"read"``,
    ``"write"`` or ``"write_eof"``).
    """

    def __init__(
        self,
        message: str,
        *,
        a_to_b: int,
        b_to_a: int,
        stream: str,
        operation: str,
    ) -> None:
        super().__init__(message)
        self.a_to_b = a_to_b
        self.b_to_a = b_to_a
        self.stream = stream
        self.operation = operation


class IdleTimeout(RelayError):
    """No payload moved in either direction for the configured time."""


class ConfigError(TunnelError, ValueError):
    """Options that can't work together, or a value that can't be used.

    ``option`` names the option at fault, when one is; ``value`` says the
    message is about a value (shown as "Invalid value") even without one.
    """

    def __init__(self, message: str, *, option: str | None = None, value: bool = False) -> None:
        super().__init__(message)
        self.option = option
        self.value = value or option is not None


class SocksError(TunnelError):
    """Input that breaks the SOCKS5 protocol; the connection is answered, then closed.

    ``answer`` holds the bytes to send before closing (a reply with an error
    code, or a method selection of 0xFF); empty when the peer gets no answer,
    e.g. a greeting that isn't SOCKS5 at all.
    """

    def __init__(self, message: str, answer: bytes = b"") -> None:
        super().__init__(message)
        self.answer = answer


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "broken pipe",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available",
}


def describe_os_error(exc: BaseException) -> str:
    """Turn an OS-level exception into a short, stable, lower-case phrase.

    This is the one place where ``OSError`` details become words for logs and
    HTTP reasons, so every call site reports the same failure the same way.
    """
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_TEXT:
            return _ERRNO_TEXT[exc.errno]
        if exc.strerror:
            return exc.strerror.lower()
    text = str(exc)
    return text if text else type(exc).__name__
