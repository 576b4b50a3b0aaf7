"""A point-to-point link with a fixed one-way delay, between two network namespaces.

This kernel has no netem, so the delay is made here: one TUN device in each
namespace, and this process moving every packet from one to the other after
holding it for ``--delay-ms``. TCP runs end to end in the kernels of the two
namespaces; the round trip is twice the delay.

    python bench/delaylink.py --ns-a NS_A --ns-b NS_B [--dev NAME] [--delay-ms 20]

The devices are created (named ``--dev`` in both namespaces) and the line
``ready sched=...`` is printed once both exist; addresses and ``up`` are left to the
caller (``ip -n NS addr add ... peer ... dev NAME``). They disappear when the
process exits (SIGTERM or SIGINT), which prints its counters on stderr.

Packets wait in one heap keyed by release time (then arrival order), and every
wake-up drains both devices and releases everything due, so a burst is held
for the delay once, not once per packet. The wait uses ``select`` (microsecond
timeout) rather than ``epoll`` (millisecond, rounded up), with a 1 ns timer
slack, and the process runs SCHED_FIFO (``--rt-priority``) so that the
tunnels and their CPU-hungry start-up on a small machine don't hold packets;
the counters say how late packets left (``late_max_ms``, ``late_over_1ms``).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import fcntl
import heapq
import os
import select
import signal
import struct
import sys
import time
from types import FrameType

__all__ = ["enter_netns", "open_tun"]

CLONE_NEWNET = 0x40000000
PR_SET_TIMERSLACK = 29
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
#: Larger than any packet a TUN device with the default MTU hands over.
READ_SIZE = 65536

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``
    (``/run/netns/NAME`` or ``/proc/PID/ns/net``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}", path)
    finally:
        os.close(fd)


def open_tun(name: str) -> int:
    """Create TUN device ``name`` (IP packets, no extra header) in the calling
    thread's namespace; returns its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
        os.set_blocking(fd, False)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Counters:
    """What the link did, printed when it stops."""

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.dropped = 0
        #: Why writes failed: errno name -> count.
        self.drop_errors: collections.Counter[str] = collections.Counter()
        self.late_max = 0.0
        self.late_sum = 0.0
        #: Packets released more than 1 ms after they were due.
        self.late_1ms = 0
        self.queue_max = 0

    def line(self) -> str:
        late_mean = self.late_sum / self.packets if self.packets else 0.0
        return (
            f"delaylink: packets={self.packets} bytes={self.bytes} dropped={self.dropped} "
            f"queue_max={self.queue_max} late_mean_ms={late_mean * 1000:.3f} "
            f"late_max_ms={self.late_max * 1000:.3f} late_over_1ms={self.late_1ms}"
            + "".join(f" drop_{name}={count}" for name, count in sorted(self.drop_errors.items()))
        )


def forward(fd_a: int, fd_b: int, delay: float, counters: Counters) -> None:
    """Move packets a -> b and b -> a, each ``delay`` seconds after it was read. Never returns."""
    peer = {fd_a: fd_b, fd_b: fd_a}
    # (release time, arrival number, destination fd, packet)
    queue: list[tuple[float, int, int, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([fd_a, fd_b], [], [], timeout)
        if readable:
            now = time.monotonic()
            for fd in readable:
                while True:
                    try:
                        packet = os.read(fd, READ_SIZE)
                    except BlockingIOError:
                        break
                    heapq.heappush(queue, (now + delay, seq, peer[fd], packet))
                    seq += 1
            counters.queue_max = max(counters.queue_max, len(queue))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            release, _, out, packet = heapq.heappop(queue)
            try:
                os.write(out, packet)
            except OSError as exc:
                counters.dropped += 1  # a full device queue: the packet is lost, as on a wire
                counters.drop_errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                continue
            late = now - release
            counters.packets += 1
            counters.bytes += len(packet)
            counters.late_sum += late
            counters.late_max = max(counters.late_max, late)
            counters.late_1ms += late > 0.001


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns-a", required=True, help="first network namespace (ip netns name)")
    parser.add_argument("--ns-b", required=True, help="second network namespace")
    parser.add_argument("--dev", default="rtt0", help="TUN device name in both namespaces")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay")
    parser.add_argument(
        "--rt-priority",
        type=int,
        default=10,
        help="SCHED_FIFO priority for this process (0: none), so a busy CPU doesn't hold packets",
    )
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Wake up when a packet is due, not up to the default 50 us later, and
    # before the processes whose packets these are (when allowed: root).
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    sched = "other"
    if args.rt_priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.rt_priority))
            sched = f"fifo:{args.rt_priority}"
        except OSError as exc:
            print(f"delaylink: no real-time priority ({exc}); delays may stretch", file=sys.stderr)
    # Each TUN device belongs to the namespace its /dev/net/tun was opened in.
    enter_netns(f"/run/netns/{args.ns_a}")
    fd_a = open_tun(args.dev)
    enter_netns(f"/run/netns/{args.ns_b}")
    fd_b = open_tun(args.dev)
    print(f"ready sched={sched}", flush=True)
    counters = Counters()
    try:
        forward(fd_a, fd_b, args.delay_ms / 1000.0, counters)
    finally:
        print(counters.line(), file=sys.stderr, flush=True)
        os.close(fd_a)
        os.close(fd_b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
