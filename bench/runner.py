"""The benchmark runner: every tunnel through every workload, rounds interleaved.

Each (round, workload, tunnel) starts the tunnel fresh on loopback ports,
runs the workload through it and stops it. Within a round the tunnels take
turns, in a rotated order each round, so a slow spell on a shared machine
hurts all of them rather than one. The scale workloads run once per size
after the timed rounds.

The UDP workloads (``UDP_WORKLOADS``) run only on tunnels that carry UDP
(``TunnelSpec.start_udp``) and keep as many sources apart as the workload
sends from; the others are skipped, and the results say so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import os
import platform
import resource
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .report import Results, write_json, write_markdown, write_plot
from .tunnels import TUNNELS, RunningTunnel, Starter, TunnelSpec, add_baseline, tool_versions
from .workloads import (
    Sizes,
    Targets,
    bulk_echo,
    churn,
    dns_qps,
    flow_drops,
    iperf,
    iperf_udp,
    make_workdir,
    redis_ping,
    scale,
)

__all__ = ["PROFILES", "UDP_WORKLOADS", "Run", "main", "run_benchmark", "starter_for"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Named sets of sizes: the full run, a quick look, and the CI smoke test.
PROFILES: dict[str, tuple[int, Sizes]] = {
    "full": (3, Sizes()),
    "quick": (
        1,
        Sizes(
            iperf_seconds=1.0,
            redis_requests_1=5000,
            redis_requests_50=20_000,
            churn_seconds=1,
            bulk_bytes=4 * 1024 * 1024,
            scale_counts=(200,),
            udp_seconds=1,
            dns_seconds=1,
        ),
    ),
    "smoke": (
        1,
        Sizes(
            iperf_seconds=1.0,
            redis_requests_1=200,
            redis_requests_50=1000,
            churn_seconds=1,
            churn_connections=2,
            bulk_bytes=256 * 1024,
            scale_counts=(20,),
            udp_rate="20M",
            udp_bytes=240_000,
            dns_queries=200,
            dns_seconds=1,
            dns_sources=4,
            dns_window=16,
        ),
    ),
}

DEFAULT_TUNNELS = (
    "direct",
    "socat",
    "socat-pair",
    "websocat",
    "websockify",
    "wstun",
    "wstun-nopool",
    "wstun-reverse",
)
TIMED_WORKLOADS = (
    "bulk",
    "iperf-up",
    "iperf-down",
    "iperf-p4",
    "redis-1",
    "redis-50",
    "churn",
    "iperf-udp",
    "dns-qps",
    "dns-qps-1",
)


class Workload(Protocol):
    def __call__(
        self, tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes
    ) -> dict[str, Any]: ...


def _bulk(tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes) -> dict[str, Any]:
    return bulk_echo(tunnel, sizes.bulk_bytes)


def _iperf(reverse: bool, streams: int) -> Workload:
    def run(tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes) -> dict[str, Any]:
        return iperf(tunnel, sizes, reverse=reverse, streams=streams)

    return run


def _redis(clients: int) -> Workload:
    def run(tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes) -> dict[str, Any]:
        requests = sizes.redis_requests_1 if clients == 1 else sizes.redis_requests_50
        return redis_ping(tunnel, requests, clients)

    return run


def _churn(tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes) -> dict[str, Any]:
    return churn(tunnel, sizes)


#: workload -> (the target it runs against, how to run it)
WORKLOADS: dict[str, tuple[str, Workload]] = {
    "bulk": ("echo", _bulk),
    "iperf-up": ("iperf3", _iperf(reverse=False, streams=1)),
    "iperf-down": ("iperf3", _iperf(reverse=True, streams=1)),
    "iperf-p4": ("iperf3", _iperf(reverse=False, streams=4)),
    "redis-1": ("redis", _redis(1)),
    "redis-50": ("redis", _redis(50)),
    "churn": ("nginx", _churn),
}


def _iperf_udp(tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes) -> dict[str, Any]:
    return iperf_udp(tunnel, sizes)


def _dns(sources: int | None) -> Workload:
    """dns-qps from ``sources`` sockets (None: the profile's ``dns_sources``)."""

    def run(tunnel: RunningTunnel, *, targets: Targets, sizes: Sizes) -> dict[str, Any]:
        count = sizes.dns_sources if sources is None else sources
        return dns_qps(tunnel, sizes, sources=count, workdir=targets.workdir)

    return run


@dataclasses.dataclass(frozen=True)
class UdpWorkload:
    """A workload through a tunnel's UDP forward."""

    target: str
    run: Workload
    #: The workload also needs TCP to the same port number (iperf3's control connection).
    tcp: bool
    #: How many UDP source addresses (flows) it sends from, for the profile's sizes.
    sources: Callable[[Sizes], int]


UDP_WORKLOADS: dict[str, UdpWorkload] = {
    "iperf-udp": UdpWorkload("iperf3", _iperf_udp, tcp=True, sources=lambda sizes: 1),
    "dns-qps": UdpWorkload(
        "dnsmasq", _dns(None), tcp=False, sources=lambda sizes: sizes.dns_sources
    ),
    "dns-qps-1": UdpWorkload("dnsmasq", _dns(1), tcp=False, sources=lambda sizes: 1),
}


def starter_for(spec: TunnelSpec, workload: str, sizes: Sizes) -> tuple[Starter | None, str]:
    """How to start ``spec`` for ``workload``; (None, why) if it can't carry it."""
    udp = UDP_WORKLOADS.get(workload)
    if udp is None:
        return spec.start, ""
    start_udp = spec.start_udp
    if start_udp is None:
        return None, "carries no UDP"
    sources = udp.sources(sizes)
    if spec.udp_sources is not None and sources > spec.udp_sources:
        return None, (
            f"keeps {spec.udp_sources} UDP source(s) apart on a port; "
            f"the workload sends from {sources}"
        )
    return functools.partial(_start_udp, start_udp, tcp=udp.tcp), ""


def _start_udp(
    start_udp: Callable[[int, Path, bool], RunningTunnel], target: int, logdir: Path, *, tcp: bool
) -> RunningTunnel:
    return start_udp(target, logdir, tcp)


@dataclasses.dataclass
class Run:
    """What to run: which tunnels and workloads, how many rounds, which sizes."""

    tunnels: Sequence[str] = DEFAULT_TUNNELS
    workloads: Sequence[str] = TIMED_WORKLOADS
    rounds: int = 3
    sizes: Sizes = dataclasses.field(default_factory=Sizes)
    scale: bool = True
    log: Callable[[str], None] = print


def _raise_fd_limit() -> int:
    """Soft fd limit up to the hard one (children inherit it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _measure(
    start: Starter,
    target_port: Callable[[], int],
    workdir: Path,
    body: Callable[[RunningTunnel], dict[str, Any]],
    after: Callable[[RunningTunnel], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start the tunnel fresh, run ``body`` through it, stop it; ``after(tunnel)``
    adds figures read once it stopped (its logs). Failures are results."""
    try:
        tunnel = start(target_port(), workdir)
        try:
            sample = body(tunnel)
        finally:
            tunnel.stop()
        if after is not None:
            sample.update(after(tunnel))
        return sample
    except Exception as exc:  # a broken run is a result too, not the end of the benchmark
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}


