"""The revocation plane as verifiers read it: its layout in Redis, its feed, and the one rule.

PostgreSQL is the source of truth (the auth service writes there first, see
``tessera_auth.revocation_store``); Redis holds a rebuilt copy that verifiers
read, under one hash tag (``{rev}``) so that every script and snapshot touches
one slot, also on Redis Cluster:

- ``tessera:{rev}:jti``, ``tessera:{rev}:sid``, ``tessera:{rev}:user``: one hash
  per kind, ``value -> "<when> <until>"``. For a token ID (logout) and a
  session link (one session, a refresh family) ``when`` is the time the entry
  may be forgotten; for a user ``when`` is the "valid after" time (logout
  everywhere, password change, account disabled): every credential issued up
  to then is dead.
- ``tessera:{rev}:generation``: a random marker, written last by a rebuild.
  Its absence means the copy is incomplete (FLUSHALL, a restart without data,
  eviction, a failover to an empty replica): nothing may be accepted on the
  strength of it until the auth service has rebuilt it from PostgreSQL.
- ``tessera:{rev}:seq``: incremented by every change, which is published on
  :data:`CHANNEL` with that number, so a subscriber sees any gap.

A verifier knows its copy is complete by a *probe* (see
:mod:`tessera_verify.revocation_cache`), never by the absence of errors.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from . import redis_layout
from .errors import ServiceUnavailable

if TYPE_CHECKING:
    from .access_tokens import AccessTokenClaims
    from .session_store import SessionRecord

CHANNEL = redis_layout.revocation_feed()

#: The most any verifier may accept an access token past its ``exp`` (clock skew).
#: A denylisted ``jti`` is kept this long past ``exp``, so no leeway reopens it.
MAX_LEEWAY = 60.0


class RevocationKind(enum.StrEnum):
    TOKEN = "jti"  # noqa: S105 - a kind name, not a secret
    SESSION_LINK = "sid"
    USER = "user"
    SESSION = "session"  # a session deleted: only tells caches to forget it, never stored


STORED_KINDS = (RevocationKind.TOKEN, RevocationKind.SESSION_LINK, RevocationKind.USER)


class RevocationStateLost(ServiceUnavailable):
    """Redis lost the revocation plane and it is not rebuilt yet: refuse, never guess."""

    default_message = "revocation state is being rebuilt; try again shortly"


@dataclass(frozen=True)
class RevocationEvent:
    """One revocation: ``when`` as in the module docstring, ``until`` when it may be forgotten."""

    kind: RevocationKind
    value: str
    when: float = 0.0
    until: float = 0.0

    def to_json(self) -> str:
        return json.dumps([self.kind.value, self.value, self.when, self.until])

    @classmethod
    def from_json(cls, raw: bytes | str) -> RevocationEvent:
        kind, value, when, until = json.loads(raw)
        return cls(RevocationKind(kind), str(value), float(when), float(until))


@dataclass(frozen=True)
class FeedMessage:
    """What the feed carries: a change numbered ``seq`` of ``generation``, or
    (``event`` None) a new generation after a rebuild."""

    generation: str
    seq: int
    event: RevocationEvent | None

    @classmethod
    def parse(cls, raw: bytes | str) -> FeedMessage:
        text = raw.decode() if isinstance(raw, bytes) else raw
        seq, generation, payload = text.split(" ", 2)
        event = None if payload == "-" else RevocationEvent.from_json(payload)
        return cls(generation, int(seq), event)


@dataclass(frozen=True)
class Credential:
    """What the rule needs of any credential: an access token, a session, a refresh grant."""

    user_id: str
    issued_at: float
    session_link: str | None = None
    token_id: str | None = None
    #: ``issued_at`` is rounded down to whole seconds (a JWT's ``iat``).
    whole_seconds: bool = False

    @classmethod
    def of_token(cls, claims: AccessTokenClaims) -> Credential:
        return cls(claims.subject, claims.issued_at, claims.session_link, claims.token_id, True)

    @classmethod
    def of_session(cls, record: SessionRecord) -> Credential:
        return cls(record.user_id, record.created_at, record.public_id)


def is_revoked_by(
    credential: Credential,
    *,
    jti_revoked: bool,
    sid_revoked: bool,
    user_valid_after: float | None,
) -> bool:
    """The one rule, shared by the Redis check and the local copy."""
    if jti_revoked or sid_revoked:
        return True
    if user_valid_after is None:
        return False
    if credential.whole_seconds:
        # A token issued in the second of the revocation is revoked too, and the
        # issuer dates new tokens after it (AccessTokenIssuer.issue).
        return credential.issued_at <= user_valid_after
    return credential.issued_at < user_valid_after


def parse_entry(raw: bytes | str) -> tuple[float, float]:
    """``"<when> <until>"`` as stored in the plane's hashes."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    when, _, until = text.partition(" ")
    return float(when), float(until or when)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Snapshot:
    """The whole plane at one instant (one MULTI on one slot)."""

    generation: str | None
    seq: int
    events: list[RevocationEvent]


class RevocationReader:
    """Reads the plane from Redis: one round-trip per check, one transaction per snapshot."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def marker(self) -> tuple[str | None, int]:
        """The generation (None: state lost) and the last change's number."""
        generation, seq = await self._redis.mget(
            [redis_layout.revocation_generation(), redis_layout.revocation_seq()]
        )
        return (None if generation is None else _text(generation)), int(seq or 0)

    async def snapshot(self) -> Snapshot:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(redis_layout.revocation_generation())
            pipe.get(redis_layout.revocation_seq())
            for kind in STORED_KINDS:
                pipe.hgetall(redis_layout.revocations(kind.value))
            generation, seq, *tables = await pipe.execute()
        events = [
            RevocationEvent(kind, _text(value), *parse_entry(raw))
            for kind, table in zip(STORED_KINDS, tables, strict=True)
            for value, raw in table.items()
        ]
        return Snapshot(None if generation is None else _text(generation), int(seq or 0), events)

    async def is_revoked(self, credential: Credential, now: float) -> bool:
        """Checked against Redis itself; :class:`RevocationStateLost` if the copy is incomplete."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(redis_layout.revocation_generation())
            pipe.hget(redis_layout.revocations(RevocationKind.USER), credential.user_id)
            pipe.hget(redis_layout.revocations(RevocationKind.TOKEN), credential.token_id or "")
            pipe.hget(
                redis_layout.revocations(RevocationKind.SESSION_LINK), credential.session_link or ""
            )
            generation, user, jti, sid = await pipe.execute()
        if generation is None:
            raise RevocationStateLost()
        return is_revoked_by(
            credential,
            jti_revoked=jti is not None and parse_entry(jti)[1] > now,
            sid_revoked=sid is not None and parse_entry(sid)[1] > now,
            user_valid_after=None if user is None else parse_entry(user)[0],
        )

    async def user_valid_after(self, user_id: str) -> float | None:
        raw = await self._redis.hget(redis_layout.revocations(RevocationKind.USER), user_id)
        return None if raw is None else parse_entry(raw)[0]
