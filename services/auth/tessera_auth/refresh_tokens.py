"""Opaque, rotating refresh tokens with reuse detection.

Every login that asks for tokens starts a *family*; each refresh spends the
presented token and returns a new pair in the same family. A token presented
again after its grace window means it was copied: the whole family is revoked
(RFC 9700 §4.14.2, the "refresh token rotation" defence).

Concurrent refreshes of one token (two tabs, a retry, requests landing on two
auth replicas) must not log the user out. The first use wins atomically (a Lua
script); any other use within ``grace`` seconds gets *the same new pair*, which
the winner stores encrypted under a key derived from the spent token, so only
a holder of that token can read it back. After the grace window, a second use
is reuse.

Storage: tokens and families are Redis hashes; a token's key is a keyed hash
(HMAC) of the token, never the token itself. The claim script reads a token
and its family in one step, so on Redis Cluster they must share a hash slot:
a token starts with its family's ID (16 characters, then 160 random bits), and
both keys carry that ID as their hash tag. The token stays opaque and
unforgeable (it is found only by the HMAC of all of it); what the ID reveals,
which tokens belong to one login, its holder knows anyway.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from tessera_verify import redis_layout
from tessera_verify.clock import Clock
from tessera_verify.errors import InvalidGrant, ServiceUnavailable

_FAMILY_ID_LENGTH = 16  # secrets.token_urlsafe(12)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # the family's ID, then 27 random characters

# KEYS[1] the token's hash, KEYS[2] its family's (one hash slot); ARGV: now, grace seconds.
_CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local family = KEYS[2]
if redis.call('HGET', family, 'revoked') ~= '0' then return {'revoked'} end
local used = redis.call('HGET', KEYS[1], 'used_at')
if used == '' then
  redis.call('HSET', KEYS[1], 'used_at', ARGV[1])
  return {'fresh'}
end
if tonumber(ARGV[1]) - tonumber(used) <= tonumber(ARGV[2]) then
  return {'grace', redis.call('HGET', KEYS[1], 'successor')}
end
redis.call('HSET', family, 'revoked', '1')
return {'reuse'}
"""

# KEYS[1] the spent token's hash, KEYS[2] its family's; ARGV[1] the sealed successor.
# Recorded only while the family stands: see RefreshTokenStore.record_successor.
_RECORD_SCRIPT = """
if redis.call('HGET', KEYS[2], 'revoked') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'successor', ARGV[1])
return 1
"""

Outcome = Literal["fresh", "grace", "reuse"]