def scale_count(spec: TunnelSpec, requested: int, fd_limit: int) -> int:
    """How many held connections a tunnel gets: the tunnel's own cap and the fd limit.

    A tunnel process holds two sockets per connection (accepted and dialled).
    """
    fd_cap = (fd_limit - 200) // (1 if spec.name == "direct" else 2)
    return max(1, min(requested, spec.max_scale, fd_cap))


def run_benchmark(run: Run) -> tuple[Results, list[str]]:
    """Run everything; returns results[workload][tunnel] = samples, and notes (tunnels
    a workload skipped, scale runs capped)."""
    fd_limit = _raise_fd_limit()
    workdir = make_workdir()
    targets = Targets(workdir)
    results: Results = {w: {} for w in run.workloads}
    notes: list[str] = []
    specs = [TUNNELS[name] for name in run.tunnels]
    try:
        for round_no in range(run.rounds):
            order = specs[round_no % len(specs) :] + specs[: round_no % len(specs)]
            for workload in run.workloads:
                udp = UDP_WORKLOADS.get(workload)
                target, body = (udp.target, udp.run) if udp else WORKLOADS[workload]
                skipped: dict[str, list[str]] = {}
                for spec in order:
                    start, why = starter_for(spec, workload, run.sizes)
                    if start is None:
                        skipped.setdefault(why, []).append(spec.name)
                        continue
                    sample = _measure(
                        start,
                        functools.partial(targets.port, target),
                        workdir,
                        functools.partial(body, targets=targets, sizes=run.sizes),
                        after=flow_drops if udp else None,
                    )
                    sample["round"] = round_no
                    results[workload].setdefault(spec.name, []).append(sample)
                    run.log(
                        f"round {round_no + 1}/{run.rounds} {workload:10} {spec.name:11} "
                        f"{_brief(sample)}"
                    )
                if round_no == 0:
                    notes += [
                        f"{workload}: not run on {', '.join(sorted(names))} ({why})"
                        for why, names in skipped.items()
                    ]
        if run.scale:
            for requested in run.sizes.scale_counts:
                workload = f"scale-{requested}"
                results[workload] = {}
                for spec in specs:
                    count = scale_count(spec, requested, fd_limit)
                    if count < requested:
                        why = (
                            "forks a process per connection"
                            if count == spec.max_scale
                            else f"hard fd limit {fd_limit}: two sockets per connection"
                        )
                        notes.append(f"{workload}: {spec.name} ran {count} connections ({why})")
                    if count < requested and count == spec.max_scale and requested > count * 2:
                        continue  # its smaller size already ran; no point repeating it
                    targets.restart("echo")
                    sample = _measure(
                        spec.start,
                        functools.partial(targets.port, "echo"),
                        workdir,
                        functools.partial(scale, count=count),
                    )
                    sample["connections"] = count
                    results[workload][spec.name] = [sample]
                    run.log(f"{workload:12} {spec.name:11} {_brief(sample)}")
    finally:
        targets.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results, notes


