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

Storage: one Redis hash per family, whatever its number of rotations. A token
is its family's ID (16 characters), its *generation* (6: the number of
rotations before it), 96 random bits (16) and a MAC of all three under the
auth service's refresh key (27 characters, 160 bits). The MAC tells a genuine
old token from a guess without keeping it, so the family records only its
current generation and a fingerprint (SHA-256) of its current token: a genuine
token of an older generation is a replay, hence reuse, however long ago it was
spent; one of a later generation than the family knows means Redis lost its
last rotations (a restore, a lagging failover) and ends the family too. The
one exception, a spend within the grace window, is a short record keyed by a
keyed hash (HMAC) of the spent token, holding the spend time and the sealed
successor; it expires with the window. Nothing stored is a token: a Redis dump
mints none, not even with the refresh key (the random part of the current
token is kept only as its fingerprint). The claim script reads a family and a
spend record in one step, so on Redis Cluster they share a hash slot: both
keys carry the family's ID as their hash tag. What the ID reveals, which
tokens belong to one login, its holder knows anyway.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
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
from redis.asyncio.cluster import RedisCluster

from tessera_verify import redis_layout
from tessera_verify.clock import Clock
from tessera_verify.errors import InvalidGrant, ServiceUnavailable

_FAMILY_ID_LENGTH = 16  # secrets.token_urlsafe(12)
_GENERATION_LENGTH = 6  # 4 bytes, base64url: rotations up to 2**32 - 1
_MAX_GENERATION = 2**32 - 1
_NONCE_BYTES = 12  # 16 base64url characters
_PREFIX_LENGTH = _FAMILY_ID_LENGTH + _GENERATION_LENGTH + 16  # what the MAC covers
_MAC_BYTES = 20  # 160 bits: 27 base64url characters
_TOKEN = re.compile(r"[A-Za-z0-9_-]{65}")  # family ID, generation, nonce, MAC
#: A spend record's successor when the family was revoked before it could be recorded.
_REFUSED = "-"

# KEYS[1] the family's hash, KEYS[2] the presented token's spend record (one slot);
# ARGV: now, grace seconds, the token's generation, the spend record's lifetime (ms),
# the token's fingerprint, its successor's fingerprint.
_CLAIM_SCRIPT = """
local family = redis.call('HMGET', KEYS[1], 'revoked', 'generation', 'current')
local current = tonumber(family[2])
if current == nil then return {'unknown'} end
if family[1] ~= '0' then return {'revoked'} end
local generation = tonumber(ARGV[3])
if generation == current then
  if family[3] ~= ARGV[5] then return {'unknown'} end
  redis.call('HSET', KEYS[1], 'generation', current + 1, 'issued_at', ARGV[1], 'current', ARGV[6])
  redis.call('HSET', KEYS[2], 'spent_at', ARGV[1], 'successor', '')
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {'fresh'}
end
if generation < current then
  local spent = redis.call('HGET', KEYS[2], 'spent_at')
  if spent and tonumber(ARGV[1]) - tonumber(spent) <= tonumber(ARGV[2]) then
    return {'grace', redis.call('HGET', KEYS[2], 'successor')}
  end
end
-- An older token past its grace window is a replay. A later one than the family
-- knows means Redis lost the family's last rotations (a restore, a lagging
-- failover), so an older token may be current again. Either way the family ends.
redis.call('HSET', KEYS[1], 'revoked', '1')
return {'reuse'}
"""

# KEYS as above; ARGV[1] the sealed successor. Recorded only while the family stands
# (see RefreshTokenStore.record_successor); otherwise the spend record says so, and
# whoever waits on it in the grace window is refused too. A spend record already
# expired is not made again (nobody can be in its grace window any more).
_RECORD_SCRIPT = """
local standing = redis.call('HGET', KEYS[1], 'revoked') == '0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'successor', standing and ARGV[1] or '-')
end
if standing then return 1 end
return 0
"""

