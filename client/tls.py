"""The client's TLS settings for ``wss://`` and the words for TLS failures."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

__all__ = ["client_tls_context", "describe_tls_error"]

logger = logging.getLogger("wstun.client")


def client_tls_context(cacert: Path | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """Certificate and host name verification on, against the system's CAs or
    ``cacert`` (a PEM bundle). ``insecure`` turns verification off, loudly."""
    context = ssl.create_default_context(cafile=str(cacert) if cacert else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        logger.warning(
            "--insecure: the server's TLS certificate is NOT verified; anyone on the path "
            "can read and change the tunnelled data"
        )
    return context


def describe_tls_error(exc: ssl.SSLError) -> str:
    """A one-line reason, e.g. ``certificate verify failed: Hostname mismatch, ...``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"certificate verify failed: {detail}"
    reason = (exc.reason or str(exc)).lower().replace("_", " ")
    return f"TLS handshake failed: {reason}"
