"""Login throttling (Authelia's "regulation"): record failures, then decide bans, apart.

Failures are counted per account name (whether or not it exists, so the
answer tells nothing about which names are registered) and per client
address, in fixed windows of the injected clock. The current and previous
windows are added, so a burst straddling a boundary still counts. A ban lasts
until the failures age out; a successful login clears the account's count.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from redis.asyncio import Redis

from tessera_verify import redis_keys
from tessera_verify.clock import Clock
from tessera_verify.errors import TooManyAttempts


@dataclass(frozen=True)
class RegulationPolicy:
    max_failures_per_account: int = 10
    max_failures_per_address: int = 100
    window: int = 300  # seconds

    @property
    def enabled(self) -> bool:
        return self.max_failures_per_account > 0 or self.max_failures_per_address > 0


def _subject(kind: str, value: str) -> str:
    # Hashed: attacker-chosen names never become raw Redis key material.
    return kind + ":" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


class Regulator:
    def __init__(self, redis: Redis, clock: Clock, policy: RegulationPolicy) -> None:
        self._redis = redis
        self._clock = clock
        self.policy = policy

    def _buckets(self, subject: str) -> tuple[str, str, int]:
        window = self.policy.window
        current = math.floor(self._clock.now() / window)
        retry_after = (current + 2) * window - math.floor(self._clock.now())
        return (
            redis_keys.login_failures(subject, current),
            redis_keys.login_failures(subject, current - 1),
            retry_after,
        )

    async def check(self, account: str, address: str) -> bool:
        """Raise :class:`TooManyAttempts` when either count is over its limit; else
        whether the account has recent failures (which a success must then clear)."""
        if not self.policy.enabled:
            return False
        checks = (
            (_subject("account", account), self.policy.max_failures_per_account),
            (_subject("address", address), self.policy.max_failures_per_address),
        )
        # Not one MGET: the two subjects live in different hash slots (Redis
        # Cluster). A pipeline is still one round trip (per node).
        async with self._redis.pipeline(transaction=False) as pipe:
            for subject, _ in checks:
                for key in self._buckets(subject)[:2]:
                    pipe.get(key)
            values: list[bytes | None] = await pipe.execute()
        counts = [int(values[i] or 0) + int(values[i + 1] or 0) for i in (0, 2)]
        for (subject, limit), count in zip(checks, counts, strict=True):
            if limit > 0 and count >= limit:
                raise TooManyAttempts(retry_after=self._buckets(subject)[2])
        return counts[0] > 0

    async def record_failure(self, account: str, address: str) -> None:
        if not self.policy.enabled:
            return
        # Not a transaction: the two subjects live in different hash slots.
        async with self._redis.pipeline(transaction=False) as pipe:
            for subject in (_subject("account", account), _subject("address", address)):
                key = self._buckets(subject)[0]
                pipe.incr(key)
                pipe.expire(key, 2 * self.policy.window)
            await pipe.execute()

    async def record_success(self, account: str) -> None:
        if not self.policy.enabled:
            return
        now_key, previous_key, _ = self._buckets(_subject("account", account))
        await self._redis.delete(now_key, previous_key)