def _brief(sample: dict[str, Any]) -> str:
    shown = {
        k: (f"{v:.3g}" if isinstance(v, float) else v)
        for k, v in sample.items()
        if k not in ("detail", "round")
    }
    text = " ".join(f"{k}={v}" for k, v in shown.items())
    return text if sample.get("ok") else f"{text} FAILED: {sample.get('detail', '')[:300]}"


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "?")
    memory = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        memory = next(
            (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("MemTotal")), "?"
        )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory": memory,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark wstun against websocat and friends.")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="profile",
        help="the quick subset: one short round, scale 200",
    )
    parser.add_argument("--rounds", type=int, help="rounds of the timed workloads")
    parser.add_argument(
        "--tunnels",
        default=",".join(DEFAULT_TUNNELS),
        help=f"comma-separated, from: {', '.join(TUNNELS)}",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(TIMED_WORKLOADS),
        help=f"comma-separated, from: {', '.join(TIMED_WORKLOADS)}",
    )
    parser.add_argument(
        "--scale", default=None, help="connection counts (comma-separated) or 'off'"
    )
    parser.add_argument(
        "--udp-rate", help="iperf-udp's offered rate, iperf3's -b (default: the profile's, 200M)"
    )
    parser.add_argument("--name", help="results file name (default: the profile)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended as Notes")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="BIN_DIR",
        help="also run wstun-base: the wstun-server/wstun-client in BIN_DIR (another build's "
        "venv/bin), to compare two builds in one run (and wstun-base-nopool beside "
        "wstun-nopool, if that build has --pool)",
    )
    args = parser.parse_args(argv)

    rounds, sizes = PROFILES[args.profile]
    if args.scale == "off":
        with_scale = False
    else:
        with_scale = True
        if args.scale:
            sizes = dataclasses.replace(
                sizes, scale_counts=tuple(int(n) for n in args.scale.split(","))
            )
    if args.udp_rate:
        sizes = dataclasses.replace(sizes, udp_rate=args.udp_rate)
    tunnels = [t for t in args.tunnels.split(",") if t]
    if args.baseline is not None:
        try:
            tunnels += add_baseline(args.baseline.resolve(), nopool="wstun-nopool" in tunnels)
        except FileNotFoundError as exc:
            parser.error(str(exc))
    workloads = [w for w in args.workloads.split(",") if w]
    for name in tunnels:
        if name not in TUNNELS:
            parser.error(f"unknown tunnel {name!r}")
    for name in workloads:
        if name not in WORKLOADS and name not in UDP_WORKLOADS:
            parser.error(f"unknown workload {name!r}")
    # Read before the run, not after it: a mistyped path must not cost the results.
    try:
        notes = args.notes.read_text() if args.notes else ""
    except OSError as exc:
        parser.error(f"--notes: {exc}")
    run = Run(tunnels, workloads, args.rounds or rounds, sizes, with_scale)

    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    machine["load_start"] = _load()
    results, run_notes = run_benchmark(run)
    machine["load_end"] = _load()
    name = args.name or args.profile
    meta = {
        "name": name,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
        "command": "python bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "versions": tool_versions(),
        "settings": {"profile": args.profile, "rounds": run.rounds, **dataclasses.asdict(sizes)},
        "run_notes": run_notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{started:%Y-%m-%d}-{name}"
    write_markdown(stem.with_suffix(".md"), meta, results, tunnels, notes)
    write_json(stem.with_suffix(".json"), meta, results)
    plotted = write_plot(stem.with_suffix(".png"), results, tunnels)
    print(f"wrote {stem}.md, {stem}.json" + (f", {stem}.png" if plotted else ""))
    failed = sum(1 for by in results.values() for ss in by.values() for s in ss if not s.get("ok"))
    return 1 if failed else 0
