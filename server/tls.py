"""TLS in the server itself, for deployments without a TLS-terminating proxy."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["server_tls_context"]


def server_tls_context(cert: Path, key: Path | None = None) -> ssl.SSLContext:
    """A server context from a PEM certificate chain and its private key.

    ``key`` may be None when the key is in the certificate file. TLS 1.2 is
    the minimum. Raises ``ssl.SSLError`` or ``OSError`` when the files are
    unreadable or don't match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