# KEYS[1] a family's hash: flagged revoked only if it still exists (a bare flag on an
# expired family would be a record without its fields and without an expiry).
_REVOKE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'revoked', '1') end
return 0
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
    #: When this token was issued; for a spent one, when its family began (the
    #: earliest it can have been).
    issued_at: float
    expires_at: float  # the family's end: rotation never extends it
    generation: int  # rotations of the family before this token


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
    #: Grace: the pair the first use got.
    successor: dict[str, Any] | None = None
    #: Fresh: the family's next token and its grant, which the claim made current.
    rotated: tuple[str, RefreshGrant] | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


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
        self._revoke = redis.register_script(_REVOKE_SCRIPT)
        self._cluster = isinstance(redis, RedisCluster)

    def _token(self, family_id: str, generation: int) -> str:
        """A new token for ``family_id``'s ``generation``: nobody without the key can make
        one the service takes for genuine, and only the family's current one spends."""
        prefix = (
            family_id
            + _b64(generation.to_bytes(4, "big"))
            + _b64(secrets.token_bytes(_NONCE_BYTES))
        )
        return prefix + self._mac(prefix)

    def _mac(self, prefix: str) -> str:
        mac = hmac.digest(self._hash_key, b"refresh-token-mac:" + prefix.encode(), hashlib.sha256)
        return _b64(mac[:_MAC_BYTES])

    def _parse(self, token: str) -> tuple[str, int]:
        """The family ID and generation of a token this service made; InvalidGrant else."""
        if not _TOKEN.fullmatch(token):
            raise InvalidGrant()
        # The MAC covers the characters as written, so no other spelling of the same
        # generation passes without the key.
        if not hmac.compare_digest(self._mac(token[:_PREFIX_LENGTH]), token[_PREFIX_LENGTH:]):
            raise InvalidGrant()
        family_id = token[:_FAMILY_ID_LENGTH]
        encoded = token[_FAMILY_ID_LENGTH : _FAMILY_ID_LENGTH + _GENERATION_LENGTH]
        generation = int.from_bytes(base64.urlsafe_b64decode(encoded + "=="), "big")
        return family_id, generation

    @staticmethod
    def _fingerprint(token: str) -> str:
        """What the family keeps of its current token: it tells that token from any other
        the key could make, and gives nothing back (the token holds 96 random bits)."""
        return hashlib.sha256(token.encode()).hexdigest()

    def _key(self, token: str) -> str:
        """The spend record of ``token`` (kept for the grace window only)."""
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
        now = self._clock.now()
        family = Family(
            family_id=secrets.token_urlsafe(12),
            user_id=user_id,
            session_link=session_link,
            session_key=session_key,
            expires_at=now + self._ttl,
        )
        token = self._token(family.family_id, 0)
        ttl = math.ceil(self._ttl)
        key = redis_layout.refresh_family(family.family_id)
        index = redis_layout.user_refresh_families(user_id)
        # On one node the user's index joins the family's transaction (one round
        # trip). On Redis Cluster the index is another slot, so it comes second: the
        # token is handed out only after both, and a failure in between leaves a
        # family whose token nobody holds.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "user_id": user_id,
                    "session_link": session_link,
                    "session_key": session_key or "",
                    "created_at": repr(now),
                    "expires_at": repr(family.expires_at),
                    "generation": "0",
                    "current": self._fingerprint(token),
                    "issued_at": repr(now),
                    "revoked": "0",
                },
            )
            pipe.expire(key, ttl)
            if not self._cluster:
                pipe.sadd(index, family.family_id)
                pipe.expire(index, ttl)
            await pipe.execute()
        if self._cluster:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(index, family.family_id)
                pipe.expire(index, ttl)
                await pipe.execute()
        grant = RefreshGrant(user_id, family.family_id, session_link, now, family.expires_at, 0)
        return token, grant

    # --- using -----------------------------------------------------------------------

    async def _read(self, token: str) -> tuple[RefreshGrant, dict[str, str]]:
        family_id, generation = self._parse(token)
        fields = await self._redis.hgetall(redis_layout.refresh_family(family_id))
        if not fields:
            raise InvalidGrant()
        data = {_text(k): _text(v) for k, v in fields.items()}
        try:
            current = int(data["generation"])
            grant = RefreshGrant(
                user_id=data["user_id"],
                family_id=family_id,
                session_link=data["session_link"],
                # A token not current is dated from its family's start, the earliest it
                # can be: the revocation plane may refuse it sooner, never later.
                issued_at=float(data["issued_at" if generation == current else "created_at"]),
                expires_at=float(data["expires_at"]),
                generation=generation,
            )
        except (KeyError, ValueError):
            raise InvalidGrant() from None  # not a whole family record
        if self._clock.now() >= grant.expires_at:
            raise InvalidGrant("the refresh token has expired")
        return grant, data

    async def peek(self, token: str) -> RefreshGrant:
        """What a token stands for, without spending it; :class:`InvalidGrant` if nothing.
        A spent token of a live family is something: :meth:`claim` tells what."""
        grant, _ = await self._read(token)
        return grant

    async def live_grant(self, token: str) -> RefreshGrant | None:
        """The grant of an unspent token of a live family (introspection), else None."""
        try:
            grant, data = await self._read(token)
        except InvalidGrant:
            return None
        if (
            data.get("revoked") != "0"
            or grant.generation != int(data["generation"])
            or data.get("current") != self._fingerprint(token)
        ):
            return None
        return grant

    async def claim(self, token: str, grant: RefreshGrant) -> Claim:
        """Spend ``token`` atomically: fresh (we rotate), grace (someone just did), or reuse.
        A fresh claim makes the family's next token current and returns it."""
        if grant.generation >= _MAX_GENERATION:
            raise InvalidGrant("this login has been refreshed as often as it can; log in again")
        successor = self._token(grant.family_id, grant.generation + 1)
        now = self._clock.now()
        result = await self._claim(
            keys=[redis_layout.refresh_family(grant.family_id), self._key(token)],
            args=[
                repr(now),
                repr(self.grace),
                str(grant.generation),
                str(math.ceil((self.grace + 1) * 1000)),
                self._fingerprint(token),
                self._fingerprint(successor),
            ],
        )
        outcome = _text(result[0])
        if outcome in ("unknown", "revoked"):
            raise InvalidGrant()
        if outcome == "fresh":
            rotated = dataclasses.replace(grant, issued_at=now, generation=grant.generation + 1)
            return Claim("fresh", grant, rotated=(successor, rotated))
        if outcome == "reuse":
            return Claim("reuse", grant)
        sealed = _text(result[1]) if len(result) > 1 and result[1] else ""
        if not sealed:
            sealed = await self._wait_for_successor(token)
        if sealed == _REFUSED:
            raise InvalidGrant("the refresh token has been revoked")
        return Claim("grace", grant, self._decrypt(token, sealed))

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
            keys=[redis_layout.refresh_family(grant.family_id), self._key(token)],
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
        await self._revoke(keys=[redis_layout.refresh_family(family.family_id)], args=[])
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
