"""The access-token denylist: a revoked ``jti`` stays listed until the token expires."""

from __future__ import annotations

import math

from redis.asyncio import Redis

from . import redis_keys
from .clock import Clock


class Denylist:
    """Revoked access-token IDs in Redis, each kept exactly as long as its token lives."""

    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock

    async def revoke(self, jti: str, expires_at: float) -> None:
        remaining = math.ceil(expires_at - self._clock.now())
        if remaining <= 0:
            return  # already expired: nothing to deny
        await self._redis.set(redis_keys.revoked_jti(jti), b"1", ex=remaining)

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self._redis.exists(redis_keys.revoked_jti(jti)))
