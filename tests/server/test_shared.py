"""SharedCounts: the limits' counts every worker process sees (server/shared.py)."""

from __future__ import annotations

import os

import pytest

from wstun.server.shared import SharedCounts, TableFull


def test_take_counts_each_name_and_stops_at_its_limit() -> None:
    counts = SharedCounts(slots=64)
    wanted = [("total", 3), ("client:10.0.0.1", 2)]
    assert counts.take(wanted) is None
    assert counts.take(wanted) is None
    assert counts.take(wanted) == 1  # the client's limit: nothing taken
    assert counts.count("total") == 2
    assert counts.take([("total", 3), ("client:10.0.0.2", 2)]) is None
    assert counts.take([("total", 3), ("client:10.0.0.3", 2)]) == 0  # the total's limit
    counts.give(["total", "client:10.0.0.1"])
    assert counts.count("client:10.0.0.1") == 1
    assert counts.take(wanted) is None
    assert counts.take([("user:alice", None)] * 1) is None  # no limit


def test_a_forked_process_changes_the_same_counts() -> None:
    """What a worker takes, the others see: the mapping and the lock survive fork."""
    counts = SharedCounts(slots=64)
    assert counts.take([("total", 10)]) is None
    pid = os.fork()
    if pid == 0:  # the child: two more, then gone
        code = 1
        try:
            code = (
                0
                if counts.take([("total", 10)]) is None and counts.take([("total", 10)]) is None
                else 1
            )
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counts.count("total") == 3


def test_names_come_and_go_without_filling_the_table() -> None:
    """Many more distinct names over time than slots, a few at once: counts stay right."""
    counts = SharedCounts(slots=32)
    for round_ in range(500):
        names = [f"client:10.0.{round_}.{i}" for i in range(8)]
        for name in names:
            assert counts.take([(name, 1)]) is None
        assert all(counts.count(name) == 1 for name in names)
        counts.give(names)
        assert all(counts.count(name) == 0 for name in names)


def test_more_names_at_once_than_slots_is_an_error() -> None:
    counts = SharedCounts(slots=8)
    for i in range(8):
        assert counts.take([(f"client:{i}", None)]) is None
    with pytest.raises(TableFull):
        counts.take([("client:one-more", None)])
