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

Used by ``python -m tessera_stack outage-probe`` and by
tests/test_stack_redis_outage.py (which records the figures as JUnit
properties).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from tessera_stack.demo import DemoUser, Exchange, StackControl, demo_users, login, register
from tessera_stack.processes import StackError, is_alive
from tessera_stack.rows import ROWS, Row
from tessera_stack.state import Layout

__all__ = [
    "HOW",
    "Answer",
    "OutageReport",
    "add_arguments",
    "probe_redis_outage",
    "run_from_cli",
]

HOW = ("stop", "kill")
DEFAULT_USERS = 4
DEFAULT_HOLD = 3.0
# Redis comes back after this long even if no client was refused meanwhile
# (a verifier that keeps accepting credentials with Redis gone: a finding).
DEFAULT_MAX_HOLD = 30.0
USER_PREFIX = "outage-user-"
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
NO_METHOD = "none"

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
        return (
            self.status is not None
            and 200 <= self.status < 300
            and self.auth_method not in (None, NO_METHOD)
        )

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

    @property
    def outage_seconds(self) -> float:
        return self.back_at - self.down_at

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

    def figures(self) -> dict[str, float | int | str]:
        """The figures, flat (JUnit properties, JSON): seconds rounded to milliseconds."""

        def seconds(value: float | None) -> float | str:
            return round(value, 3) if value is not None else "never"

        return {
            "how": self.how,
            "row": self.row.number,
            "users": len(self.users),
            "redis_down_seconds": seconds(self.outage_seconds),
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
        }

    def format(self) -> str:
        """A short human-readable summary."""
        back = "SIGCONT" if self.how == "stop" else "`up` (same port, AOF)"
        gone = "SIGSTOP (hung)" if self.how == "stop" else "SIGKILL (crash)"
        figures = self.figures()

        def secs(key: str) -> str:
            value = figures[key]
            return f"{value:.3f} s" if isinstance(value, float) else str(value)

        rows = [
            ("Redis down for", secs("redis_down_seconds")),
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
        ]
        width = max(len(label) for label, _ in rows)
        head = (
            f"Redis {gone}, back by {back}; row {self.row.number} ({self.row.label}, "
            f"nginx {self.policy}); {len(self.users)} users streaming GET {PATH}:"
        )
        return "\n".join([head, *(f"  {label:<{width}}  {value}" for label, value in rows)])


# -- the probe ------------------------------------------------------------------------


async def _get(user: DemoUser, base_url: str) -> Answer:
    sent = time.monotonic()
    try:
        async with user.session.get(base_url + PATH, headers=user.headers()) as response:
            error = None
            if response.status >= 400 and response.content_type == "application/json":
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
    """One PING to 127.0.0.1:``port``; whether it answered PONG."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        return (await asyncio.wait_for(reader.readline(), 0.5)).startswith(b"+PONG")
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


def _redis_target(layout: Layout, control: StackControl) -> tuple[int, int]:
    """The pid and port of the stack's own Redis; StackError when it has none running."""
    state = control.state()
    if not control.running():
        raise StackError("the stack is not running; start it with `python -m tessera_stack up`")
    if state.redis != "managed":
        raise StackError("the stack uses an external Redis; the probe takes only its own away")
    if state.redis_topology not in ("", "single") or state.redis_port is None:
        raise StackError(
            f"the stack runs a Redis {state.redis_topology} group; the probe takes a single "
            "Redis away (`up --redis single`, after `down`)"
        )
    pid = layout.redis(state.redis_port).pid
    if pid is None:
        raise StackError("the stack's Redis is not running; `python -m tessera_stack up` first")
    return pid, state.redis_port


