"""Where session records live: one contract, a Redis and an in-memory implementation.

Stores know nothing about session IDs or timeouts; they keep records under an
already-hashed storage key, each with a time of death, and an index of each
user's sessions. :class:`tessera_verify.sessions.SessionManager` holds the policy.

A record is written once, by whoever creates the session (the auth service).
Verifiers only read it and push its time of death later (the idle refresh):
in Redis that is ``GET``, ``PEXPIRETIME`` and ``PEXPIREAT``, none of which can create
a key or change what a record says, so the Redis user a replica holds cannot
mint a session or rewrite whose it is (see ``deploy/redis/acl.py``).
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import asdict, dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from . import redis_layout
from .clock import Clock


@dataclass(frozen=True)
class SessionRecord:
    """What the server knows about one session. Never sent to the client."""

    user_id: str
    username: str
    public_id: str  # links tokens and listings to the session without revealing its ID
    created_at: float
    last_seen_at: float
    expires_at: float  # the absolute timeout
    ip: str
    user_agent: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    def seen_at(self, when: float) -> SessionRecord:
        """The same record, last seen at ``when``: a copy made on every request to a
        session touched since it was written, so by its constructor (``make bench``:
        ``dataclasses.replace`` took twice as long)."""
        return SessionRecord(
            self.user_id,
            self.username,
            self.public_id,
            self.created_at,
            when,
            self.expires_at,
            self.ip,
            self.user_agent,
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> SessionRecord:
        data = json.loads(raw)
        return cls(
            user_id=str(data["user_id"]),
            username=str(data["username"]),
            public_id=str(data["public_id"]),
            created_at=float(data["created_at"]),
            last_seen_at=float(data["last_seen_at"]),
            expires_at=float(data["expires_at"]),
            ip=str(data["ip"]),
            user_agent=str(data["user_agent"]),
        )


@dataclass(frozen=True)
class StoredSession:
    """A record as a store holds it: what it says, and when the store forgets it."""

    record: SessionRecord
    dies_at: float  # the idle deadline (never later than ``record.expires_at``)


class SessionStore(Protocol):
    """Persistence for session records (the oauth2-proxy ``SessionStore`` shape)."""

    async def save(self, key: str, record: SessionRecord, dies_at: float) -> None:
        """Create or replace the record under ``key``, gone at ``dies_at``."""
        ...

    async def touch(self, key: str, dies_at: float) -> bool:
        """Move the death of the record under ``key`` to ``dies_at``, only if one is
        still there; True when it was.

        The idle refresh goes through here, never through :meth:`save`: it
        cannot bring back a session revoked since it was read, nor change a record.
        """
        ...

    async def load(self, key: str) -> StoredSession | None: ...

    async def delete(self, key: str) -> bool:
        """Remove the record; True when there was one."""
        ...

    async def list_for_user(self, user_id: str) -> list[tuple[str, StoredSession]]:
        """The user's live sessions as ``(key, stored)`` pairs."""
        ...

    async def ping(self) -> None:
        """Raise when the backing store cannot be reached."""
        ...


class RedisSessionStore:
    """Sessions as Redis strings with a TTL, plus a sorted set per user (score: expiry).

    Times of death are absolute (``PXAT``, ``PEXPIREAT``, ``PEXPIRETIME``) and
    written from the verifiers' clock, so what a store reads back is exactly
    what was written, whatever the Redis server's clock says.
    """

    def __init__(self, redis: Redis, clock: Clock) -> None:
        self._redis = redis
        self._clock = clock

    async def save(self, key: str, record: SessionRecord, dies_at: float) -> None:
        # The record, then the user's index (it lives as long as the user's longest
        # session could). On one server (or a Sentinel group's primary) both go in one
        # MULTI: one round trip, and nobody sees one without the other. On Redis Cluster
        # they live in different hash slots, so they are two steps, each atomic on its
        # own, the record first: the caller hands the session ID out only after both, a
        # failure in between leaves a record nobody holds the ID of (it dies with its
        # TTL), and list_for_user never sees an indexed key before its record exists (so
        # it cannot prune a session being born).
        index = redis_layout.user_sessions(record.user_id)
        index_ttl = max(1, math.ceil(record.expires_at - self._clock.now()))
        two_steps = isinstance(self._redis, RedisCluster)  # typed Redis, may be a cluster
        if two_steps:
            await self._redis.set(redis_layout.session(key), record.to_bytes(), pxat=_ms(dies_at))
        async with self._redis.pipeline(transaction=True) as pipe:
            if not two_steps:
                pipe.set(redis_layout.session(key), record.to_bytes(), pxat=_ms(dies_at))
            pipe.zadd(index, {key: record.expires_at})
            pipe.expire(index, index_ttl, gt=True)
            pipe.expire(index, index_ttl, nx=True)
            await pipe.execute()

    async def touch(self, key: str, dies_at: float) -> bool:
        # PEXPIREAT on a missing key is a no-op that answers 0: a session deleted
        # since it was read stays deleted.
        return bool(await self._redis.pexpireat(redis_layout.session(key), _ms(dies_at)))

    async def load(self, key: str) -> StoredSession | None:
        # One round trip; both commands on one key (one hash slot).
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(redis_layout.session(key))
            pipe.pexpiretime(redis_layout.session(key))
            raw, dies_at_ms = await pipe.execute()
        return _stored(raw, dies_at_ms)

    async def delete(self, key: str) -> bool:
        raw = await self._redis.getdel(redis_layout.session(key))
        if raw is None:
            return False
        record = SessionRecord.from_bytes(raw)
        await self._redis.zrem(redis_layout.user_sessions(record.user_id), key)
        return True

    async def list_for_user(self, user_id: str) -> list[tuple[str, StoredSession]]:
        index = redis_layout.user_sessions(user_id)
        await self._redis.zremrangebyscore(index, "-inf", self._clock.now())
        members = await self._redis.zrange(index, 0, -1)
        keys = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        if not keys:
            return []
        # Not MGET: each record has its own hash slot. A pipeline is one round
        # trip per node, and reading records needs no atomicity.
        async with self._redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.get(redis_layout.session(k))
                pipe.pexpiretime(redis_layout.session(k))
            replies: list[object] = await pipe.execute()
        live: list[tuple[str, StoredSession]] = []
        gone: list[str] = []
        for n, key in enumerate(keys):
            raw, dies_at_ms = replies[2 * n], replies[2 * n + 1]
            stored = _stored(raw if isinstance(raw, bytes) else None, int(str(dies_at_ms)))
            if stored is None:
                gone.append(key)  # expired by its idle TTL
            else:
                live.append((key, stored))
        if gone:
            await self._redis.zrem(index, *gone)
        return live

    async def ping(self) -> None:
        await self._redis.ping()