def refresh_token_key(key_encryption_key: bytes) -> bytes:
    """The HMAC key of refresh-token records, derived (HKDF) from the auth service's own
    key-encryption key. Replicas hold the session hash key, never this one: with a
    replica's secrets and Redis access, nobody can write a refresh record that
    ``/auth/token`` accepts. (Rotating the key-encryption key ends every refresh family.)
    """
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"tessera refresh-token records"
    ).derive(key_encryption_key)


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for."""

    user_id: str
    family_id: str
    session_link: str
    issued_at: float
    expires_at: float  # the family's end: rotation never extends it


@dataclass(frozen=True)
class Family:
    family_id: str
    user_id: str
    session_link: str
    session_key: str | None  # the storage key of the session logged in with it, if any
    expires_at: float


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    grant: RefreshGrant
    successor: dict[str, Any] | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RefreshTokenStore:
    def __init__(
        self, redis: Redis, *, hash_key: bytes, ttl: int, clock: Clock, grace: float = 10.0
    ) -> None:
        self._redis = redis
        self._hash_key = hash_key
        self._ttl = ttl
        self._clock = clock
        self.grace = grace
        self._claim = redis.register_script(_CLAIM_SCRIPT)
        self._record = redis.register_script(_RECORD_SCRIPT)
        self._cluster = isinstance(redis, RedisCluster)

    def _key(self, token: str) -> str:
        digest = hmac.new(self._hash_key, b"refresh-token:" + token.encode(), hashlib.sha256)
        return redis_layout.refresh_token(token[:_FAMILY_ID_LENGTH], digest.hexdigest())

    def _successor_key(self, token: str) -> bytes:
        return hmac.new(
            self._hash_key, b"refresh-successor:" + token.encode(), hashlib.sha256
        ).digest()

    # --- issuing ---------------------------------------------------------------------

    async def start_family(
        self, *, user_id: str, session_link: str, session_key: str | None = None
    ) -> tuple[str, RefreshGrant]:
        """A new family (one login) and its first token."""
        family = Family(
            family_id=secrets.token_urlsafe(12),
            user_id=user_id,
            session_link=session_link,
            session_key=session_key,
            expires_at=self._clock.now() + self._ttl,
        )
        ttl = math.ceil(self._ttl)
        index = redis_layout.user_refresh_families(user_id)
        # The family and its first token share a hash slot: one transaction. On one
        # node the user's index joins it (one round trip). On Redis Cluster the
        # index is another slot, so it comes second: the token is handed out only
        # after both, and a failure in between leaves a family whose token nobody
        # holds.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                redis_layout.refresh_family(family.family_id),
                mapping={
                    "user_id": user_id,
                    "session_link": session_link,
                    "session_key": session_key or "",
                    "expires_at": repr(family.expires_at),
                    "revoked": "0",
                },
            )
            pipe.expire(redis_layout.refresh_family(family.family_id), ttl)
            token, grant = self._queue_token(
                pipe, family.family_id, user_id, session_link, family.expires_at
            )
            if not self._cluster:
                pipe.sadd(index, family.family_id)
                pipe.expire(index, ttl)
            await pipe.execute()
        if self._cluster:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(index, family.family_id)
                pipe.expire(index, ttl)
                await pipe.execute()
        return token, grant

    async def rotate(self, grant: RefreshGrant) -> tuple[str, RefreshGrant]:
        """The next token of ``grant``'s family."""
        return await self._issue(
            grant.family_id, grant.user_id, grant.session_link, grant.expires_at
        )

    async def _issue(
        self, family_id: str, user_id: str, session_link: str, expires_at: float
    ) -> tuple[str, RefreshGrant]:
        async with self._redis.pipeline(transaction=True) as pipe:
            issued = self._queue_token(pipe, family_id, user_id, session_link, expires_at)
            await pipe.execute()
        return issued

    def _queue_token(
        self, pipe: Pipeline, family_id: str, user_id: str, session_link: str, expires_at: float
    ) -> tuple[str, RefreshGrant]:
        now = self._clock.now()
        grant = RefreshGrant(user_id, family_id, session_link, now, expires_at)
        token = family_id + secrets.token_urlsafe(20)
        key = self._key(token)
        pipe.hset(
            key,
            mapping={
                "user_id": user_id,
                "family_id": family_id,
                "session_link": session_link,
                "issued_at": repr(now),
                "expires_at": repr(expires_at),
                "used_at": "",
                "successor": "",
            },
        )
        # Kept (spent) until the family ends, so a replay is recognised as reuse.
        pipe.expire(key, max(1, math.ceil(expires_at - now)))
        return token, grant

    # --- using -----------------------------------------------------------------------

    async def peek(self, token: str) -> RefreshGrant:
        """What a live token stands for, without spending it; :class:`InvalidGrant` if nothing."""
        if not _TOKEN.match(token):
            raise InvalidGrant()
        fields = await self._redis.hgetall(self._key(token))
        if not fields:
            raise InvalidGrant()
        data = {_text(k): _text(v) for k, v in fields.items()}
        grant = RefreshGrant(
            user_id=data["user_id"],
            family_id=data["family_id"],
            session_link=data["session_link"],
            issued_at=float(data["issued_at"]),
            expires_at=float(data["expires_at"]),
        )
        if self._clock.now() >= grant.expires_at:
            raise InvalidGrant("the refresh token has expired")
        return grant

    async def live_grant(self, token: str) -> RefreshGrant | None:
        """The grant of an unspent token of a live family (introspection), else None."""
        try:
            grant = await self.peek(token)
        except InvalidGrant:
            return None
        used = await self._redis.hget(self._key(token), "used_at")
        revoked = await self._redis.hget(redis_layout.refresh_family(grant.family_id), "revoked")
        if (used and _text(used)) or revoked is None or _text(revoked) != "0":
            return None
        return grant

    async def claim(self, token: str, grant: RefreshGrant) -> Claim:
        """Spend ``token`` atomically: fresh (we rotate), grace (someone just did), or reuse."""
        result = await self._claim(
            keys=[self._key(token), redis_layout.refresh_family(grant.family_id)],
            args=[repr(self._clock.now()), repr(self.grace)],
        )
        outcome = _text(result[0])
        if outcome in ("unknown", "revoked"):
            raise InvalidGrant()
        if outcome == "fresh":
            return Claim("fresh", grant)
        if outcome == "reuse":
            return Claim("reuse", grant)
        successor = _text(result[1]) if len(result) > 1 and result[1] else ""
        if not successor:
            successor = await self._wait_for_successor(token)
        return Claim("grace", grant, self._decrypt(token, successor))

    async def record_successor(self, token: str, grant: RefreshGrant, pair: dict[str, Any]) -> bool:
        """Keep the pair that replaced ``token`` for its grace window, readable only with it.

        False, recording nothing, when the family was revoked since ``token`` was
        claimed. A revocation of everything a user holds flags the families before it
        is dated (:meth:`Revoker.revoke_everything`), so a family found standing here,
        after ``pair`` was made, means any such revocation is dated after ``pair``
        and kills it; a family found revoked means ``pair`` may outlive the
        revocation, and the caller must revoke it and hand it to nobody.
        """
        nonce = os.urandom(12)
        sealed = AESGCM(self._successor_key(token)).encrypt(nonce, json.dumps(pair).encode(), None)
        recorded = await self._record(
            keys=[self._key(token), redis_layout.refresh_family(grant.family_id)],
            args=[base64.b64encode(nonce + sealed).decode()],
        )
        return bool(int(recorded))

    async def _wait_for_successor(self, token: str, timeout: float = 2.0) -> str:
        # The winner is between its claim and record_successor: normally milliseconds.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(0.02)
            value = await self._redis.hget(self._key(token), "successor")
            if value:
                return _text(value)
        raise ServiceUnavailable("a concurrent refresh of this token has not finished; retry")

    def _decrypt(self, token: str, sealed: str) -> dict[str, Any]:
        raw = base64.b64decode(sealed)
        try:
            plain = AESGCM(self._successor_key(token)).decrypt(raw[:12], raw[12:], None)
        except InvalidTag as exc:
            raise InvalidGrant() from exc
        pair: dict[str, Any] = json.loads(plain)
        return pair

    # --- revoking ----------------------------------------------------------------------

    async def family(self, family_id: str) -> Family | None:
        fields = await self._redis.hgetall(redis_layout.refresh_family(family_id))
        if not fields:
            return None
        data = {_text(k): _text(v) for k, v in fields.items()}
        return Family(
            family_id=family_id,
            user_id=data["user_id"],
            session_link=data["session_link"],
            session_key=data["session_key"] or None,
            expires_at=float(data["expires_at"]),
        )

    async def revoke_family(self, family: Family) -> None:
        """Mark the family revoked: none of its tokens refreshes again."""
        # Two slots, two steps; the one that matters comes first. Should the
        # second fail, the index lists a revoked family, which revoking again
        # leaves revoked.
        await self._redis.hset(redis_layout.refresh_family(family.family_id), "revoked", "1")
        await self._redis.srem(redis_layout.user_refresh_families(family.user_id), family.family_id)

    async def family_of(self, token: str) -> Family | None:
        """The family a live token belongs to (to revoke the whole grant, RFC 7009)."""
        try:
            grant = await self.peek(token)
        except InvalidGrant:
            return None
        return await self.family(grant.family_id)

    async def families_of(self, user_id: str) -> list[Family]:
        members = await self._redis.smembers(redis_layout.user_refresh_families(user_id))
        families = [await self.family(_text(m)) for m in members]
        return [f for f in families if f is not None]
