"""What a Redis outage looks like to clients behind nginx: ``outage-probe``.

The probe logs a few users in at the running stack (rows 4-6, whose
credentials are checked against Redis), has each stream ``GET /api/me``
through nginx, takes the stack's own Redis away and brings it back:

- ``stop``: SIGSTOP, a hung Redis (connections open, nothing answers), then
  SIGCONT;
- ``kill``: SIGKILL, a crash, then ``python -m tessera_stack up``, which
  restarts Redis on its recorded port with its AOF.

Redis stays away until a client has been refused (after ``--hold``
seconds at least, ``--max-hold`` at most), and the users keep streaming
until each of them has been served again after Redis came back. The report
says what they saw: how many requests failed and how (503 with the JSON
error is the designed answer; 502 or a failed connection is not), and the
seconds from "Redis is back" (SIGCONT; for a kill, its first answer to
PING) to the first authenticated 2xx. Request counts and durations are
bounded; everything stays on loopback. Times are reported, never judged:
this machine's speed is not the stack's property.

Used by ``python -m tessera_demo outage-probe`` and by
tests/test_stack_redis_outage.py (which records the figures as JUnit
properties).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from tessera_demo.revoked_clients import RevokedClients
from tessera_demo.stack_control import StackControl
from tessera_demo.users import (
    DemoUser,
    Exchange,
    authenticated_ok,
    demo_users,
    login,
    register,
    source_address,
)
from tessera_stack.processes import StackError, is_alive
from tessera_stack.redis_faults import SLOTS, FaultTarget, find_target, repair, store_is_back
from tessera_stack.rows import ROWS, Row

__all__ = [
    "DEFAULT_CHURNERS",
    "DEFAULT_HOLD",
    "DEFAULT_MAX_HOLD",
    "DEFAULT_REVOKED",
    "DEFAULT_USERS",
    "HOW",
    "Answer",
    "OutageReport",
    "probe_redis_outage",
]

HOW = ("stop", "kill")
DEFAULT_USERS = 4
#: Users whose credentials were revoked before the fault, and users logging
#: in and out through it (tessera_demo.revoked_clients).
DEFAULT_REVOKED = 2
DEFAULT_CHURNERS = 2
DEFAULT_HOLD = 3.0
# Redis comes back after this long even if no client was refused meanwhile
# (a verifier that keeps accepting credentials with Redis gone: a finding).
DEFAULT_MAX_HOLD = 30.0
USER_PREFIX = "outage-user-"
REVOKED_PREFIX = "outage-revoked-"
MIDFAULT_PREFIX = "outage-midfault-"
CHURN_PREFIX = "outage-churn-"
PATH = "/api/me"
# Per user, between two requests: keeps a 503 storm from starving the stack.
PAUSE = 0.02
REQUEST_TIMEOUT = 10.0
MAX_REQUESTS_PER_USER = 5000
# Bounds on each wait; the probe gives up (StackError) past them.
MAX_WAIT = 60.0
POLL = 0.01
LOGIN_ATTEMPTS = 20
DEPENDENCY_UNAVAILABLE = "dependency_unavailable"

BringBack = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Answer:
    """One request as a client saw it; times are ``time.monotonic()``."""

    user: str
    sent: float
    answered: float
    status: int | None
    #: The JSON body's ``error`` code, or the client-side exception's name.
    error: str | None = None
    retry_after: str | None = None
    auth_method: str | None = None

    @property
    def ok(self) -> bool:
        """An authenticated 2xx."""
        return authenticated_ok(self.status, self.auth_method)

    @property
    def refused(self) -> bool:
        """The designed answer while a dependency is down: 503 with the JSON error."""
        return self.status == 503 and self.error == DEPENDENCY_UNAVAILABLE


@dataclass(frozen=True)
class OutageReport:
    """A Redis outage as the streaming clients saw it."""

    how: str
    row: Row
    policy: str
    users: tuple[str, ...]
    down_at: float
    back_at: float
    answers: tuple[Answer, ...]
    #: "single", "sentinel" or "cluster", and what was taken away.
    topology: str = "single"
    target: str = "Redis (AOF)"
    #: When every user had been served again (the end of "during").
    recovered_at: float = 0.0
    revoked: RevokedClients | None = None
    #: Seconds ``up`` took to make a group whole again after the fault (not measured
    #: as unavailability: the store served meanwhile).
    repair_seconds: float = 0.0

    @property
    def outage_seconds(self) -> float:
        """From the fault to the store serving again (SIGCONT, restart, failover)."""
        return self.back_at - self.down_at

    @property
    def unavailable_seconds(self) -> float:
        """From the first failed request's sending to the last one's answer; 0 if none."""
        failed = self.failed
        if not failed:
            return 0.0
        return max(a.answered for a in failed) - min(a.sent for a in failed)

    @property
    def slowest_seconds(self) -> float:
        """The longest a streaming user waited for one answer (a request held, not failed)."""
        return max((a.answered - a.sent for a in self.answers), default=0.0)

    @property
    def revoked_accepted(self) -> int:
        """2xx answers to credentials already logged out: tessera promises 0."""
        return 0 if self.revoked is None else len(self.revoked.accepted())

    @property
    def revoked_checks(self) -> int:
        return 0 if self.revoked is None else len(self.revoked.of_revoked())

    @property
    def revocations_during(self) -> int:
        """Logouts answered 2xx between the fault and every user's recovery."""
        if self.revoked is None:
            return 0
        return self.revoked.revoked_between(self.down_at, self.recovered_at)

    @property
    def failed(self) -> tuple[Answer, ...]:
        """Every answer that was not an authenticated 2xx."""
        return tuple(answer for answer in self.answers if not answer.ok)

    @property
    def bad_gateway(self) -> int:
        return sum(1 for answer in self.answers if answer.status == 502)

    @property
    def refused(self) -> int:
        return sum(1 for answer in self.answers if answer.refused)

    @property
    def other_failures(self) -> tuple[Answer, ...]:
        """Failures that are neither the designed 503 nor a 502."""
        return tuple(a for a in self.failed if not a.refused and a.status != 502)

    @property
    def refused_without_retry_after(self) -> int:
        return sum(1 for answer in self.answers if answer.refused and not answer.retry_after)

    def _first_ok_after(self, moment: float, user: str | None = None) -> float | None:
        times = [
            a.answered
            for a in self.answers
            if a.ok and a.answered >= moment and (user is None or a.user == user)
        ]
        return min(times) if times else None

    @property
    def seconds_to_first_ok(self) -> float | None:
        """From Redis back to the first authenticated 2xx answered after that."""
        first = self._first_ok_after(self.back_at)
        return None if first is None else first - self.back_at

    @property
    def seconds_to_every_user_ok(self) -> float | None:
        """From Redis back until every user has had an authenticated 2xx again."""
        firsts = [self._first_ok_after(self.back_at, user) for user in self.users]
        if any(first is None for first in firsts):
            return None
        return max(first for first in firsts if first is not None) - self.back_at

    @property
    def seconds_to_first_refusal(self) -> float | None:
        """From Redis gone to the first 503 a client received."""
        times = [a.answered for a in self.answers if a.refused and a.answered >= self.down_at]
        return min(times) - self.down_at if times else None

    @property
    def users_lost(self) -> tuple[str, ...]:
        """Users never served again after Redis came back (their session was lost)."""
        return tuple(u for u in self.users if self._first_ok_after(self.back_at, u) is None)

    def accepted_details(self) -> list[str]:
        """Each revoked credential accepted, placed in time: for a bug report."""
        if self.revoked is None:
            return []
        logouts = {at: (tried, body) for _, tried, at, body in self.revoked.revocations}
        details = []
        for check in self.revoked.accepted():
            assert check.revoked_at is not None
            tried, body = logouts.get(check.revoked_at, (check.revoked_at, "?"))
            details.append(
                f"{check.user} {check.kind} answered {check.status}: sent "
                f"{check.sent - self.down_at:+.3f} s from the fault "
                f"(store back at {self.back_at - self.down_at:+.3f} s, every user served at "
                f"{self.recovered_at - self.down_at:+.3f} s), "
                f"{(check.sent - check.revoked_at) * 1000:.1f} ms after its logout answered "
                f"(logout tried at {tried - self.down_at:+.3f} s, answer {body.strip()})"
            )
        return details

    def figures(self) -> dict[str, float | int | str]:
        """The figures, flat (JUnit properties, JSON): seconds rounded to milliseconds."""

        def seconds(value: float | None) -> float | str:
            return round(value, 3) if value is not None else "never"

        revoked = self.revoked
        return {
            "how": self.how,
            "topology": self.topology,
            "target": self.target,
            "row": self.row.number,
            "users": len(self.users),
            "redis_down_seconds": seconds(self.outage_seconds),
            "seconds_unavailable": seconds(self.unavailable_seconds),
            "slowest_answer_seconds": seconds(self.slowest_seconds),
            "seconds_to_first_503": seconds(self.seconds_to_first_refusal),
            "seconds_from_redis_back_to_first_2xx": seconds(self.seconds_to_first_ok),
            "seconds_from_redis_back_to_every_user_2xx": seconds(self.seconds_to_every_user_ok),
            "requests": len(self.answers),
            "requests_failed": len(self.failed),
            "answered_503_json": self.refused,
            "answered_502": self.bad_gateway,
            "other_failures": len(self.other_failures),
            "503_without_retry_after": self.refused_without_retry_after,
            "users_lost": len(self.users_lost),
            "revoked_credentials_presented": self.revoked_checks,
            "revoked_credentials_accepted": self.revoked_accepted,
            "revoked_credential_kinds_the_row_accepts": ",".join(
                sorted(revoked.armed()) if revoked else ()
            ),
            "logouts_during_fault": self.revocations_during,
            "logouts_never_answered_2xx": revoked.logouts_unanswered if revoked else 0,
            "group_repair_seconds": seconds(self.repair_seconds),
        }

    def format(self) -> str:
        """A short human-readable summary."""
        if self.topology == "single":
            back = "SIGCONT" if self.how == "stop" else "`up` (same port, AOF)"
        else:
            back = "failover (the killed node rejoined by `up` after)"
        gone = "SIGSTOP (hung)" if self.how == "stop" else "SIGKILL (crash)"
        figures = self.figures()

        def secs(key: str) -> str:
            value = figures[key]
            return f"{value:.3f} s" if isinstance(value, float) else str(value)

        rows = [
            ("Redis down for", secs("redis_down_seconds")),
            ("requests failing for", secs("seconds_unavailable")),
            ("first 503 after Redis went", secs("seconds_to_first_503")),
            ("seconds from Redis back to first 2xx", secs("seconds_from_redis_back_to_first_2xx")),
            ("... until every user was served", secs("seconds_from_redis_back_to_every_user_2xx")),
            ("requests", str(figures["requests"])),
            (
                "requests failed",
                f"{figures['requests_failed']} (503 JSON: {figures['answered_503_json']}, "
                f"502: {figures['answered_502']}, other: {figures['other_failures']})",
            ),
            ("503 without Retry-After", str(figures["503_without_retry_after"])),
            ("users who lost their session", str(figures["users_lost"])),
            (
                "revoked credentials accepted",
                f"{figures['revoked_credentials_accepted']} of "
                f"{figures['revoked_credentials_presented']} presented "
                f"({figures['logouts_during_fault']} logouts during the fault)",
            ),
        ]
        width = max(len(label) for label, _ in rows)
        head = (
            f"{self.target} {gone}, back by {back}; row {self.row.number} ({self.row.label}, "
            f"nginx {self.policy}); {len(self.users)} users streaming GET {PATH}:"
        )
        return "\n".join([head, *(f"  {label:<{width}}  {value}" for label, value in rows)])


