"""Does the bearer-token check take the same time whichever user (if any) the token is?

    .venv/bin/python bench/tokens.py            # 200 rounds; 1, 1,000 and 10,000 users (~35 s)
    .venv/bin/python bench/tokens.py --quick    # 60 shorter rounds (~6 s)

``Users.identify`` hashes the token once and compares the digest with every
user's, in constant time and with no early exit (server/users.py), so the
time must not say which user matched, or whether one did. This times, in
one process, ``RequestChecks.identify(headers)`` (what the server runs for
every upgrade request: the ``Authorization`` header, ``Access.identify``,
the 401 for a wrong token) and ``Users.identify(token)`` (the comparison
loop alone), for a token of the first, the middle and the last user of N
and for a token of no user, with N = 1, 1,000 and 10,000 by default.

Every round times one short batch of calls (a few ms) of every case, the
cases of one layer and user count one after another, in an order rotated
from round to round, so a slow spell of the machine hits all cases alike.
Per case: the median and p10/p90 (nearest rank) over the rounds of the time
per call; the round-to-round noise is that p10-p90 spread as a percentage
of the case's median. The verdict compares the largest difference between
the cases' medians with the smallest noise among them; the same again
*paired*, each case against its neighbours of the same round, which takes
out the machine's drift (a virtual machine's CPU can change speed by half
several times a second). Writes bench/results/<date>-<name>.md; no timing
is asserted anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import hashlib
import importlib.metadata
import itertools
import math
import os
import secrets
import shlex
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.datastructures import Headers

from bench.runner import machine_info
from wstun.common import __version__
from wstun.common.protocol import Failure, HandshakeRejection
from wstun.server.handshake import RequestChecks
from wstun.server.policy import Policy
from wstun.server.users import TOKEN_BYTES, Access, User, Users, new_token, parse_users

__all__ = ["LAYERS", "PROFILES", "Case", "calls_for", "main", "make_users", "measure", "user_name"]

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

#: What is timed: the server's per-request check, and the comparison loop inside it.
LAYERS: dict[str, str] = {
    "request": "RequestChecks.identify(headers)",
    "users": "Users.identify(token)",
}
#: Per profile: rounds, and calls per round at 1,000 users (see :func:`calls_for`). Many
#: short rounds, so that the cases of one round are timed within ~30 ms of each other.
PROFILES: dict[str, tuple[int, int]] = {"full": (200, 100), "quick": (60, 50)}
DEFAULT_USERS = (1, 1000, 10_000)
#: The user count the headline verdict is about (when it was measured).
HEADLINE_USERS = 1000
#: What a refused token's outcome is recorded as.
REFUSED = "refused (401)"

_A = TypeVar("_A")
_R = TypeVar("_R")
_T = TypeVar("_T")


def user_name(index: int) -> str:
    """The name of the ``index``-th user (from 0) in the bench's users file."""
    return f"user-{index:05d}"


def make_users(count: int) -> tuple[list[User], list[str]]:
    """``count`` users made as ``wstun-server new-token`` makes them, and their tokens.

    Each user's TOML table goes through :func:`parse_users` on its own: one
    file of all of them would take minutes at 10,000 users (parse_users finds
    every user's line in the whole file, even when nothing is wrong)."""
    users: list[User] = []
    tokens: list[str] = []
    for index in range(count):
        token, table = new_token(user_name(index))
        (user,) = parse_users(table, f"<bench user {index}>").users
        users.append(user)
        tokens.append(token)
    return users, tokens


def file_seconds(count: int) -> float:
    """Seconds :func:`parse_users` takes over one file of ``count`` users."""
    text = "\n".join(new_token(user_name(index))[1] for index in range(count))
    start = time.perf_counter()
    users = parse_users(text, "<bench users file>")
    seconds = time.perf_counter() - start
    assert len(users.users) == count
    return seconds


def calls_for(users: int, calls: int) -> int:
    """Calls per round with ``users`` users: ``calls`` at 1,000, in inverse proportion
    elsewhere (at most 10x as many), so that every batch takes about as long."""
    return max(1, min(calls * 10, round(calls * 1000 / users)))


