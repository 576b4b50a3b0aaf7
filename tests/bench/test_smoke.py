"""The benchmark's quick subset on tiny sizes: every tunnel moves its bytes correctly.

No timings are asserted here; the figures live in bench/results.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.report import Results, write_json, write_markdown
from bench.runner import PROFILES, TIMED_WORKLOADS, Run, run_benchmark
from bench.tunnels import TUNNELS

pytestmark = pytest.mark.timeout(240)


#: Peers we measure against, not ours. websocat and websockify (and socat on a
#: busy machine) now and then drop iperf3's control connection ("control socket has closed
#: unexpectedly"); such a sample is tried again, ours never are.
FOREIGN = frozenset({"socat", "socat-pair", "websocat", "websockify"})


def failed(results: Results) -> list[tuple[str, str, str]]:
    """(workload, tunnel, detail) of every failed sample."""
    return [
        (workload, tunnel, str(sample["detail"]))
        for workload, by_tunnel in results.items()
        for tunnel, samples in by_tunnel.items()
        for sample in samples
        if not sample["ok"]
    ]


#: Tries a foreign peer's failed sample gets again (the flake is theirs, and
#: comes more often when the machine is busy with other tests).
FOREIGN_RETRIES = 3


def _passes_again(tunnel: str, workload: str, sizes: Any, results: Results) -> bool:
    for _ in range(FOREIGN_RETRIES):
        again, _ = run_benchmark(
            Run([tunnel], [workload], 1, sizes, scale=False, log=lambda _: None)
        )
        if not failed(again):
            results[workload][tunnel] = again[workload][tunnel]
            return True
    return False


def test_smoke_every_tunnel_moves_its_bytes(tmp_path) -> None:
    """Each tunnel carries every workload once, with byte-exact echoes and no errors."""
    rounds, sizes = PROFILES["smoke"]
    tunnels = list(TUNNELS)
    results, _ = run_benchmark(Run(tunnels, TIMED_WORKLOADS, rounds, sizes, log=lambda _: None))
    failures = []
    for workload, tunnel, detail in failed(results):
        if tunnel in FOREIGN and _passes_again(tunnel, workload, sizes, results):
            continue
        failures.append(f"{workload} via {tunnel}: {detail}")
    assert failures == []
    scale = results["scale-20"]
    for tunnel in tunnels:
        assert [s["ok_conns"] for s in scale[tunnel]] == [20]
        assert results["bulk"][tunnel][0]["bytes"] == sizes.bulk_bytes
        assert results["churn"][tunnel][0]["errors"] == 0
        assert results["iperf-down"][tunnel][0]["bytes"] > 0
    # The UDP workloads ran on the tunnels that carry UDP (ok: iperf3 -u delivered,
    # every DNS query answered), and on no other.
    udp = [t for t in tunnels if TUNNELS[t].start_udp is not None]
    assert {"direct", "websocat", "wstun"} <= set(udp)
    assert sorted(results["iperf-udp"]) == sorted(udp)
    assert all(results["iperf-udp"][t][0]["bytes"] > 0 for t in udp)
    assert "websocat" not in results["dns-qps"]  # one UDP peer per websocat udp-l:
    assert "wstun" in results["dns-qps"]
    assert "websocat" in results["dns-qps-1"]
    meta = {
        "name": "smoke",
        "started": "now",
        "command": "test",
        "machine": {},
        "versions": {},
        "settings": {},
    }
    write_markdown(tmp_path / "r.md", meta, results, tunnels)
    write_json(tmp_path / "r.json", meta, results)
    text = (tmp_path / "r.md").read_text()
    assert "| wstun |" in text
    assert "wstun against the targets" in text
