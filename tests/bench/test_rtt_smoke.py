"""bench/rtt.py on a tiny run: the namespaces, the delayed link and the tunnels work,
every connection is answered, and nothing is left behind. No timings are asserted:
the figures live in bench/results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_rtt_bench_runs_every_tunnel_and_cleans_up(tmp_path: Path) -> None:
    """Direct TCP, wstun fresh and pooled, ws:// and wss://: each connection is answered,
    the link's RTT is measured, the namespaces are gone afterwards."""
    before = namespaces()
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "rtt.py"), "--connections", "2",
         "--tunnels", "direct,wstun,wstun-pool", "--link-connects", "2", "--pause", "0.5",
         "--gap", "0", "--results", str(tmp_path), "--name", "smoke", "--max-seconds", "200"],
        capture_output=True, text=True, timeout=230, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = tmp_path.glob("*-smoke-rtt.json")
    report = json.loads(path.read_text())
    assert report["link"]["rtt_ms"] > 0
    # A wire that lost more than the odd packet (a write to a TUN device refused under
    # a loaded machine, its errno counted) would make the figures meaningless.
    counters = dict(item.split("=", 1) for item in report["link"]["counters"].split())
    assert int(counters["dropped"]) <= int(counters["packets"]) // 100, counters
    cells = {(r["tunnel"], r["scheme"]): r for r in report["results"]}
    assert set(cells) >= {("direct", "tcp"), ("wstun", "ws"), ("wstun", "wss"),
                          ("wstun-pool", "ws"), ("wstun-pool", "wss")}  # fmt: skip
    for cell in cells.values():
        assert cell["errors"] == [], cell
        assert len(cell["samples_ms"]) == 2, cell
    assert namespaces() <= before
