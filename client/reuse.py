"""How many warm WebSockets to keep once their tunnels end: one rule for the
pool (client/pool.py) and the -R leases' data channels (client/reverse.py)."""

from __future__ import annotations

__all__ = ["KEEP_CEILING", "keep_idle"]

#: Most idle WebSockets a pool (or a -R lease) keeps, however many tunnels were open at once.
KEEP_CEILING = 64


def keep_idle(size: int, peak: int, busy: int) -> int:
    """How many idle WebSockets to keep when one comes back after its tunnel: at
    least ``2 * size``, else enough for as many tunnels at once as lately (``peak``)
    plus ``size``, less those ``busy`` now, at most KEEP_CEILING in all; none when
    ``size`` is 0. So steady traffic of many short connections stops upgrading.
    """
    if size <= 0:
        return 0
    return max(2 * size, min(peak + size, KEEP_CEILING) - busy)