async def probe_redis_outage(
    control: StackControl,
    *,
    how: str = "kill",
    users: int = DEFAULT_USERS,
    hold: float = DEFAULT_HOLD,
    max_hold: float = DEFAULT_MAX_HOLD,
    bring_back: BringBack | None = None,
) -> OutageReport:
    """Take the stack's Redis away under a stream of GETs and bring it back (module doc).

    Redis stays away for at least ``hold`` seconds and until a client has
    been refused, but no longer than ``max_hold``. ``bring_back`` (``kill``
    only) restarts it; by default ``python -m tessera_stack up`` for the
    stack's run directory.
    """
    if how not in HOW:
        raise ValueError(f"how must be one of {', '.join(HOW)}")
    layout = control.layout
    pid, port = _redis_target(layout, control)
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

    async def stream(user: DemoUser) -> None:
        for _ in range(MAX_REQUESTS_PER_USER):
            if finished.is_set():
                return
            answers.append(await _get(user, base_url))
            await asyncio.sleep(PAUSE)

    def served_after(moment: float) -> set[str]:
        return {a.user for a in answers if a.ok and a.answered >= moment}

    async with demo_users(users, control.ca_cert, prefix=USER_PREFIX) as people:
        names = {user.name for user in people}
        await register(people, base_url)
        logins = await asyncio.gather(*(_login(user, base_url, row) for user in people))
        if refused := [e for e in logins if e.status != 200]:
            raise StackError(f"outage probe: {len(refused)} logins failed: {refused[0]}")
        streams = asyncio.gather(*(stream(user) for user in people))
        stopped = False
        try:
            start = time.monotonic()
            await _until(lambda: served_after(start) == names, "a first 2xx for every user")
            down_at = time.monotonic()
            os.kill(pid, signal.SIGSTOP if how == "stop" else signal.SIGKILL)
            stopped = how == "stop"
            if how == "kill":
                await _until(lambda: not is_alive(pid), "Redis's death")

            def long_enough() -> bool:
                elapsed = time.monotonic() - down_at
                return elapsed >= max_hold or (
                    elapsed >= hold and any(a.refused and a.answered >= down_at for a in answers)
                )

            await _until(long_enough, "the end of the outage", max_hold + 1.0)
            if how == "stop":
                os.kill(pid, signal.SIGCONT)
                stopped = False
                back_at = time.monotonic()
            else:
                back_at = await _restart(control, port, bring_back)
            await _until(lambda: served_after(back_at) == names, "a 2xx for every user after")
            # A few more answers after recovery: it must hold, not flicker.
            recovered = len(answers)
            await _until(lambda: len(answers) >= recovered + 4 * len(names), "steady answers")
        finally:
            if stopped:
                os.kill(pid, signal.SIGCONT)
            finished.set()
            await streams
    return OutageReport(
        how=how,
        row=row,
        policy=state.policy,
        users=tuple(sorted(names)),
        down_at=down_at,
        back_at=back_at,
        answers=tuple(sorted(answers, key=lambda a: a.answered)),
    )


async def _restart(control: StackControl, port: int, bring_back: BringBack | None) -> float:
    """Run ``bring_back`` (default: ``up``) and return when Redis first answered PING."""
    back_at: list[float] = []

    async def watch() -> None:
        # Polling, not an event: the signal is another process starting to answer.
        while not await _redis_answers(port):  # noqa: ASYNC110
            await asyncio.sleep(POLL)
        back_at.append(time.monotonic())

    watcher = asyncio.ensure_future(asyncio.wait_for(watch(), MAX_WAIT))
    try:
        await (bring_back() if bring_back is not None else control.cli("up"))
        await watcher
    finally:
        watcher.cancel()
    return back_at[0]


# -- CLI ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``outage-probe`` subcommand's options."""
    parser.add_argument(
        "--how",
        choices=(*HOW, "both"),
        default="both",
        help="stop: SIGSTOP, then SIGCONT; kill: SIGKILL, then `up`; both (the default)",
    )
    parser.add_argument(
        "--users",
        type=int,
        default=DEFAULT_USERS,
        help=f"streaming users (default {DEFAULT_USERS})",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=DEFAULT_HOLD,
        help=f"seconds Redis stays away, at least (default {DEFAULT_HOLD:g})",
    )
    parser.add_argument(
        "--max-hold",
        type=float,
        default=DEFAULT_MAX_HOLD,
        help=(
            "seconds after which Redis comes back even if no client was refused yet "
            f"(default {DEFAULT_MAX_HOLD:g})"
        ),
    )


def run_from_cli(layout: Layout, args: argparse.Namespace) -> int:
    """``python -m tessera_stack outage-probe``: print the figures of each outage."""
    how: str = args.how
    kinds: Sequence[str] = HOW if how == "both" else (how,)
    users: int = args.users
    hold: float = args.hold
    max_hold: float = args.max_hold
    if not 1 <= users <= 64 or not 0 <= hold <= max_hold <= 300:
        print("error: --users must be 1-64, and 0 <= --hold <= --max-hold <= 300", flush=True)
        return 2
    control = StackControl(layout.root)
    print("this takes the stack's Redis away and brings it back; clients see 503s meanwhile")
    for kind in kinds:
        try:
            report = asyncio.run(
                probe_redis_outage(control, how=kind, users=users, hold=hold, max_hold=max_hold)
            )
        except (StackError, RuntimeError) as exc:
            print(f"error: {exc}", flush=True)
            return 1
        print(report.format(), flush=True)
    return 0
