"""The load-balancer demonstration: each row of DESIGN.md's table, measured.

For one row the driver switches the running stack to it (``tessera_stack
row N``: the replicas restart, nginx reloads), then:

1. logs in K simulated users, each from its own loopback address;
2. *before*: each user sends a burst of authenticated requests
   (``GET /api/me``, ``GET /api/comments``, ``POST /api/comments``);
3. *kill*: while every user keeps sending ``GET`` requests, one replica is
   SIGKILLed (``tessera_stack kill-replica``; nginx is not told);
4. *after*: each user sends another full burst.

It records, per user, which replica answered (``X-Served-By``) and whether
the answer was an authenticated 2xx (``X-Auth-Method`` not ``none``). A
user is *lost* when it had a successful request before the kill and has
none after it; an *error* is a 5xx or a failed connection. Request counts
and timeouts are bounded and all traffic stays on loopback.

The users are :mod:`tessera_demo.users`; the stack is switched and killed
through :mod:`tessera_demo.stack_control`. Used by ``python -m tessera_demo
demo`` (``make demo``, :mod:`tessera_demo.cli`) and by the tests, which
assert on :class:`RowReport` directly.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tessera_demo.stack_control import StackControl
from tessera_demo.tables import align_columns
from tessera_demo.users import DemoUser, Exchange, demo_users, login, register
from tessera_stack.rows import ROWS, Row

__all__ = [
    "DEFAULT_ROUNDS",
    "DEFAULT_USERS",
    "LEGEND",
    "Phase",
    "RowReport",
    "format_table",
    "run_row",
]

DEFAULT_USERS = 12
DEFAULT_ROUNDS = 8
# The GET stream that overlaps the kill stops this many requests per user
# after the kill, and never runs longer than the cap.
AFTER_KILL_GETS = 3
MAX_KILL_PHASE_GETS = 300


@dataclass(frozen=True)
class Phase:
    """Every exchange of one phase, by user."""

    by_user: dict[str, tuple[Exchange, ...]]

    def exchanges(self) -> list[Exchange]:
        return [exchange for log in self.by_user.values() for exchange in log]

    @property
    def total(self) -> int:
        return len(self.exchanges())

    @property
    def ok(self) -> int:
        return sum(1 for exchange in self.exchanges() if exchange.ok)

    @property
    def errors(self) -> int:
        return sum(1 for exchange in self.exchanges() if exchange.failed)

    @property
    def success_rate(self) -> float:
        return self.ok / self.total if self.total else 0.0

    def served_by(self) -> Counter[str]:
        """Responses per replica (any status)."""
        return Counter(e.served_by for e in self.exchanges() if e.served_by is not None)

    def ok_for(self, user: str) -> int:
        return sum(1 for exchange in self.by_user.get(user, ()) if exchange.ok)

    def replicas_for(self, user: str) -> set[str]:
        """The replicas that answered ``user``'s successful requests."""
        return {e.served_by for e in self.by_user.get(user, ()) if e.ok and e.served_by}