# -- the probe ------------------------------------------------------------------------


async def _get(user: DemoUser, base_url: str) -> Answer:
    sent = time.monotonic()
    try:
        async with user.session.get(base_url + PATH, headers=user.headers()) as response:
            error = None
            if response.status >= 400 and response.content_type.endswith("json"):
                with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                    body = await response.json()
                    if isinstance(body, dict) and isinstance(body.get("error"), str):
                        error = body["error"]
            await response.read()
            return Answer(
                user.name,
                sent,
                time.monotonic(),
                response.status,
                error,
                response.headers.get("Retry-After"),
                response.headers.get("X-Auth-Method"),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(user.name, sent, time.monotonic(), None, type(exc).__name__)


async def _login(user: DemoUser, base_url: str, row: Row) -> Exchange:
    """Log in, trying again a few times on a 503: the stack may still be recovering from an
    earlier outage (the setup is not what the probe measures)."""
    for _ in range(LOGIN_ATTEMPTS - 1):
        exchange = await login(user, base_url, row)
        if exchange.status != 503:
            return exchange
        await asyncio.sleep(POLL * 10)
    return await login(user, base_url, row)


async def _redis_answers(port: int) -> bool:
    """One PING to 127.0.0.1:``port``; whether it answered (PONG, or that it wants a password)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        # A server with users (the stack's own) answers a stranger "-NOAUTH": up too.
        return (await asyncio.wait_for(reader.readline(), 0.5)).startswith((b"+PONG", b"-NOAUTH"))
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _until(predicate: Callable[[], bool], what: str, timeout: float = MAX_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise StackError(f"outage probe: {what} did not happen within {timeout:g} s")
        await asyncio.sleep(POLL)


def _target(control: StackControl, slot: str) -> FaultTarget:
    """What to take away in the running stack; StackError when there is nothing to."""
    if not control.running():
        raise StackError("the stack is not running; start it with `python -m tessera_stack up`")
    return find_target(control.layout, control.state(), slot)


async def probe_redis_outage(
    control: StackControl,
    *,
    how: str = "kill",
    slot: str = "rev",
    users: int = DEFAULT_USERS,
    hold: float = DEFAULT_HOLD,
    max_hold: float = DEFAULT_MAX_HOLD,
    revoked: int = DEFAULT_REVOKED,
    churners: int = DEFAULT_CHURNERS,
    bring_back: BringBack | None = None,
) -> OutageReport:
    """Take the stack's shared store away under a stream of GETs and bring it back.

    A single Redis stays away for at least ``hold`` seconds and until a
    client has been refused, but no longer than ``max_hold``; ``bring_back``
    (``kill`` only) restarts it, by default ``python -m tessera_stack up``.
    In a Sentinel group or a Cluster the primary (of the ``{rev}`` slot, or
    with ``slot="sessions"`` another one) is SIGKILLed and the group fails
    over by itself; ``bring_back`` then restarts the killed node once every
    user has been served again, and the probe waits until the group is
    whole. Meanwhile ``revoked`` users present credentials logged out before
    the fault and ``churners`` log in and out through it
    (:mod:`tessera_demo.revoked_clients`).
    """
    if how not in HOW:
        raise ValueError(f"how must be one of {', '.join(HOW)}")
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {', '.join(SLOTS)}")
    target = _target(control, slot)
    if how == "stop" and target.topology != "single":
        raise StackError(
            "a paused primary of a group is failed over and then comes back as a second "
            "primary; the probe kills group nodes (--how kill)"
        )
    state = control.state()
    assert state.row is not None
    row = ROWS[state.row]
    if row.login == "replica":
        raise StackError(
            f"row {row.number} keeps sessions in replica memory and never asks Redis; "
            "switch to row 4, 5 or 6 first (python -m tessera_stack row 4)"
        )
    base_url = control.base_url
    answers: list[Answer] = []
    finished = asyncio.Event()
    watch = RevokedClients(base_url)
    restart: BringBack = bring_back if bring_back is not None else (lambda: control.cli("up"))

    async def stream(user: DemoUser) -> None:
        for _ in range(MAX_REQUESTS_PER_USER):
            if finished.is_set():
                return
            answers.append(await _get(user, base_url))
            await asyncio.sleep(PAUSE)

    def served_after(moment: float) -> set[str]:
        return {a.user for a in answers if a.ok and a.answered >= moment}

    # One loopback /24 per client, as the demo's users (streamers, then the others).
    addresses = [source_address(i) for i in range(users + 2 * revoked + churners)]
    others = addresses[users:]
    async with (
        demo_users(users, control.ca_cert, prefix=USER_PREFIX, addresses=addresses) as people,
        demo_users(revoked, control.ca_cert, prefix=REVOKED_PREFIX, addresses=others) as gone,
        demo_users(
            revoked, control.ca_cert, prefix=MIDFAULT_PREFIX, addresses=others[revoked:]
        ) as midfault,
        demo_users(
            churners, control.ca_cert, prefix=CHURN_PREFIX, addresses=others[2 * revoked :]
        ) as churning,
    ):
        names = {user.name for user in people}
        await register([*people, *gone, *midfault, *churning], base_url)
        logins = await asyncio.gather(*(_login(user, base_url, row) for user in people))
        if refused := [e for e in logins if e.status != 200]:
            raise StackError(f"outage probe: {len(refused)} logins failed: {refused[0]}")
        held = await watch.revoke_before(gone)
        pending = await watch.log_in(midfault)
        revoking: asyncio.Future[list[None]] | None = None
        streams = asyncio.gather(
            *(stream(user) for user in people),
            *(watch.keep_presenting(u, h, at) for u, (h, at) in zip(gone, held, strict=True)),
            *(watch.churn(user) for user in churning),
        )
        stopped = False
        repair_seconds = 0.0
        try:
            start = time.monotonic()
            await _until(lambda: served_after(start) == names, "a first 2xx for every user")
            down_at = time.monotonic()
            os.kill(target.pid, signal.SIGSTOP if how == "stop" else signal.SIGKILL)
            stopped = how == "stop"
            revoking = asyncio.gather(
                *(watch.revoke_now(u, h) for u, h in zip(midfault, pending, strict=True))
            )
            if how == "kill":
                await _until(lambda: not is_alive(target.pid), "Redis's death")
            if target.topology != "single":
                back_at = await _failed_over(target)
            else:

                def long_enough() -> bool:
                    elapsed = time.monotonic() - down_at
                    return elapsed >= max_hold or (
                        elapsed >= hold
                        and any(a.refused and a.answered >= down_at for a in answers)
                    )

                await _until(long_enough, "the end of the outage", max_hold + 1.0)
                if how == "stop":
                    os.kill(target.pid, signal.SIGCONT)
                    stopped = False
                    back_at = time.monotonic()
                else:
                    back_at = await _restart(target.port, restart)
            await _until(lambda: served_after(back_at) == names, "a 2xx for every user after")
            recovered_at = time.monotonic()
            # A few more answers after recovery: it must hold, not flicker.
            recovered = len(answers)
            await _until(lambda: len(answers) >= recovered + 4 * len(names), "steady answers")
            if target.topology != "single":
                repair_seconds = await repair(control.layout, target, restart)
                # The users stream through the repair too: a rejoining node must not hurt.
                recovered = len(answers)
                await _until(lambda: len(answers) >= recovered + 4 * len(names), "answers after")
        finally:
            if stopped:
                os.kill(target.pid, signal.SIGCONT)
            finished.set()
            watch.stopped.set()
            await streams
            if revoking is not None:
                await revoking
    return OutageReport(
        how=how,
        row=row,
        policy=state.policy,
        users=tuple(sorted(names)),
        down_at=down_at,
        back_at=back_at,
        answers=tuple(sorted(answers, key=lambda a: a.answered)),
        topology=target.topology,
        target=target.label,
        recovered_at=recovered_at,
        revoked=watch,
        repair_seconds=repair_seconds,
    )


async def _failed_over(target: FaultTarget) -> float:
    """When the group first served again without the killed node (polled)."""
    deadline = time.monotonic() + MAX_WAIT
    while not await asyncio.to_thread(store_is_back, target):
        if time.monotonic() > deadline:
            raise StackError(f"outage probe: no failover within {MAX_WAIT:g} s")
        await asyncio.sleep(POLL)
    return time.monotonic()


async def _restart(port: int, bring_back: BringBack) -> float:
    """Run ``bring_back`` and return when Redis first answered PING."""
    back_at: list[float] = []

    async def watch() -> None:
        # Polling, not an event: the signal is another process starting to answer.
        while not await _redis_answers(port):  # noqa: ASYNC110
            await asyncio.sleep(POLL)
        back_at.append(time.monotonic())

    watcher = asyncio.ensure_future(asyncio.wait_for(watch(), MAX_WAIT))
    try:
        await bring_back()
        await watcher
    finally:
        watcher.cancel()
    return back_at[0]
