"""Counts shared by the worker processes of one server (``--workers N``).

``--max-connections``, ``--max-per-client`` and a user's ``max_tunnels``
hold for the server as a whole, not per worker: each worker checks and
changes the same counts, in an anonymous shared memory mapping the parent
makes before it forks, under one lock shared the same way.

The mapping is a table of ``(key, count)`` pairs of 64-bit integers, open
addressing with linear probing; a key is the first 8 bytes of the BLAKE2b
of a name such as ``client:10.0.0.7`` (0 marks a slot never used). A count
back at zero leaves its key as a tombstone, cleared as soon as the slot
after it is empty, so clusters stay short. A worker killed while holding
the lock would stop the others; the parent then stops the whole server
(server/workers.py), as it does for any dead worker.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
from collections.abc import Sequence

__all__ = ["SharedCounts", "TableFull"]

#: Distinct names counted at once (client addresses, users, the total): 16 bytes each.
DEFAULT_SLOTS = 1 << 15


class TableFull(Exception):
    """More distinct names at once than the table has slots."""


class SharedCounts:
    """Named counts with limits, the same in every process forked after it was made."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        self._slots = slots
        self._map = mmap.mmap(-1, 16 * slots)  # MAP_SHARED | MAP_ANONYMOUS
        self._table = memoryview(self._map).cast("q")  # [2i]: key, [2i + 1]: count
        self._lock = multiprocessing.get_context("fork").Lock()

    @staticmethod
    def _key(name: str) -> int:
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
        key -= 1 << 63  # a signed 64-bit integer
        return key or 1

    def _slot(self, key: int, insert: bool) -> int | None:
        """The slot holding ``key``; with ``insert``, a free one for it if none does."""
        table, slots = self._table, self._slots
        index = key % slots
        reusable: int | None = None
        for _ in range(slots):
            found = table[2 * index]
            if found == key:
                return index
            if found == 0:
                break
            if reusable is None and table[2 * index + 1] == 0:
                reusable = index
            index = (index + 1) % slots
        else:
            if reusable is None and insert:
                raise TableFull(f"more than {slots} names counted at once")
        if not insert:
            return None
        chosen = index if reusable is None else reusable
        table[2 * chosen] = key
        table[2 * chosen + 1] = 0
        return chosen

    def count(self, name: str) -> int:
        with self._lock:
            slot = self._slot(self._key(name), insert=False)
            return 0 if slot is None else int(self._table[2 * slot + 1])

    def take(self, wanted: Sequence[tuple[str, int | None]]) -> int | None:
        """Add one to the count of every name in ``wanted``, unless one of them is at its
        limit (None: no limit). Returns None when all were taken, else the index in
        ``wanted`` of the first name at its limit (and nothing was taken)."""
        table = self._table
        with self._lock:
            slots = [self._slot(self._key(name), insert=True) for name, _ in wanted]
            for index, ((_, limit), slot) in enumerate(zip(wanted, slots, strict=True)):
                assert slot is not None
                if limit is not None and table[2 * slot + 1] >= limit:
                    self._tidy(slots)
                    return index
            for slot in slots:
                assert slot is not None
                table[2 * slot + 1] += 1
            return None

    def give(self, names: Sequence[str]) -> None:
        """Take one off the count of every name in ``names`` (given by :meth:`take`)."""
        table = self._table
        with self._lock:
            slots = [self._slot(self._key(name), insert=False) for name in names]
            for slot in slots:
                if slot is not None and table[2 * slot + 1] > 0:
                    table[2 * slot + 1] -= 1
            self._tidy(slots)

    def _tidy(self, slots: Sequence[int | None]) -> None:
        """Clear tombstones (count zero) that end a cluster, walking back from each."""
        table, size = self._table, self._slots
        for slot in slots:
            if slot is None or table[2 * slot + 1] != 0:
                continue
            if table[2 * ((slot + 1) % size)] != 0:
                continue  # a cluster goes on after it: it stays a tombstone
            index = slot
            for _ in range(size):
                if table[2 * index] == 0 or table[2 * index + 1] != 0:
                    break
                table[2 * index] = 0
                index = (index - 1) % size
