"""Summaries, ratios, the targets check, and the Markdown/JSON/PNG outputs."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "TARGETS",
    "Summary",
    "summarise",
    "write_json",
    "write_markdown",
    "write_plot",
]


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str = "{:.2f}"


#: Per workload: the figures shown, the first one is the one ratios are taken of.
METRICS: dict[str, list[Metric]] = {
    "iperf-up": [
        Metric("gbps", "Gbit/s", True),
        Metric("cpu_s_per_gib", "CPU s/GiB", False),
    ],
    "iperf-down": [
        Metric("gbps", "Gbit/s", True),
        Metric("cpu_s_per_gib", "CPU s/GiB", False),
    ],
    "iperf-p4": [
        Metric("gbps", "Gbit/s", True),
        Metric("cpu_s_per_gib", "CPU s/GiB", False),
    ],
    "redis-1": [
        Metric("rps", "req/s", True, "{:.0f}"),
        Metric("p50_ms", "p50 ms", False, "{:.3f}"),
        Metric("p99_ms", "p99 ms", False, "{:.3f}"),
        Metric("cpu_us_per_request", "CPU us/req", False, "{:.0f}"),
        Metric("cpu_us_per_request_client", "client us/req", False, "{:.0f}"),
        Metric("cpu_us_per_request_server", "server us/req", False, "{:.0f}"),
    ],
    "redis-50": [
        Metric("rps", "req/s", True, "{:.0f}"),
        Metric("p50_ms", "p50 ms", False, "{:.3f}"),
        Metric("p99_ms", "p99 ms", False, "{:.3f}"),
        Metric("cpu_us_per_request", "CPU us/req", False, "{:.0f}"),
        Metric("cpu_us_per_request_client", "client us/req", False, "{:.0f}"),
        Metric("cpu_us_per_request_server", "server us/req", False, "{:.0f}"),
    ],
    "churn": [
        Metric("conn_per_s", "conn/s", True, "{:.0f}"),
        Metric("errors", "errors", False, "{:.0f}"),
        Metric("cpu_us_per_conn", "CPU us/conn", False, "{:.0f}"),
        Metric("cpu_us_per_conn_client", "client us/conn", False, "{:.0f}"),
        Metric("cpu_us_per_conn_server", "server us/conn", False, "{:.0f}"),
    ],
    "bulk": [Metric("bytes", "bytes echoed", True, "{:.0f}")],
    "iperf-udp": [
        Metric("mbps", "Mbit/s", True, "{:.1f}"),
        Metric("loss_pct", "loss %", False, "{:.2f}"),
        Metric("cpu_s_per_gib", "CPU s/GiB", False),
        Metric("entry_drops", "entry socket drops", False, "{:.0f}"),
        Metric("wstun_dropped_client", "wstun dropped: client", False, "{:.0f}"),
        Metric("wstun_dropped_server", "server", False, "{:.0f}"),
    ],
}

_DNS_METRICS = [
    Metric("qps", "queries/s", True, "{:.0f}"),
    Metric("p50_ms", "p50 ms", False, "{:.3f}"),
    Metric("p99_ms", "p99 ms", False, "{:.3f}"),
    Metric("lost", "lost", False, "{:.0f}"),
    Metric("cpu_us_per_query", "CPU us/query", False, "{:.0f}"),
    Metric("cpu_us_per_query_client", "client us/query", False, "{:.0f}"),
    Metric("cpu_us_per_query_server", "server us/query", False, "{:.0f}"),
]
METRICS["dns-qps"] = _DNS_METRICS
METRICS["dns-qps-1"] = _DNS_METRICS

SCALE_METRICS = [
    Metric("ok_conns", "succeeded", True, "{:.0f}"),
    Metric("open_s", "open s", False, "{:.2f}"),
    Metric("rss_kib_per_conn", "RSS KiB/conn", False, "{:.1f}"),
]


def metrics_for(workload: str) -> list[Metric]:
    return SCALE_METRICS if workload.startswith("scale-") else METRICS[workload]


#: (workload, metric, comparison, bound): wstun / websocat must satisfy it.
TARGETS: list[tuple[str, str, str, float]] = [
    ("iperf-up", "gbps", ">=", 1.5),
    ("iperf-down", "gbps", ">=", 1.0),
    ("iperf-up", "cpu_s_per_gib", "<=", 1.5),
    ("iperf-down", "cpu_s_per_gib", "<=", 1.5),
    ("redis-1", "rps", ">=", 1.2),
    ("redis-50", "rps", ">=", 1.2),
    ("redis-1", "cpu_us_per_request", "<=", 1.0),
    ("redis-50", "cpu_us_per_request", "<=", 1.0),
    ("churn", "conn_per_s", ">=", 2.0),
    ("scale-10000", "rss_kib_per_conn", "<=", 0.3),
]

#: The same for ``wstun-nopool`` (a fresh WebSocket per connection), where it applies.
NOPOOL_TARGETS: list[tuple[str, str, str, float]] = [
    ("churn", "conn_per_s", ">=", 1.0),
    ("churn", "cpu_us_per_conn", "<=", 1.5),
]


_LEGEND = (
    "Figures are medians over the rounds, (min-max) when there was more than one; "
    "ratios compare medians. `ok` counts runs that moved their bytes correctly."
)


@dataclasses.dataclass
class Summary:
    median: float | None
    low: float | None
    high: float | None
    n: int

    def text(self, fmt: str) -> str:
        if self.median is None:
            return "-"
        if self.n == 1 or self.low == self.high:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} ({fmt.format(self.low)}-{fmt.format(self.high)})"


def summarise(samples: Sequence[dict[str, Any]], key: str) -> Summary:
    values = [s[key] for s in samples if s.get(key) is not None]
    if not values:
        return Summary(None, None, None, 0)
    return Summary(statistics.median(values), min(values), max(values), len(values))


Results = dict[str, dict[str, list[dict[str, Any]]]]


def _ratio(results: Results, workload: str, key: str, tunnel: str, base: str) -> float | None:
    here = summarise(results[workload].get(tunnel, []), key).median
    there = summarise(results[workload].get(base, []), key).median
    if here is None or not there:
        return None
    return here / there


def target_rows(results: Results, tunnel: str = "wstun") -> list[dict[str, Any]]:
    rows = []
    targets = [(tunnel, *t) for t in TARGETS] + [("wstun-nopool", *t) for t in NOPOOL_TARGETS]
    for who, workload, key, op, bound in targets:
        if workload not in results or who not in results[workload]:
            continue
        ratio = _ratio(results, workload, key, who, "websocat")
        met = None if ratio is None else (ratio >= bound if op == ">=" else ratio <= bound)
        rows.append(
            {
                "tunnel": who,
                "workload": workload,
                "metric": key,
                "target": f"{op} {bound:g}x",
                "ratio": ratio,
                "met": met,
            }
        )
    if "churn" in results:
        samples = results["churn"].get(tunnel, [])
        errors = sum(int(s.get("errors") or 0) for s in samples)
        rows.append(
            {
                "workload": "churn",
                "metric": "errors",
                "target": "0",
                "ratio": None,
                "met": bool(samples) and errors == 0 and all(s.get("ok") for s in samples),
            }
        )
    for workload in results:
        if workload.startswith("scale-"):
            samples = results[workload].get(tunnel, [])
            failed = sum(int(s.get("failed") or 0) for s in samples) + sum(
                1 for s in samples if not s.get("ok")
            )
            rows.append(
                {
                    "workload": workload,
                    "metric": "all succeed",
                    "target": "0 failed",
                    "ratio": None,
                    "met": bool(samples) and failed == 0,
                }
            )
    return rows


def write_json(path: Path, meta: dict[str, Any], results: Results) -> None:
    summary = {
        workload: {
            tunnel: {
                m.key: dataclasses.asdict(summarise(samples, m.key)) for m in metrics_for(workload)
            }
            for tunnel, samples in by_tunnel.items()
        }
        for workload, by_tunnel in results.items()
    }
    payload = {
        "meta": meta,
        "summary": summary,
        "targets": target_rows(results),
        "samples": results,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def workload_table(results: Results, workload: str, tunnels: Sequence[str]) -> list[str]:
    metrics = metrics_for(workload)
    main = metrics[0]
    head = ["tunnel", *(m.label for m in metrics), "vs direct", "vs websocat", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tunnel in tunnels:
        samples = results[workload].get(tunnel)
        if not samples:
            continue
        cells = [tunnel, *(summarise(samples, m.key).text(m.fmt) for m in metrics)]
        cells.append(_fmt_ratio(_ratio(results, workload, main.key, tunnel, "direct")))
        cells.append(_fmt_ratio(_ratio(results, workload, main.key, tunnel, "websocat")))
        good = sum(1 for s in samples if s.get("ok"))
        cells.append(f"{good}/{len(samples)}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(
    path: Path, meta: dict[str, Any], results: Results, tunnels: Sequence[str], notes: str = ""
) -> None:
    out = [f"# wstun benchmark: {meta['name']} ({meta['started']})", ""]
    out += [f"Command: `{meta['command']}`", ""]
    out += ["## Machine", ""]
    for key in ("nproc", "cpu", "kernel", "memory", "fd_limit", "load_start", "load_end"):
        out.append(f"- {key}: {meta['machine'].get(key)}")
    out += ["", "## Tools", ""]
    out += [f"- {name}: {version}" for name, version in meta["versions"].items()]
    out += ["", "## Settings", ""]
    out += [f"- {key}: {value}" for key, value in meta["settings"].items()]
    out += ["", "## Summary", "", *summary_table(results, tunnels)]
    out += ["", _LEGEND, ""]
    run_notes = list(meta.get("run_notes") or meta.get("scale_notes") or [])
    for workload in results:
        out += [f"## {workload}", "", *workload_table(results, workload, tunnels), ""]
        mine = [note for note in run_notes if note.startswith(f"{workload}: not run on ")]
        if mine:
            out += [*(f"- {note}" for note in mine), ""]
        failures = [
            f"- {tunnel}: {s['detail']}"
            for tunnel, samples in results[workload].items()
            for s in samples
            if not s.get("ok")
        ]
        if failures:
            out += ["Failures:", "", *failures[:10], ""]
    out += ["## wstun against the targets (ratio to websocat, same run)", ""]
    out += [
        "| tunnel | workload | figure | target | ratio to websocat | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in target_rows(results):
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        out.append(
            f"| {row.get('tunnel', 'wstun')} | {row['workload']} | {row['metric']} | "
            f"{row['target']} | {_fmt_ratio(row['ratio'])} | {met} |"
        )
    if run_notes:
        out += ["", *(f"- {note}" for note in run_notes)]
    if notes:
        out += ["", "## Notes", "", notes.strip()]
    path.write_text("\n".join(out) + "\n")


def write_plot(path: Path, results: Results, tunnels: Sequence[str]) -> bool:
    """Throughput and memory per tunnel side by side; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels: list[tuple[str, str, str]] = [
        (w, "gbps", f"{w} Gbit/s") for w in ("iperf-up", "iperf-down", "iperf-p4") if w in results
    ]
    panels += [(w, "rps", f"{w} req/s") for w in ("redis-1", "redis-50") if w in results]
    panels += [("churn", "conn_per_s", "churn conn/s")] if "churn" in results else []
    panels += [("iperf-udp", "mbps", "iperf-udp Mbit/s")] if "iperf-udp" in results else []
    panels += [(w, "qps", f"{w} queries/s") for w in ("dns-qps", "dns-qps-1") if w in results]
    scale = [w for w in results if w.startswith("scale-")]
    if scale:
        panels.append((scale[-1], "rss_kib_per_conn", f"{scale[-1]} RSS KiB/conn"))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (workload, key, title) in zip(axes[0], panels, strict=True):
        names = [t for t in tunnels if summarise(results[workload].get(t, []), key).median]
        values = [summarise(results[workload][t], key).median or 0.0 for t in names]
        colors = ["#d62728" if n.startswith("wstun") else "#7f7f7f" for n in names]
        ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


