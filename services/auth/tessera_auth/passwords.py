"""Argon2id password hashing, run off the event loop with a bounded backlog."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


class PasswordHasher:
    """Hashes and verifies passwords on threads of its own (argon2 releases the GIL).

    At most ``max_pending`` jobs are queued or running at once; one more raises
    :class:`ServerBusy` (503 with ``Retry-After``) at once instead of joining a
    backlog. Without the bound, a burst of registrations queues seconds of Argon2
    work in front of every login (and 19 MiB per running job). A job counts until
    its thread finishes, even if the request that asked for it has gone.

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
        self._pending = 0
        # Its own threads: a burst of Argon2 must not starve the loop's default
        # executor (DNS lookups), and no more jobs run than there are CPUs.
        self._executor = ThreadPoolExecutor(
            max_workers=min(self.max_pending, cpu_count()), thread_name_prefix="argon2"
        )

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        return self._pending

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await self._run(self._verify_sync, password_hash, password)

    async def verify_dummy(self, password: str) -> None:
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[..., T], *args: str) -> T:
        if self._pending >= self.max_pending:
            raise ServerBusy()
        # One step on the loop's thread: nothing can interleave between check and count.
        self._pending += 1
        job = asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        job.add_done_callback(self._finished)
        # Shielded: a cancelled request leaves the job counted until its thread is done.
        return await asyncio.shield(job)

    def _finished(self, job: asyncio.Future[T]) -> None:
        self._pending -= 1
        if not job.cancelled():
            job.exception()  # retrieved: an abandoned job's error is not "never retrieved"

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
