"""Opaque refresh tokens: random, stored only as a keyed hash, single use."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from tessera_verify import redis_keys
from tessera_verify.clock import Clock
from tessera_verify.errors import InvalidGrant

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for."""

    user_id: str
    family_id: str  # every token rotated from one login shares it
    session_link: str
    issued_at: float
    expires_at: float


class RefreshTokenStore:
    def __init__(self, redis: Redis, *, hash_key: bytes, ttl: int, clock: Clock) -> None:
        self._redis = redis
        self._hash_key = hash_key
        self._ttl = ttl
        self._clock = clock

    def _key(self, token: str) -> str:
        digest = hmac.new(self._hash_key, b"refresh-token:" + token.encode(), hashlib.sha256)
        return redis_keys.refresh_token(digest.hexdigest())

    async def issue(
        self, *, user_id: str, family_id: str, session_link: str, expires_at: float | None = None
    ) -> tuple[str, RefreshGrant]:
        """A new refresh token. ``expires_at`` caps a rotated token at its family's end."""
        now = self._clock.now()
        end = now + self._ttl if expires_at is None else min(expires_at, now + self._ttl)
        grant = RefreshGrant(user_id, family_id, session_link, now, end)
        token = secrets.token_urlsafe(32)
        ttl = max(1, math.ceil(end - now))
        await self._redis.set(self._key(token), json.dumps(asdict(grant)), ex=ttl)
        return token, grant

    async def peek(self, token: str) -> RefreshGrant:
        """What the token stands for, without spending it; :class:`InvalidGrant` if nothing."""
        return self._grant(await self._redis.get(self._key(token)) if _TOKEN.match(token) else None)

    async def consume(self, token: str) -> RefreshGrant:
        """Take the token out of the store (atomically: a second use finds nothing).

        Callers check everything else first (:meth:`peek`), so a refusal for
        another reason, or an outage of another dependency, never spends it.
        """
        return self._grant(
            await self._redis.getdel(self._key(token)) if _TOKEN.match(token) else None
        )

    def _grant(self, raw: bytes | str | None) -> RefreshGrant:
        if raw is None:
            raise InvalidGrant()
        grant = RefreshGrant(**json.loads(raw))
        if self._clock.now() >= grant.expires_at:
            raise InvalidGrant("the refresh token has expired")
        return grant

    async def revoke(self, token: str) -> bool:
        if not _TOKEN.match(token):
            return False
        return bool(await self._redis.delete(self._key(token)))
