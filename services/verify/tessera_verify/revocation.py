"""The revocation plane's source of truth in Redis, and the events it publishes.

Four kinds of revocation, one key each, every key living exactly as long as
what it revokes could still be presented:

- a token ID (``jti``), until that access token expires (logout);
- a session link (``sid``), until every access token carrying it has expired
  (one session revoked, a refresh family caught reusing a token);
- a user's "valid after" time: every access token issued before it is dead
  (logout everywhere, password change, account disabled);
- a session deleted: sessions are removed from Redis directly, the event only
  tells caches to forget them.

Every change is also published on :data:`CHANNEL`, so replicas keep local
copies and answer without a network round-trip (:mod:`tessera_verify.revocation_cache`).
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from . import redis_keys
from .clock import Clock

if TYPE_CHECKING:
    from .access_tokens import AccessTokenClaims

CHANNEL = redis_keys.PREFIX + ":revocations"


class RevocationKind(enum.StrEnum):
    TOKEN = "jti"  # noqa: S105 - a kind name, not a secret
    SESSION_LINK = "sid"
    USER = "user"
    SESSION = "session"


@dataclass(frozen=True)
class RevocationEvent:
    """One revocation. ``when`` is the expiry of a jti/sid entry, or a user's valid-after time."""

    kind: RevocationKind
    value: str
    when: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind.value, "value": self.value, "when": self.when})

    @classmethod
    def from_json(cls, raw: bytes | str) -> RevocationEvent:
        data = json.loads(raw)
        return cls(RevocationKind(data["kind"]), str(data["value"]), float(data["when"]))


def token_is_revoked_by(
    claims: AccessTokenClaims,
    *,
    jti_revoked: bool,
    sid_revoked: bool,
    user_valid_after: float | None,
) -> bool:
    """The one rule, shared by the Redis check and the local cache."""
    if jti_revoked or sid_revoked:
        return True
    # ``iat`` is whole seconds: a token issued in the second of the revocation is
    # revoked too, and the issuer dates new tokens after it (AccessTokenIssuer.issue).
    return user_valid_after is not None and claims.issued_at <= user_valid_after


class Denylist:
    """Writes revocations to Redis (and publishes them); checks them with one round-trip."""

    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock

    async def _set(self, key: str, value: float, until: float, event: RevocationEvent) -> None:
        remaining = math.ceil(until - self._clock.now())
        if remaining <= 0:
            return  # nothing left alive to revoke
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, repr(value), ex=remaining)
            pipe.publish(CHANNEL, event.to_json())
            await pipe.execute()

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Deny one access token until it expires."""
        event = RevocationEvent(RevocationKind.TOKEN, jti, expires_at)
        await self._set(redis_keys.revoked_jti(jti), expires_at, expires_at, event)

    async def revoke_session_link(self, sid: str, until: float) -> None:
        """Deny every access token that carries ``sid``, until ``until``."""
        event = RevocationEvent(RevocationKind.SESSION_LINK, sid, until)
        await self._set(redis_keys.revoked_sid(sid), until, until, event)

    async def revoke_user_tokens(self, user_id: str, keep_for: float) -> float:
        """Every access token of ``user_id`` issued before now is dead; returns that time."""
        now = self._clock.now()
        event = RevocationEvent(RevocationKind.USER, user_id, now)
        await self._set(redis_keys.user_valid_after(user_id), now, now + keep_for, event)
        return now

    async def announce_session_deleted(self, storage_key: str) -> None:
        await self._redis.publish(
            CHANNEL, RevocationEvent(RevocationKind.SESSION, storage_key).to_json()
        )

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self._redis.exists(redis_keys.revoked_jti(jti)))

    async def user_valid_after(self, user_id: str) -> float | None:
        raw = await self._redis.get(redis_keys.user_valid_after(user_id))
        return None if raw is None else float(raw)

    async def is_token_revoked(self, claims: AccessTokenClaims) -> bool:
        keys = [
            redis_keys.revoked_jti(claims.token_id),
            redis_keys.user_valid_after(claims.subject),
        ]
        if claims.session_link:
            keys.append(redis_keys.revoked_sid(claims.session_link))
        values = await self._redis.mget(keys)
        valid_after = None if values[1] is None else float(values[1])
        return token_is_revoked_by(
            claims,
            jti_revoked=values[0] is not None,
            sid_revoked=len(values) > 2 and values[2] is not None,
            user_valid_after=valid_after,
        )

    async def snapshot(self) -> list[RevocationEvent]:
        """Every live revocation, for a cache that (re)connects and must catch up."""
        events: list[RevocationEvent] = []
        for kind, pattern in (
            (RevocationKind.TOKEN, redis_keys.revoked_jti("*")),
            (RevocationKind.SESSION_LINK, redis_keys.revoked_sid("*")),
            (RevocationKind.USER, redis_keys.user_valid_after("*")),
        ):
            prefix = pattern[:-1]
            keys = [key async for key in self._redis.scan_iter(match=pattern, count=1000)]
            if not keys:
                continue
            for key, raw in zip(keys, await self._redis.mget(keys), strict=True):
                if raw is None:
                    continue
                name = key.decode() if isinstance(key, bytes) else str(key)
                events.append(RevocationEvent(kind, name[len(prefix) :], float(raw)))
        return events
