"""Writing the revocation plane: PostgreSQL first, then Redis and the feed; rebuilding Redis.

A revocation is acknowledged only once PostgreSQL has it (the source of truth).
Then one Lua script, on the plane's one slot, merges it into Redis, numbers it
and publishes it, so verifiers' local copies learn of it within milliseconds
(see :mod:`tessera_verify.revocation_cache`).

Redis may lose what it had: FLUSHALL, a restart without data, a failover to a
replica that had not caught up, eviction. :meth:`RevocationStore.watch`
notices within ``check_interval`` (the generation marker is gone, the server
answering is another process than the one the copy was built on, or a write
to Redis failed) and rebuilds the copy from PostgreSQL, then writes a new
generation marker: verifiers refuse to trust Redis while the marker is
missing, and reload their copies when it changes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import asyncpg
import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tessera_verify import redis_layout
from tessera_verify.background import pause, reraise_if_cancelling
from tessera_verify.clock import Clock
from tessera_verify.errors import ServiceUnavailable
from tessera_verify.revocation import (
    CHANNEL,
    STORED_KINDS,
    RevocationEvent,
    RevocationKind,
    RevocationReader,
)
from tessera_verify.revocation_cache import RevocationCache

log = logging.getLogger(__name__)

# KEYS: generation, seq, the kind's hash. ARGV: channel, field ('' = announce only),
# "<when> <until>", the event's JSON, when. An older entry never replaces a newer one.
_REVOKE = """
local generation = redis.call('GET', KEYS[1])
if not generation then return redis.error_reply('TESSERA_STATE_LOST no generation marker') end
if ARGV[2] ~= '' then
  local current = redis.call('HGET', KEYS[3], ARGV[2])
  if (not current) or tonumber(string.match(current, '^%S+')) < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  end
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. generation .. ' ' .. ARGV[4])
return seq
"""

# KEYS[1]: a kind's hash. ARGV: field, "<when> <until>", when, ... (merged like _REVOKE).
_MERGE = """
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or tonumber(string.match(current, '^%S+')) < tonumber(ARGV[i + 2]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return #ARGV / 3
"""

# KEYS: generation, seq. ARGV: channel, the new generation. Written last by a rebuild.
_SEAL = """
redis.call('SET', KEYS[1], ARGV[2])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. ARGV[2] .. ' -')
return seq
"""

# KEYS: the kinds' hashes. ARGV[1]: now. Drops entries whose "until" has passed.
_PRUNE = """
local dropped = 0
for _, key in ipairs(KEYS) do
  local entries = redis.call('HGETALL', key)
  for i = 1, #entries, 2 do
    local until_ = tonumber(string.match(entries[i + 1], '%S+$'))
    if until_ <= tonumber(ARGV[1]) then
      redis.call('HDEL', key, entries[i])
      dropped = dropped + 1
    end
  end
