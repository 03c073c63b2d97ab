"""Argon2id password hashing, run off the event loop with a bounded, ranked backlog."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tessera_verify.errors import ServerBusy

from .settings import Argon2Parameters

T = TypeVar("T")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, so a pinned container counts right)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(eq=False)
class _Ticket:
    """A job waiting for an Argon2 thread: its rank, arrival, and the grant."""

    rank: int
    arrival: int
    granted: asyncio.Future[None]


class PasswordHasher:
    """Hashes and verifies passwords on threads of its own (argon2 releases the GIL).

    At most ``max_pending`` jobs are queued or running at once; past that a job
    is refused at once with :class:`ServerBusy` (503 with ``Retry-After``)
    instead of joining a backlog. Without the bound, a burst of registrations
    queues seconds of Argon2 work in front of every login (and 19 MiB per
    running job). A job counts until its thread finishes, even if the request
    that asked for it has gone.

    Admission is by *rank*: the caller's recent failures from its address (see
    :class:`~tessera_auth.regulation.Regulator`), 0 for an address with none.
    Waiting jobs start lowest rank first, and a job arriving when the queue is
    full takes the place of the highest-ranked waiting one (which gets the 503)
    if that one ranks above it. So an address that keeps failing (a spray, a
    registration flood) cannot keep a user with a clean address out: the user
    waits behind what is running and what ranks as well, never behind the flood.
    Equal ranks are first come, first served, and the newcomer is the one refused.

    :meth:`verify_dummy` does the same work as a real verification against a
    hash made with the current parameters, so an unknown username costs as
    much as a wrong password and the two cannot be told apart by timing.
    """

    def __init__(self, params: Argon2Parameters, *, max_pending: int | None = None) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            type=argon2.Type.ID,
        )
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self.max_pending = max_pending or 2 * cpu_count() + 2
        self._pending = 0  # waiting + running
        self._running = 0  # holding (or granted) a thread
        self._waiting: list[_Ticket] = []
        self._arrivals = itertools.count()
        # Its own threads: a burst of Argon2 must not starve the loop's default
        # executor (DNS lookups). Threads start on demand, as many as run at once.
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_pending, thread_name_prefix="argon2"
        )

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        return self._pending

    @property
    def _workers(self) -> int:
        """How many jobs may run at once: no more than the CPUs this process may use *now*.

        Read again at each admission (one system call), because the set can change
        under a running process (``taskset``, a cgroup's cpuset). Two hashes taking
        turns on one core finish no sooner than one after the other, and each costs
        more CPU (their memory, 19 MiB each with the defaults, evicts the other's
        from the cache: +2 to 4 ms a verification, measured on one core of an EPYC).
        """
        return min(self.max_pending, cpu_count())

    async def hash(self, password: str, *, rank: int = 0) -> str:
        return await self._run(self._hasher.hash, password, rank=rank)

    async def verify(self, password_hash: str, password: str, *, rank: int = 0) -> bool:
        return await self._run(self._verify_sync, password_hash, password, rank=rank)

    async def verify_dummy(self, password: str, *, rank: int = 0) -> None:
        await self.verify(self._dummy_hash, password, rank=rank)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[..., T], *args: str, rank: int) -> T:
        # Every bookkeeping step below runs on the loop's thread, between awaits:
        # nothing interleaves between a check and its count.
        if self._pending >= self.max_pending:
            self._make_room(rank)
        self._pending += 1
        if self._running < self._workers and not self._waiting:
            self._running += 1
        else:
            await self._wait_for_thread(rank)
        job = asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        job.add_done_callback(self._finished)
        # Shielded: a cancelled request leaves the job counted until its thread is done.
        return await asyncio.shield(job)

    def _make_room(self, rank: int) -> None:
        """Refuse the highest-ranked waiting job if it ranks above ``rank``; else ServerBusy."""
        worst = max(self._waiting, key=lambda t: (t.rank, t.arrival), default=None)
        if worst is None or worst.rank <= rank:
            raise ServerBusy()
        self._waiting.remove(worst)
        self._pending -= 1
        worst.granted.set_exception(ServerBusy())

    async def _wait_for_thread(self, rank: int) -> None:
        ticket = _Ticket(rank, next(self._arrivals), asyncio.get_running_loop().create_future())
        self._waiting.append(ticket)
        try:
            await ticket.granted  # ServerBusy when another took its place
        except asyncio.CancelledError:
            granted = ticket.granted
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self._release()  # granted a thread, then cancelled: hand it on
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
                self._pending -= 1
            raise

    def _finished(self, job: asyncio.Future[T]) -> None:
        if not job.cancelled():
            job.exception()  # retrieved: an abandoned job's error is not "never retrieved"
        self._release()

    def _release(self) -> None:
        self._running -= 1
        self._pending -= 1
        workers = self._workers
        while self._waiting and self._running < workers:
            best = min(self._waiting, key=lambda t: (t.rank, t.arrival))
            self._waiting.remove(best)
            if best.granted.done():  # cancelled while waiting; its task is unwinding
                self._pending -= 1
                continue
            self._running += 1
            best.granted.set_result(None)

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