def _nearest_rank(ordered: Sequence[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclasses.dataclass
class Case:
    """One thing timed: a layer, a number of users, whose token (``index``; None: nobody's)."""

    layer: str
    users: int
    name: str
    index: int | None
    calls: int
    #: The user the token is (a name), or REFUSED.
    expected: str
    #: What the last call of every batch returned (the same, or the run stops).
    outcome: str = ""
    #: Nanoseconds per call, one per round.
    samples_ns: list[float] = dataclasses.field(default_factory=list)
    #: Per round, % above (or below) the median of that round's cases with as many
    #: users (same layer): the machine's drift from round to round taken out.
    paired_pct: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_ns) / 1000

    @property
    def p10_us(self) -> float:
        return _nearest_rank(sorted(self.samples_ns), 0.1) / 1000

    @property
    def p90_us(self) -> float:
        return _nearest_rank(sorted(self.samples_ns), 0.9) / 1000

    @property
    def noise_pct(self) -> float:
        """The p10-p90 spread over the rounds, as a percentage of the median."""
        return (self.p90_us - self.p10_us) / self.median_us * 100

    @property
    def paired_median(self) -> float:
        return statistics.median(self.paired_pct)

    @property
    def paired_noise(self) -> float:
        """The p10-p90 spread of the paired figures, in percentage points."""
        ordered = sorted(self.paired_pct)
        return _nearest_rank(ordered, 0.9) - _nearest_rank(ordered, 0.1)


def _headers(token: str) -> Headers:
    """An upgrade request's headers, as a client sends them, with this bearer token."""
    return Headers(
        {
            "Host": "tunnel.example:443",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "wstun.v2",
            "Authorization": f"Bearer {token}",
            "User-Agent": "wstun-client/" + __version__,
        }
    )


def _request_outcome(result: str | HandshakeRejection) -> str:
    if isinstance(result, HandshakeRejection):
        if result.failure is not Failure.UNAUTHORIZED:
            raise RuntimeError(f"token check answered {result.failure}: {result.reason}")
        return REFUSED
    return result


def _users_outcome(result: User | None) -> str:
    return REFUSED if result is None else result.name


def _batch(fn: Callable[[_A], _R], arg: _A, calls: int) -> tuple[int, _R]:
    """``calls`` calls of ``fn(arg)``: nanoseconds taken, and the last result."""
    result = fn(arg)  # not timed: the loop below then only repeats it
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, calls):
        result = fn(arg)
    return time.perf_counter_ns() - start, result


#: One case's batch: (ns, outcome).
Batch = Callable[[int], tuple[int, str]]


def _request_batch(checks: RequestChecks, headers: Headers) -> Batch:
    def batch(calls: int) -> tuple[int, str]:
        ns, result = _batch(checks.identify, headers, calls)
        return ns, _request_outcome(result)

    return batch


def _users_batch(users: Users, token: str) -> Batch:
    def batch(calls: int) -> tuple[int, str]:
        ns, result = _batch(users.identify, token, calls)
        return ns, _users_outcome(result)

    return batch