end
return dropped
"""

_UPSERT = """
INSERT INTO revocations (kind, value, at, until) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, value) DO UPDATE
SET at = GREATEST(revocations.at, EXCLUDED.at), until = GREATEST(revocations.until, EXCLUDED.until)
"""

_STATE_LOST = "TESSERA_STATE_LOST"
_REBUILD_LOCK_ID = 0x7E55E7C
#: What the rebuild's and the prune's statements may take (background work, not a request: the
#: services' other statements give up after the dependency timeout); a rebuild also waits
#: here for another auth process's.
REBUILD_TIMEOUT = 30.0
_MERGE_BATCH = 500
REDIS_ERRORS = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
    TimeoutError,
)


def _entry(event: RevocationEvent) -> str:
    return f"{event.when!r} {event.until!r}"


class RevocationStore:
    """The only writer of the revocation plane (the auth service)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        clock: Clock,
        *,
        local: RevocationCache | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
        check_interval: float = 0.5,
        prune_interval: float = 60.0,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._clock = clock
        self._reader = RevocationReader(redis)
        self._local = local
        self._wait_replicas = wait_replicas
        self._wait_timeout = wait_timeout
        self.check_interval = check_interval
        self.prune_interval = prune_interval
        self._revoke = redis.register_script(_REVOKE)
        self._merge = redis.register_script(_MERGE)
        self._seal = redis.register_script(_SEAL)
        self._prune = redis.register_script(_PRUNE)
        self.dirty = False  # a write reached PostgreSQL but maybe not Redis
        self.rebuilds = 0

    # --- writing ----------------------------------------------------------------------

    async def record(self, event: RevocationEvent) -> None:
        """Make ``event`` durable, then publish it; returns once verifiers can learn of it.

        Redis found empty (no generation marker): the copy is rebuilt from PostgreSQL
        here and now, this revocation included, before the caller hears "done".
        Redis unreachable: the revocation is durable and will be in the next rebuild,
        but nobody can be told now, so the caller gets 503 (a retry is harmless).
        """
        assert event.kind in STORED_KINDS
        await self._pool.execute(_UPSERT, event.kind.value, event.value, event.when, event.until)
        if self._local is not None:
            # Read your own writes: this process refuses the credential from now on,
            # without waiting for its own feed to bring the event back.
            self._local.apply(event)
        try:
            try:
                await self._publish(event, stored=True)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith(_STATE_LOST):
                    raise
                await self.rebuild()  # which reads this revocation back from PostgreSQL
        except REDIS_ERRORS as exc:
            self.dirty = True
            log.warning("revocation kept in PostgreSQL, not yet in Redis: %r", exc)
            raise ServiceUnavailable("the revocation is recorded; Redis is unreachable") from exc

    async def announce_session_deleted(self, storage_key: str) -> None:
        """Tell caches a session is gone (best effort: the session itself is deleted, and a
        revoked one is also refused by its link, so a lost announcement costs no safety)."""
        event = RevocationEvent(RevocationKind.SESSION, storage_key)
        if self._local is not None:
            self._local.apply(event)
        try:
            await self._publish(event, stored=False)
        except REDIS_ERRORS as exc:
            self.dirty = True
            log.warning("a session deletion was not announced: %r", exc)

    async def _publish(self, event: RevocationEvent, *, stored: bool) -> None:
        kind = event.kind if stored else RevocationKind.TOKEN  # any key of the one slot
        await self._revoke(
            keys=[
                redis_layout.revocation_generation(),
                redis_layout.revocation_seq(),
                redis_layout.revocations(kind.value),
            ],
            args=[
                CHANNEL,
                event.value if stored else "",
                _entry(event),
                event.to_json(),
                repr(event.when),
            ],
        )
        if self._wait_replicas > 0:
            await self._wait_for_replicas()

    async def _wait_for_replicas(self) -> None:
        timeout_ms = int(self._wait_timeout * 1000)
        acked = await self._redis.execute_command(  # type: ignore[no-untyped-call]
            "WAIT", self._wait_replicas, timeout_ms
        )
        if int(acked) < self._wait_replicas:
            log.warning("a revocation reached %s of %d Redis replicas", acked, self._wait_replicas)

    # --- rebuilding -------------------------------------------------------------------

    async def needs_rebuild(self) -> bool:
        """The copy is missing, was built on another server process, or missed a write."""
        if self.dirty:
            return True
        generation, _ = await self._reader.marker()
        if generation is None:
            return True
        built_on = generation.partition(".")[0]
        return built_on != await self._server_run_id()

    async def rebuild(self) -> int:
        """Merge every live revocation from PostgreSQL into Redis, then seal a new generation."""
        self.dirty = False  # writes from now on count again
        try:
            # Redis first (one cheap question): while it cannot answer, a rebuild that is
            # tried every check would otherwise take the lock and read every live
            # revocation from PostgreSQL each time, only to fail on Redis. Should Redis
            # restart during the rebuild, the generation names the process before it,
            # and the next check rebuilds again.
            run_id = await self._server_run_id()
            now = self._clock.now()
            async with self._pool.acquire() as connection, connection.transaction():
                # One rebuild at a time across auth instances; the others wait, then redo it
                # (harmless: merging is idempotent).
                await connection.execute(
                    "SELECT pg_advisory_xact_lock($1)", _REBUILD_LOCK_ID, timeout=REBUILD_TIMEOUT
                )
                rows = await connection.fetch(
                    "SELECT kind, value, at, until FROM revocations WHERE until > $1",
                    now,
                    timeout=REBUILD_TIMEOUT,
                )
                by_kind: dict[str, list[Any]] = {kind.value: [] for kind in STORED_KINDS}
                for row in rows:
                    entry = f"{row['at']!r} {row['until']!r}"
                    by_kind[row["kind"]].extend([row["value"], entry, repr(row["at"])])
                for kind, args in by_kind.items():
                    for start in range(0, len(args), _MERGE_BATCH * 3):
                        await self._merge(
                            keys=[redis_layout.revocations(kind)],
                            args=args[start : start + _MERGE_BATCH * 3],
                        )
                generation = f"{run_id}.{secrets.token_hex(8)}"
                await self._seal(
                    keys=[redis_layout.revocation_generation(), redis_layout.revocation_seq()],
                    args=[CHANNEL, generation],
                )
        except BaseException:
            # Not rebuilt: the copy may still miss what PostgreSQL has (a revocation
            # recorded while Redis was unreachable). Whatever wrote since, the next
            # check must rebuild again, or nothing ever would: the marker and the
            # run ID look the same as before the fault.
            self.dirty = True
            raise
        self.rebuilds += 1
        log.warning("revocation plane rebuilt from PostgreSQL: %d live revocations", len(rows))
        return len(rows)

    async def _server_run_id(self) -> str:
        """The run ID of the Redis process holding the plane's slot (new on every restart)."""
        client: Any = self._redis  # the client factory may hand a RedisCluster typed as Redis
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(redis_layout.revocation_generation())
            info = await client.info("server", target_nodes=node)
        else:
            info = await self._redis.info("server")
        return str(info["run_id"])

    async def prune(self) -> None:
        """Forget revocations that no longer revoke anything (in PostgreSQL and Redis)."""
        now = self._clock.now()
        await self._pool.execute(
            "DELETE FROM revocations WHERE until <= $1", now, timeout=REBUILD_TIMEOUT
        )
        await self._prune(
            keys=[redis_layout.revocations(kind.value) for kind in STORED_KINDS], args=[repr(now)]
        )

    async def watch(self) -> None:
        """Forever (a background task): rebuild whenever Redis lost the copy; prune now and then."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + self.prune_interval
        while True:
            try:
                if await self.needs_rebuild():
                    await self.rebuild()
                if loop.time() >= next_prune:
                    await self.prune()
                    next_prune = loop.time() + self.prune_interval
            except (*REDIS_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                reraise_if_cancelling(exc)
                log.warning("revocation plane check failed, retrying: %r", exc)
            except Exception:
                # Never let one bad step stop the watch for good.
                log.exception("revocation plane check failed, retrying")
            await pause(self.check_interval)