#: The README's one table: (workload, figure, column title).
SUMMARY_COLUMNS = [
    ("iperf-up", "gbps", "upload Gbit/s"),
    ("iperf-down", "gbps", "download Gbit/s"),
    ("iperf-p4", "gbps", "-P 4 Gbit/s"),
    ("iperf-down", "cpu_s_per_gib", "CPU s/GiB (down)"),
    ("redis-1", "rps", "redis 1 conn req/s"),
    ("redis-50", "rps", "redis 50 conns req/s"),
    ("churn", "conn_per_s", "churn conn/s"),
    ("scale-10000", "rss_kib_per_conn", "RSS KiB/tunnel"),
    ("iperf-udp", "mbps", "UDP Mbit/s"),
    ("iperf-udp", "loss_pct", "UDP loss %"),
    ("dns-qps", "qps", "DNS q/s (flows)"),
    ("dns-qps-1", "qps", "DNS q/s (1 flow)"),
]


def summary_table(results: Results, tunnels: Sequence[str]) -> list[str]:
    """One row per tunnel, the headline figure of each workload (medians)."""
    columns = [c for c in SUMMARY_COLUMNS if c[0] in results]
    lines = ["| tunnel | " + " | ".join(c[2] for c in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for tunnel in tunnels:
        cells = []
        for workload, key, _ in columns:
            median = summarise(results[workload].get(tunnel, []), key).median
            fmt = next(m.fmt for m in metrics_for(workload) if m.key == key)
            cells.append("-" if median is None else fmt.format(median))
        lines.append(f"| {tunnel} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Print the summary table of a results JSON; with --notes, rewrite its .md too."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("--notes", type=Path, help="rewrite the .md with these notes appended")
    args = parser.parse_args(argv)
    payload = json.loads(args.json.read_text())
    results: Results = payload["samples"]
    tunnels = list(dict.fromkeys(t for by in results.values() for t in by))
    print("\n".join(summary_table(results, tunnels)))
    if args.notes:
        notes = args.notes.read_text()
        write_markdown(args.json.with_suffix(".md"), payload["meta"], results, tunnels, notes)


if __name__ == "__main__":
    main()