def _ms(when: float) -> int:
    return math.ceil(when * 1000)


def _stored(raw: bytes | None, dies_at_ms: int) -> StoredSession | None:
    """A record and its ``PEXPIRETIME`` reply (-2: no key, -1: no expiry)."""
    if raw is None or dies_at_ms == -2:  # gone (perhaps between the two commands)
        return None
    record = SessionRecord.from_bytes(raw)
    if dies_at_ms < 0:  # never written so by tessera: the absolute timeout rules
        return StoredSession(record, record.expires_at)
    return StoredSession(record, dies_at_ms / 1000)


class MemorySessionStore:
    """Sessions in this process's memory: a replica's in-process sessions, and tests.

    Bounded, because anyone who can log in can make sessions: every write first
    sweeps what has expired (a heap of expiry times, so the sweep costs only what
    it removes), and past ``max_entries`` the least recently written live session
    is dropped; its holder logs in again. Redis does the same for the shared store
    with TTLs and ``maxmemory``.
    """

    #: Stale heap entries (from refreshes) tolerated before the heap is rebuilt.
    _HEAP_SLACK = 32

    def __init__(self, clock: Clock, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max_entries = max_entries
        # Insertion order is write order: every save and touch moves a key to the end.
        self._records: dict[str, tuple[SessionRecord, float]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._expiries: list[tuple[float, str]] = []  # heap; stale entries skipped lazily
        self.evicted = 0  # live sessions dropped for room

    async def save(self, key: str, record: SessionRecord, dies_at: float) -> None:
        self._sweep()
        previous = self._records.pop(key, None)
        if previous is not None and previous[0].user_id != record.user_id:
            self._unindex(key, previous[0].user_id)
        while len(self._records) >= self._max_entries:
            oldest = next(iter(self._records))
            self._forget(oldest, self._records[oldest][0])
            self.evicted += 1
        self._write(key, record, dies_at)
        self._by_user.setdefault(record.user_id, set()).add(key)

    async def touch(self, key: str, dies_at: float) -> bool:
        self._sweep()
        stored = await self.load(key)
        if stored is None:
            return False
        del self._records[key]
        self._write(key, stored.record, dies_at)
        return True

    async def load(self, key: str) -> StoredSession | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        record, dies_at = entry
        if self._clock.now() >= dies_at:
            self._forget(key, record)
            return None
        return StoredSession(record, dies_at)

    async def delete(self, key: str) -> bool:
        entry = self._records.get(key)
        if entry is None:
            return False
        self._forget(key, entry[0])
        return True

    async def list_for_user(self, user_id: str) -> list[tuple[str, StoredSession]]:
        live: list[tuple[str, StoredSession]] = []
        for key in sorted(self._by_user.get(user_id, set())):
            stored = await self.load(key)
            if stored is not None:
                live.append((key, stored))
        return live

    async def ping(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._records)

    def users_indexed(self) -> int:
        """How many users have sessions in the index (for tests of the sweep)."""
        return len(self._by_user)

    def pending_expiries(self) -> int:
        """Entries in the expiry heap, stale ones included (for tests of its bound)."""
        return len(self._expiries)

    def _write(self, key: str, record: SessionRecord, dies_at: float) -> None:
        self._records[key] = (record, dies_at)
        heapq.heappush(self._expiries, (dies_at, key))
        if len(self._expiries) > 2 * len(self._records) + self._HEAP_SLACK:
            self._expiries = [(dies_at, k) for k, (_, dies_at) in self._records.items()]
            heapq.heapify(self._expiries)

    def _sweep(self) -> None:
        now = self._clock.now()
        while self._expiries and self._expiries[0][0] <= now:
            dies_at, key = heapq.heappop(self._expiries)
            entry = self._records.get(key)
            if entry is not None and entry[1] == dies_at:  # not refreshed since
                self._forget(key, entry[0])

    def _forget(self, key: str, record: SessionRecord) -> None:
        self._records.pop(key, None)
        self._unindex(key, record.user_id)

    def _unindex(self, key: str, user_id: str) -> None:
        keys = self._by_user.get(user_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[user_id]