@dataclass(frozen=True)
class RowReport:
    """What happened to one row: before, while killing, after."""

    row: Row
    policy: str
    replicas: tuple[str, ...]
    users: tuple[str, ...]
    #: The replica that served each user's login (rows with logins at the
    #: replica), else ``None``.
    homes: dict[str, str | None]
    login_failures: tuple[str, ...]
    before: Phase
    killed: str
    during: Phase
    after: Phase

    @property
    def lost_users(self) -> tuple[str, ...]:
        """Users with a success before the kill and none after it."""
        return tuple(
            user
            for user in self.users
            if self.before.ok_for(user) > 0 and self.after.ok_for(user) == 0
        )

    @property
    def users_of_killed(self) -> tuple[str, ...]:
        """Users whose session lived on the killed replica (replica logins only)."""
        return tuple(user for user in self.users if self.homes.get(user) == self.killed)

    @property
    def errors(self) -> int:
        """5xx answers and failed connections, logins included, in every phase."""
        return (
            len(self.login_failures) + self.before.errors + self.during.errors + self.after.errors
        )

    def unexpected(self) -> list[str]:
        """How this row differs from DESIGN.md's table (empty when it matches)."""
        found: list[str] = []
        number = self.row.number
        if number == 1:
            if self.before.success_rate >= 0.5:
                found.append(f"{self.before.success_rate:.0%} succeeded; most should fail")
            return found
        if self.before.ok != self.before.total:
            found.append(f"only {self.before.ok}/{self.before.total} succeeded before the kill")
        if self.errors:
            found.append(f"{self.errors} errors")
        lost = set(self.lost_users)
        if number in (2, 3):
            expected = set(self.users_of_killed)
            if not expected:
                found.append(f"no user lived on the killed replica {self.killed}")
            if lost != expected:
                found.append(
                    f"lost {sorted(lost)}; expected exactly {self.killed}'s users "
                    f"{sorted(expected)}"
                )
        elif lost or self.after.ok != self.after.total:
            found.append(f"lost {len(lost)} users, {self.after.ok}/{self.after.total} after")
        return found


# -- phases -----------------------------------------------------------------------


def _script(index: int) -> tuple[str, str, dict[str, Any] | None]:
    """The ``index``-th request of a full burst: mostly reads, some writes."""
    step = index % 4
    if step in (0, 3):
        return "GET", "/api/me", None
    if step == 1:
        return "GET", "/api/comments", None
    return "POST", "/api/comments", {"body": f"comment {index}"}


async def _burst(
    users: Sequence[DemoUser], base_url: str, rounds: int, rng: random.Random
) -> Phase:
    """``rounds`` rounds in which every user sends one request, all at once.

    Each round goes out in a fresh shuffled order. Real users do not march
    in step; simulated ones that did would each meet the same replica in
    every round under round-robin (12 users, 3 replicas: request k of
    every round lands on replica k mod 3), and row 1 would look better or
    worse than it is depending on where each user happened to log in.
    """
    logs: dict[str, list[Exchange]] = {user.name: [] for user in users}
    for index in range(rounds):
        method, path, body = _script(index)
        order = list(users)
        rng.shuffle(order)
        results = await asyncio.gather(
            *(user.request(base_url, method, path, body) for user in order)
        )
        for user, exchange in zip(order, results, strict=True):
            logs[user.name].append(exchange)
    return Phase({name: tuple(log) for name, log in logs.items()})


async def _gets_across(
    users: Sequence[DemoUser], base_url: str, event: Callable[[], Awaitable[None]]
) -> Phase:
    """Every user streams GETs while ``event`` runs, and a few more after it.

    Every user has had an answer before ``event`` starts and keeps sending
    while it runs, so the kill lands in the middle of traffic, as a crash
    would.
    """
    started = [asyncio.Event() for _ in users]
    finished = asyncio.Event()

    async def stream(
        user: DemoUser, first_answer: asyncio.Event
    ) -> tuple[str, tuple[Exchange, ...]]:
        log: list[Exchange] = []
        remaining_after = AFTER_KILL_GETS
        while len(log) < MAX_KILL_PHASE_GETS and remaining_after > 0:
            path = "/api/me" if len(log) % 2 == 0 else "/api/comments"
            log.append(await user.request(base_url, "GET", path))
            first_answer.set()
            if finished.is_set():
                remaining_after -= 1
        return user.name, tuple(log)

    failures: list[Exception] = []

    async def trigger() -> None:
        await asyncio.gather(*(flag.wait() for flag in started))
        try:
            await event()
        except Exception as exc:  # re-raised once the streams have ended
            failures.append(exc)
        finally:
            finished.set()

    streams = asyncio.gather(*(stream(u, flag) for u, flag in zip(users, started, strict=True)))
    results, _ = await asyncio.gather(streams, trigger())
    if failures:
        raise failures[0]
    return Phase(dict(results))