def _cases(
    layer: str, count: int, calls: int, users: Sequence[User], tokens: Sequence[str]
) -> list[tuple[Case, Batch]]:
    """The cases for ``count`` users: first, middle, last (those that differ) and nobody."""
    picks = [("first", 0)]
    if count > 2:
        picks.append(("middle", count // 2))
    if count > 1:
        picks.append(("last", count - 1))
    known = {user.token_sha256 for user in users}
    invalid = secrets.token_urlsafe(TOKEN_BYTES)  # as long as every real token
    while hashlib.sha256(invalid.encode()).digest() in known:
        invalid = secrets.token_urlsafe(TOKEN_BYTES)
    chosen: list[tuple[str, int | None, str]] = [(n, i, tokens[i]) for n, i in picks]
    chosen.append(("invalid", None, invalid))

    table = Users(tuple(users[:count]))
    checks = RequestChecks("/tunnel", Access(Policy(), None, table), None)
    out: list[tuple[Case, Batch]] = []
    for name, index, token in chosen:
        expected = REFUSED if index is None else user_name(index)
        case = Case(layer, count, name, index, calls, expected)
        batch = (
            _request_batch(checks, _headers(token))
            if layer == "request"
            else _users_batch(table, token)
        )
        out.append((case, batch))
    return out


def measure(
    plan: Mapping[int, int],
    rounds: int,
    layers: Sequence[str] = tuple(LAYERS),
    progress: Callable[[str], None] | None = None,
) -> list[Case]:
    """Time every case: ``plan`` maps a number of users to the calls per round.

    Every round runs one batch of every case (all layers, all user counts),
    the cases of a layer and user count back to back; both the order of
    those groups and the order within each turn by one from round to round.
    The garbage collector is off during each batch, as timeit does. Raises
    RuntimeError if any call identified someone else than its case's user
    (or refused a real token)."""
    biggest = max(plan)
    users, tokens = make_users(biggest)
    groups = [
        _cases(layer, count, calls, users, tokens)
        for layer in layers
        for count, calls in plan.items()
    ]
    work = [item for group in groups for item in group]

    def run(case: Case, batch: Batch, calls: int) -> int:
        enabled = gc.isenabled()
        gc.disable()
        try:
            ns, outcome = batch(calls)
        finally:
            if enabled:
                gc.enable()
        if outcome != case.expected:
            raise RuntimeError(
                f"{case.layer}, {case.users} users, {case.name}: got {outcome!r}, "
                f"expected {case.expected!r}"
            )
        case.outcome = outcome
        return ns

    for case, batch in work:  # warm-up, not counted
        run(case, batch, max(1, case.calls // 10))
    gc.collect()
    for number in range(rounds):
        for group in _turned(groups, number):
            for case, batch in _turned(group, number):
                case.samples_ns.append(run(case, batch, case.calls) / case.calls)
        if progress is not None and (number + 1) % max(1, rounds // 10) == 0:
            progress(f"round {number + 1}/{rounds}")
    cases = [case for case, _ in work]
    for same in _groups(cases).values():
        for number in range(rounds):
            middle = statistics.median(c.samples_ns[number] for c in same)
            for c in same:
                c.paired_pct.append((c.samples_ns[number] / middle - 1) * 100)
    return cases


def _turned(items: Sequence[_T], by: int) -> list[_T]:
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def _groups(cases: Sequence[Case]) -> dict[tuple[str, int], list[Case]]:
    """The cases by layer and number of users, in the order measured."""
    groups: dict[tuple[str, int], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.layer, case.users), []).append(case)
    return groups


# --- the verdict and the Markdown -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    layer: str
    users: int
    #: Largest difference between the cases' medians, % of the median of the medians.
    spread_pct: float
    #: The smallest of the cases' round-to-round noise (p10-p90 % of their median).
    noise_pct: float
    #: Paired within rounds: the largest difference between the cases' medians, and
    #: the smallest of their p10-p90 spreads (percentage points of the round's median).
    paired_spread: float
    paired_noise: float
    #: Paired: the largest difference among the valid tokens (None with one user).
    paired_valid_spread: float | None
    #: Paired: the invalid token's median against the valid ones', in % and in us.
    paired_invalid_pct: float | None
    invalid_us: float | None

    @property
    def inside(self) -> bool:
        return self.spread_pct <= self.noise_pct

    @property
    def paired_inside(self) -> bool:
        return self.paired_spread <= self.paired_noise

    def line(self) -> str:
        """The verdict: the cases' medians against the noise between rounds."""
        where = "inside" if self.inside else "outside"
        return (
            f"largest difference between cases: {self.spread_pct:.1f}% of the median, "
            f"{where} the round-to-round noise of {self.noise_pct:.1f}%"
        )

    def details(self) -> str:
        """The same paired within each round (drift taken out): all, valid, invalid."""
        where = "inside" if self.paired_inside else "outside"
        text = (
            f"paired within each round: {self.paired_spread:.1f}% apart, {where} the "
            f"round-to-round noise of {self.paired_noise:.1f}%"
        )
        if self.paired_valid_spread is not None:
            text += f"; the valid tokens alone {self.paired_valid_spread:.1f}% apart"
        if self.paired_invalid_pct is not None and self.invalid_us is not None:
            text += (
                f"; the invalid token {self.paired_invalid_pct:+.1f}% "
                f"({_us(self.invalid_us, signed=True)} us) against the valid ones"
            )
        return text


def verdicts(cases: Sequence[Case]) -> list[Verdict]:
    """One per layer and user count (in the order measured)."""
    out: list[Verdict] = []
    for (layer, count), group in _groups(cases).items():
        medians = [c.median_us for c in group]
        paired = [c.paired_median for c in group]
        valid = [c.paired_median for c in group if c.index is not None]
        invalid = [c.paired_median for c in group if c.index is None]
        middle = statistics.median(medians)
        invalid_pct = invalid[0] - statistics.median(valid) if invalid and valid else None
        out.append(
            Verdict(
                layer,
                count,
                spread_pct=(max(medians) - min(medians)) / middle * 100,
                noise_pct=min(c.noise_pct for c in group),
                paired_spread=max(paired) - min(paired),
                paired_noise=min(c.paired_noise for c in group),
                paired_valid_spread=max(valid) - min(valid) if len(valid) > 1 else None,
                paired_invalid_pct=invalid_pct,
                invalid_us=None if invalid_pct is None else invalid_pct / 100 * middle,
            )
        )
    return out


def _users(count: int) -> str:
    return "1 user" if count == 1 else f"{count:,} users"


def _us(value: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign},.1f}" if abs(value) >= 100 else f"{value:{sign}.2f}"


def case_table(cases: Sequence[Case]) -> list[str]:
    lines = [
        "| users | token | calls/round | median us | p10 us | p90 us | round noise "
        "| vs cases' median | paired: vs round's median (p10 .. p90) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in dict.fromkeys(c.users for c in cases):
        group = [c for c in cases if c.users == count]
        middle = statistics.median(c.median_us for c in group)
        for c in group:
            token = c.name if c.index is None else f"{c.name} (`{c.expected}`)"
            ordered = sorted(c.paired_pct)
            low, high = _nearest_rank(ordered, 0.1), _nearest_rank(ordered, 0.9)
            lines.append(
                f"| {count:,} | {token} | {c.calls:,} | {_us(c.median_us)} | {_us(c.p10_us)} | "
                f"{_us(c.p90_us)} | {c.noise_pct:.1f}% | "
                f"{(c.median_us - middle) / middle * 100:+.1f}% | "
                f"{c.paired_median:+.1f}% ({low:+.1f} .. {high:+.1f}) |"
            )
    return lines


def scaling_table(cases: Sequence[Case]) -> list[str]:
    layers = list(dict.fromkeys(c.layer for c in cases))
    counts = sorted({c.users for c in cases})
    per: dict[tuple[str, int], float] = {
        (layer, count): statistics.median(
            c.median_us for c in cases if c.layer == layer and c.users == count
        )
        for layer in layers
        for count in counts
    }
    head = "| users |"
    rule = "|---:|"
    for layer in layers:
        head += f" `{LAYERS[layer]}` us | ns per extra user |"
        rule += "---:|---:|"
    head += " checks/s per core |"
    rule += "---:|"
    lines = [head, rule]
    smallest = counts[0]
    for count in counts:
        row = f"| {count:,} |"
        for layer in layers:
            slope = "-"
            if count > smallest:
                extra = (per[layer, count] - per[layer, smallest]) * 1000 / (count - smallest)
                slope = f"{extra:.1f}"
            row += f" {_us(per[layer, count])} | {slope} |"
        row += f" {1e6 / per[layers[0], count]:,.0f} |"
        lines.append(row)
    return lines


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" with uncommitted changes" if dirty else "")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def write_markdown(
    path: Path,
    cases: Sequence[Case],
    meta: Mapping[str, str],
    machine: Mapping[str, object],
    settings: Mapping[str, object],
) -> None:
    layers = list(dict.fromkeys(c.layer for c in cases))
    out = [f"# wstun benchmark: token check ({meta['started']})", ""]
    out += [f"Command: `{meta['command']}`", ""]
    out += [
        "Whether the bearer-token check takes as long whichever user the token is, or "
        "none. `Users.identify` hashes the token once (SHA-256) and compares the digest "
        "with every user's with `hmac.compare_digest`, with no early exit. Timed in one "
        "process with `time.perf_counter_ns`: `RequestChecks.identify(headers)`, what "
        "the server runs for every upgrade request (the `Authorization: Bearer` header "
        "of a client's upgrade request, `Access.identify`, and for a wrong token the 401 "
        "answer it builds), and `Users.identify(token)`, the comparison loop alone; for "
        "the token of the first, the middle and the last of N users and a token "
        "of nobody (random, as long as a real one). The users are made as `wstun-server "
        "new-token` makes them and read by `parse_users`, one table at a time (the time "
        "to read a whole file is in the note under Settings).",
        "",
        "Every round times one short batch of calls of every case, the cases of one "
        "layer and user count back to back, in an order rotated from round to round, "
        "with the garbage collector off during a batch; a figure is the "
        "batch's time over its calls, in microseconds. Per case: median, p10 and p90 "
        f"(nearest rank) over the {settings['rounds']} rounds; *round noise* is p90 "
        "minus p10 as a percentage of the median; *vs cases' median* is the case's "
        "median against the median of the cases with as many users. *paired* takes the "
        "machine's drift out (this one's CPU changes speed by up to half, several times "
        "a second): per round, the case against the median of that round's "
        "cases with as many users, in %; the median over the rounds and p10 .. p90. "
        "Every batch's outcome was checked: each valid token identified its user, the "
        "invalid one was refused.",
        "",
    ]
    out += ["## Verdict", ""]
    for v in verdicts(cases):
        line = v.line()
        if (v.layer, v.users) == ("request", HEADLINE_USERS):
            line = f"**{line}**"
        out.append(f"- `{LAYERS[v.layer]}`, {_users(v.users)}: {line}; {v.details()}")
    out += [
        "",
        "*Inside the noise*: the largest difference between the cases' medians is at "
        "most the smallest round-to-round noise among them. A wrong token also makes "
        "`RequestChecks.identify` build its 401 answer, which a valid one doesn't: a "
        "fixed cost whatever the number of users, and nothing the client doesn't learn "
        "from the answer itself; `Users.identify` has no such step.",
        "",
    ]
    for layer in layers:
        title = {
            "request": "what the server runs per upgrade request",
            "users": "the comparison loop alone",
        }[layer]
        out += [f"## `{LAYERS[layer]}`: {title}", ""]
        out += case_table([c for c in cases if c.layer == layer])
        out.append("")
    out += ["## Scaling", ""]
    out += [
        "The median of the cases' medians, per call; *ns per extra user* is against the "
        "fewest users measured; *checks/s per core* is one core doing nothing but "
        f"`{LAYERS[layers[0]]}`.",
        "",
    ]
    out += scaling_table(cases)
    out += ["", "## Tools", ""]
    out += [f"- {k}: {v}" for k, v in meta.items() if k not in ("started", "command")]
    out += ["", "## Machine", ""]
    out += [f"- {k}: {v}" for k, v in machine.items()]
    out += ["", "## Settings", ""]
    out += [f"- {k}: {v}" for k, v in settings.items()]
    path.write_text("\n".join(out) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time the bearer-token check per user position (see the module docstring)."
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="profile",
        help="60 rounds of 50 calls (at 1,000 users)",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default: the profile's)")
    parser.add_argument(
        "--calls",
        type=int,
        help="calls per round at 1,000 users (default: the profile's); in inverse "
        "proportion for other user counts, at most 10x as many",
    )
    parser.add_argument(
        "--users",
        default=",".join(str(n) for n in DEFAULT_USERS),
        help="comma-separated user counts",
    )
    parser.add_argument(
        "--layers", default=",".join(LAYERS), help=f"comma-separated, from: {', '.join(LAYERS)}"
    )
    parser.add_argument("--name", help="results file name (default: token-check[-quick])")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)

    rounds, calls = PROFILES[args.profile]
    rounds = args.rounds if args.rounds is not None else rounds
    calls = args.calls if args.calls is not None else calls
    try:
        counts = sorted({int(n) for n in args.users.split(",") if n.strip()})
    except ValueError:
        parser.error("--users: comma-separated whole numbers")
    layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    if not counts or not all(1 <= n <= 100_000 for n in counts):
        parser.error("--users: each 1-100000")
    if not layers or set(layers) - set(LAYERS):
        parser.error(f"--layers: from {', '.join(LAYERS)}")
    if not 3 <= rounds <= 10_000 or not 1 <= calls <= 1_000_000:
        parser.error("--rounds must be 3-10000 and --calls 1-1000000")
    name = args.name or ("token-check" if args.profile == "full" else f"token-check-{args.profile}")

    plan = {count: calls_for(count, calls) for count in counts}
    command = shlex.join(["python", "bench/tokens.py", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.datetime.now(datetime.UTC)
    machine: dict[str, object] = {**machine_info(), "load_start": _load()}
    print(f"[tokens] {rounds} rounds, calls per round {plan}, layers {layers}", flush=True)
    begun = time.monotonic()
    cases = measure(plan, rounds, layers, progress=lambda s: print(f"[tokens] {s}", flush=True))
    machine["load_end"] = _load()
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "python": sys.version.split()[0],
        "wstun": f"{__version__} (git {_git()})",
        "websockets": importlib.metadata.version("websockets"),
        "hashlib": f"sha256 from {ssl.OPENSSL_VERSION}",
    }
    settings = {
        "profile": args.profile,
        "rounds": rounds,
        "calls per round": ", ".join(
            f"{calls:,} at {_users(count)}" for count, calls in plan.items()
        ),
        "layers": ", ".join(layers),
        "seconds": round(time.monotonic() - begun),
    }
    loaded = min(HEADLINE_USERS, max(counts))
    settings["note"] = (
        f"parse_users over one file of {loaded:,} users took {file_seconds(loaded):.2f} s "
        "here (what a start or a reload of such a file costs)"
    )
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{started:%Y-%m-%d}-{name}.md"
    write_markdown(path, cases, meta, machine, settings)
    print(path.read_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
