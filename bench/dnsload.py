"""A small DNS load generator, for when dnsperf is not installed.

``python bench/dnsload.py PORT --queries N --sources K --window W --seconds S``
sends up to N A queries for ``bench.example`` to 127.0.0.1:PORT from K UDP
sockets (each its own source address, so a flow of its own through a UDP
tunnel), with at most W queries outstanding in all, for at most S seconds;
then waits up to ``--timeout`` for the answers still due. A query not
answered within the timeout is lost (a late answer is not counted again).
Every answer must carry the query's id and ``10.9.9.9``. It prints one JSON
line: sent, answered, lost, bad, seconds, qps, p50_ms, p99_ms.

Everything here is bounded: N queries, S seconds of sending, the timeout
of draining.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import time
from collections.abc import Sequence

__all__ = ["ANSWER", "NAME", "check_answer", "percentile", "query", "query_once"]

#: The name the benchmark's dnsmasq answers (--address=/bench.example/10.9.9.9).
NAME = "bench.example"
ANSWER = "10.9.9.9"


def query(qid: int, name: str = NAME) -> bytes:
    """A DNS query for ``name`` IN A, recursion desired, id ``qid``, no EDNS."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def check_answer(data: bytes, answer: str = ANSWER) -> int | None:
    """The id of an answer with rcode 0 whose (last) A record is ``answer``, else None."""
    if len(data) < 12 + 4:
        return None
    qid, flags, _, ancount = struct.unpack("!HHHH", data[:8])
    if not flags & 0x8000 or flags & 0x000F or ancount < 1:
        return None
    if data[-4:] != socket.inet_aton(answer):
        return None
    return int(qid)


def query_once(port: int, timeout: float = 1.0) -> bool:
    """One query to 127.0.0.1:``port``; whether the right answer came back in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query(4242), ("127.0.0.1", port))
            data = sock.recv(4096)
        except OSError:
            return False
    return check_answer(data) == 4242


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run(
    port: int, *, queries: int, sources: int, window: int, seconds: float, timeout: float
) -> dict[str, float | int | None]:
    socks = []
    selector = selectors.DefaultSelector()
    for index in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
        selector.register(sock, selectors.EVENT_READ, index)
    #: id -> (the source it went from, when). Ids are one sequence over all the
    #: sources, so an answer that comes back to another source than its query's
    #: (a tunnel mixing flows up) is caught: it counts as bad, the query as lost.
    due: dict[int, tuple[int, float]] = {}
    latencies: list[float] = []
    sent = answered = lost = bad = errors = 0
    next_id = 0
    started = time.monotonic()
    stop_sending = started + seconds
    try:
        while True:
            now = time.monotonic()
            sending = sent < queries and now < stop_sending
            if not sending and not due:
                break
            if not sending and now > stop_sending + timeout:
                break  # the drain is bounded too
            while sending and len(due) < window and sent < queries:
                index = sent % sources
                qid = next_id
                next_id = (next_id + 1) & 0xFFFF
                if qid in due:  # 65,536 queries later, still unanswered: lost
                    lost += 1
                    del due[qid]
                try:
                    socks[index].send(query(qid))
                except BlockingIOError:
                    break
                except OSError:
                    errors += 1
                    break
                due[qid] = (index, time.monotonic())
                sent += 1
            for ready, _ in selector.select(0.01 if sending else 0.05):
                index = ready.data
                for _ in range(window):
                    try:
                        data = socks[index].recv(4096)
                    except BlockingIOError:
                        break
                    except OSError:  # ICMP port unreachable, on a connected socket
                        errors += 1
                        break
                    received = time.monotonic()
                    answer_id = check_answer(data)
                    entry = None if answer_id is None else due.get(answer_id)
                    if answer_id is None or entry is None or entry[0] != index:
                        bad += 1
                        continue
                    del due[answer_id]
                    answered += 1
                    latencies.append(received - entry[1])
            now = time.monotonic()
            expired = [qid for qid, (_, when) in due.items() if now - when > timeout]
            for qid in expired:
                del due[qid]
            lost += len(expired)
    finally:
        for sock in socks:
            selector.unregister(sock)
            sock.close()
        selector.close()
    lost += len(due)
    elapsed = time.monotonic() - started
    latencies.sort()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return {
        "sent": sent,
        "answered": answered,
        "lost": lost,
        "bad": bad,
        "errors": errors,
        "seconds": elapsed,
        "qps": answered / elapsed if elapsed > 0 else 0.0,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = run(
        args.port,
        queries=args.queries,
        sources=args.sources,
        window=args.window,
        seconds=args.seconds,
        timeout=args.timeout,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