def _choose_victim(
    row: Row, replicas: Sequence[str], homes: dict[str, str | None], before: Phase
) -> str:
    """The replica to kill: the one most users live on (replica logins), else the busiest."""
    if row.login == "replica":
        counts = Counter(home for home in homes.values() if home is not None)
    else:
        counts = before.served_by()
    # Most users (or requests) first, then the lowest replica number.
    return min(replicas, key=lambda rid: (-counts.get(rid, 0), int(rid[1:])))


async def run_row(
    control: StackControl,
    number: int,
    *,
    users: int = DEFAULT_USERS,
    rounds: int = DEFAULT_ROUNDS,
    policy: str | None = None,
    one_network: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> RowReport:
    """Switch the stack to row ``number`` and measure it (see the module docstring).

    ``policy`` overrides the row's nginx policy; ``one_network`` puts every
    user in one /24 (see :func:`source_address`).
    """
    row = ROWS[number]
    progress(f"row {number}: switching the stack ({row.methods}, {policy or row.policy})")
    await control.switch_row(number, policy)
    state = control.state()
    replicas = tuple(entry.id for entry in state.replicas)
    base_url = control.base_url
    async with demo_users(users, control.ca_cert, one_network=one_network) as people:
        await register(people, base_url)
        progress(f"row {number}: logging in {users} users")
        logins = await asyncio.gather(*(login(user, base_url, row) for user in people))
        login_failures = tuple(
            user.name for user, login in zip(people, logins, strict=True) if login.status != 200
        )
        homes = {user.name: user.home for user in people}
        progress(f"row {number}: burst of {users}x{rounds} requests")
        # Seeded: the same row shuffles the same way every time. Not for security.
        rng = random.Random(f"tessera-demo-row-{number}")  # noqa: S311
        before = await _burst(people, base_url, rounds, rng)
        victim = _choose_victim(row, replicas, homes, before)
        progress(f"row {number}: killing {victim} under a stream of GETs")
        during = await _gets_across(people, base_url, lambda: control.kill_replica(victim))
        progress(f"row {number}: burst after the kill")
        after = await _burst(people, base_url, rounds, rng)
    return RowReport(
        row=row,
        policy=state.policy,
        replicas=replicas,
        users=tuple(user.name for user in people),
        homes=homes,
        login_failures=login_failures,
        before=before,
        killed=victim,
        during=during,
        after=after,
    )


# -- output -------------------------------------------------------------------------


def _shares(phase: Phase, replicas: Sequence[str]) -> str:
    counts = phase.served_by()
    total = sum(counts.values()) or 1
    return "/".join(f"{round(100 * counts.get(rid, 0) / total)}" for rid in replicas)


def format_table(reports: Sequence[RowReport]) -> str:
    """The compact table ``make demo`` prints: one line per row."""
    replica_sets = {report.replicas for report in reports}
    ids = max(replica_sets, key=len) if replica_sets else ()
    share_header = f"% by {'/'.join(ids)}" if ids else "% by replica"
    header = (
        "row",
        "sessions in / nginx policy",
        "ok before",
        share_header,
        "killed",
        "ok after",
        "users lost",
        "errors",
        "as designed",
    )
    lines: list[tuple[str, ...]] = [header]
    for report in reports:
        unexpected = report.unexpected()
        lines.append(
            (
                str(report.row.number),
                f"{report.row.state} / {report.policy}",
                f"{report.before.success_rate:.0%}",
                _shares(report.before, report.replicas),
                report.killed,
                f"{report.after.success_rate:.0%}",
                f"{len(report.lost_users)} of {len(report.users)}",
                str(report.errors),
                "yes" if not unexpected else "NO: " + "; ".join(unexpected),
            )
        )
    return align_columns(lines)


LEGEND = (
    "ok = authenticated 2xx; % by = who answered before the kill; killed = the replica\n"
    "SIGKILLed under a stream of GETs; users lost = had a success before, none after;\n"
    "errors = 5xx or failed connections a user saw (logins and the kill included)."
)
