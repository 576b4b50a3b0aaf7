"""Where a tunnel's CPU goes under one workload, client and server side apart.

    .venv/bin/python bench/profile.py --tunnel wstun --workload churn [--out FILE.md]

Starts the tunnel and the workload's target as bench/run.py does, runs the
workload once while ``py-spy record`` samples every process of the tunnel
(``--format raw``: collapsed stacks), and writes, per side, the functions
with the most samples on top of the stack (self time) and the most samples
anywhere in the stack (total time, leaving out the frames on at least half
of the stacks: the way in), as Markdown. Needs py-spy (the bench
extra) and permission to trace the processes (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runner import UDP_WORKLOADS, WORKLOADS, starter_for
from bench.tunnels import TUNNELS, find_tool
from bench.workloads import Sizes, Targets, make_workdir

#: Long enough for py-spy's rate to give a few thousand samples per side.
SIZES = Sizes(
    iperf_seconds=5.0,
    iperf_bytes=None,
    redis_requests_1=40_000,
    redis_requests_50=200_000,
    churn_seconds=5,
    churn_connections=10,
    bulk_bytes=8 << 20,
    scale_counts=(),
    udp_seconds=5,
    dns_seconds=5,
)


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines apart are one entry."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(path).name})" if path else name


def summarise(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Samples, the ``top`` functions by self samples and by total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # py-spy's first frame is the process/thread label: skip it.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    # Frames on (almost) every stack are the way in (click, asyncio's runner): not news.
    inner = collections.Counter({k: n for k, n in total.items() if n < 0.5 * samples})
    return samples, own.most_common(top), inner.most_common(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tunnel", default="wstun", choices=sorted(TUNNELS))
    parser.add_argument("--workload", default="churn", choices=sorted([*WORKLOADS, *UDP_WORKLOADS]))
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, help="Markdown file (default: stdout)")
    args = parser.parse_args(argv)

    udp = UDP_WORKLOADS.get(args.workload)
    target_name, workload = (udp.target, udp.run) if udp else WORKLOADS[args.workload]
    start, why = starter_for(TUNNELS[args.tunnel], args.workload, SIZES)
    if start is None:
        parser.error(f"{args.tunnel} does not run {args.workload}: {why}")
    workdir = make_workdir()
    targets = Targets(workdir)
    tunnel = start(targets.port(target_name), workdir)
    spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    try:
        for proc in tunnel.procs:
            raw = workdir / f"{proc.name}-{proc.pid}.txt"
            spy = subprocess.Popen(
                [
                    *(find_tool("py-spy"), "record", "--format", "raw", "--rate", str(args.rate)),
                    *("--nonblocking", "--pid", str(proc.pid), "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            spies.append((proc.name, raw, spy))
        time.sleep(1.0)  # py-spy attaches; nothing else to wait on
        started = time.monotonic()
        result = workload(tunnel, targets=targets, sizes=SIZES)
        seconds = time.monotonic() - started
    finally:
        for _, _, spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        for _, _, spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        tunnel.stop()
        targets.stop()

    figures = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.items()
        if k not in ("detail",)
    )
    out = [
        f"### {args.tunnel}, {args.workload} ({seconds:.1f} s, py-spy {args.rate} Hz)",
        "",
        f"Workload: {figures}",
        "",
    ]
    for name, raw, _ in spies:
        if not raw.exists():
            out += [f"{name}: no profile (py-spy could not attach)", ""]
            continue
        samples, own, total = summarise(raw, args.top)
        out += [f"#### {name}: {samples} samples", "", "| self | function | | total | function |"]
        out += ["|---:|---|---|---:|---|"]
        for (own_name, own_n), (tot_name, tot_n) in zip(own, total, strict=False):
            out.append(
                f"| {100 * own_n / samples:.1f}% | `{own_name}` | | "
                f"{100 * tot_n / samples:.1f}% | `{tot_name}` |"
            )
        out.append("")
    text = "\n".join(out) + "\n"
    if args.out is not None:
        with args.out.open("a") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
