"""The client's failure log: each distinct failure once per interval, the rest counted.

A client whose every connection fails (a wrong token, a server that is down)
would otherwise write one line per local connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["FailureLog"]

logger = logging.getLogger("wstun.client")


class FailureLog:
    """Logs each distinct failure once per ``interval`` and counts the rest."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        # failure text -> (when it was last logged, repeats since then)
        self._seen: dict[str, tuple[float, int]] = {}

    def log(self, text: str) -> bool:
        """Log ``text`` unless logged within the interval; True if it was logged."""
        now = self._clock()
        last, repeats = self._seen.get(text, (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[text] = (last, repeats + 1)
            return False
        suffix = f" ({repeats} more like this since the last report)" if repeats else ""
        logger.warning("%s%s", text, suffix)
        self._seen[text] = (now, 0)
        return True
