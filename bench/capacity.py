"""Part 8: what one session, one login and one revocation leave behind, for the capacity
model (README, "Capacity").

On the bench's stack, with nothing else running on it:

* ``N`` logins of one user, each a new shared session: Redis's ``used_memory``,
  its keys and the commands it processed before and after, and PostgreSQL's rows
  written (``pg_stat_database``: inserted, updated and deleted tuples) over the
  logins;
* ``N`` logins of the same user, each asking for a token pair (a refresh family,
  no session): the same readings;
* ``N`` refreshes of one token family (each rotates its refresh token): the same
  readings, right after them (each spent token's grace record still there); then,
  once the grace window is over, ``N`` more, read once theirs is over too: what a
  refresh leaves for good (the first batch's tables already grown);
* ``N`` distinct access tokens revoked at ``/auth/revoke`` (RFC 7009): the same
  readings, so the memory of one denylist entry in Redis and the PostgreSQL
  writes of one revocation;
* what one Redis process (one core) serves on this machine: ``redis-benchmark``
  (GET and SET of small values, 50 connections, no pipelining) against a
  throwaway ``redis-server`` of the same binary, so a shard's command rate is
  measured here, not assumed.

Redis counts its own memory (``INFO memory``), so the figures hold for any client;
allocator rounding makes them an average over ``N``, not an exact size.
"""

from __future__ import annotations

import asyncio
import csv
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from bench.config import BenchConfig
from bench.credentials import (
    auth_settings,
    login_session,
    login_tokens,
    mint_access_tokens,
    refresh,
    register,
)
from bench.stack import BenchStack
from tessera_stack import RedisServer
from tessera_verify import redis_layout

__all__ = ["run_capacity"]

#: Seconds after a batch's last answer until the auth service's audit trail has written
#: its events (it gathers them for 0.25 s, then writes one INSERT).
AUDIT_WRITTEN = 1.5
#: How long the auth service's terminated PostgreSQL backends may take to exit.
BACKENDS_GONE = 10.0
#: Seconds beyond the grace window until every grace record has expired: the second the
#: records are kept beyond it, and a margin.
GRACE_RECORDS_MARGIN = 2.0
#: Logins at once: enough to keep the auth service's Argon2 threads busy.
CONCURRENT_LOGINS = 4


async def run_capacity(
    stack: BenchStack, config: BenchConfig, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Measure part 8 on ``stack``."""
    count = config.capacity_items
    revocations = config.capacity_revocations
    auth_env = stack.auth_environment()
    grace_records_gone = auth_settings(auth_env).refresh_grace + GRACE_RECORDS_MARGIN
    redis = Redis.from_url(stack.settings.redis_url)
    database = await asyncpg.connect(auth_env["DATABASE_URL"])
    try:
        async with aiohttp.ClientSession() as http:
            username = f"bench-cap-{secrets.token_hex(3)}"
            await register(http, stack.auth_url, username)
            pair = await login_tokens(http, stack.auth_url, username)
            progress(f"capacity: {count} logins, each a shared session")
            idle = await _readings(redis, database)
            before = await _readings(redis, database)
            pending = iter(range(count))

            async def logins() -> None:
                for _ in pending:
                    await login_session(http, stack.auth_url, username)

            await asyncio.gather(*(logins() for _ in range(CONCURRENT_LOGINS)))
            after_session_logins = await _readings(redis, database)

            progress(f"capacity: {count} logins, each a token pair (a refresh family)")
            pending = iter(range(count))

            async def token_logins() -> None:
                for _ in pending:
                    await login_tokens(http, stack.auth_url, username)

            await asyncio.gather(*(token_logins() for _ in range(CONCURRENT_LOGINS)))
            after_logins = await _readings(redis, database)

            progress(f"capacity: {count} refreshes of one token family, twice")
            chain = pair

            async def refreshes() -> None:
                nonlocal chain
                for _ in range(count):
                    chain = await refresh(http, stack.auth_url, chain.refresh_token)

            async def records_gone() -> dict[str, float]:
                # A spent token's grace record outlives its refresh by the grace window
                # and a second (10 + 1 s by default): what stays is read once they are.
                await asyncio.sleep(grace_records_gone)
                async for _ in redis.scan_iter(match=redis_layout.refresh_token("*"), count=1000):
                    pass  # a SCAN reclaims the expired keys it meets
                return await _readings(redis, database)

            await refreshes()
            after_refreshes = await _readings(redis, database)
            settled = await records_gone()
            # What stays is read on a second batch: Redis grows its key tables for the
            # first batch's grace records and keeps them, which is no one refresh's.
            await refreshes()
            settled_again = await records_gone()

            claims = pair.claims()
            tokens = await mint_access_tokens(
                auth_env,
                subject=str(claims["sub"]),
                session_link=str(claims["sid"]),
                count=revocations,
                ttl=3600,
            )
            progress(f"capacity: {revocations} access tokens revoked")
            for token in tokens:
                async with http.post(f"{stack.auth_url}/auth/revoke", data={"token": token}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"/auth/revoke answered {r.status}")
            after_revocations = await _readings(redis, database)
    finally:
        await database.close()
        await redis.aclose()
    # What Redis did on its own meanwhile (the revocation feed's heartbeats), per second
    # of an interval with nothing else on the stack: taken off the commands below.
    background = (before["redis_commands"] - idle["redis_commands"]) / (
        before["time"] - idle["time"]
    )
    progress("capacity: one Redis process's command rate (redis-benchmark)")
    shard = await asyncio.to_thread(_redis_commands_per_s, config.capacity_redis_requests)
    return {
        "count": count,
        "redis_background_commands_per_s": background,
        "redis_commands_per_s": shard,
        "login": _per_item(before, after_session_logins, count, background),
        "token_login": _per_item(after_session_logins, after_logins, count, background),
        "revocations": revocations,
        "refresh": _per_item(after_logins, after_refreshes, count, background),
        "refresh_kept": _per_item(settled, settled_again, count, background),
        "revocation": _per_item(settled_again, after_revocations, revocations, background),
    }


def _redis_commands_per_s(requests: int) -> dict[str, float]:
    """GET and SET per second of one throwaway ``redis-server`` on loopback."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        raise RuntimeError("redis-benchmark is needed (make bootstrap installs Redis)")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-redis-") as directory:
        server = RedisServer(directory)
        server.start()  # on a free port; returns once it answers PING
        try:
            result = subprocess.run(
                [tool, "-h", "127.0.0.1", "-p", str(server.port), "-n", str(requests),
                 "-c", "50", "-t", "get,set", "--csv", "-d", "64"],
                capture_output=True, text=True, check=True, timeout=120,
            )  # fmt: skip
        finally:
            server.stop()
    rates: dict[str, float] = {}
    for row in csv.reader(result.stdout.splitlines()):
        if len(row) >= 2 and row[0] in ("GET", "SET"):
            rates[row[0].lower()] = float(row[1])
    if set(rates) != {"get", "set"}:
        raise RuntimeError(f"redis-benchmark printed no rates:\n{result.stdout[-500:]}")
    return rates


async def _readings(redis: Redis, database: asyncpg.Connection) -> dict[str, float]:
    memory = await redis.info("memory")
    stats = await redis.info("stats")
    read_at = time.monotonic()
    keys = await redis.dbsize()
    await _flush_pg_stats(database)
    row = await database.fetchrow(
        "SELECT tup_inserted, tup_updated, tup_deleted FROM pg_stat_database"
        " WHERE datname = current_database()"
    )
    assert row is not None
    return {
        "time": read_at,
        "redis_bytes": float(memory["used_memory"]),
        "redis_keys": float(keys),
        # Everyone's: the revocation feed's heartbeats too (run_capacity takes them off).
        "redis_commands": float(stats["total_commands_processed"]),
        "pg_rows": float(row["tup_inserted"] + row["tup_updated"] + row["tup_deleted"]),
    }


_OTHER_BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE usename = current_user AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


async def _flush_pg_stats(database: asyncpg.Connection) -> None:
    """Have every backend of the auth service's role report what it wrote, then read afresh.

    A backend reports its counts at most once a second, and one that fell idle within
    that second only after PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s); one that exits
    reports them at once. So once the audit trail has written, the role's other backends
    are terminated (the pool opens new ones when next asked; no statement is under way)
    and their exit awaited. The replicas' role writes nothing here.
    """
    await asyncio.sleep(AUDIT_WRITTEN)
    terminated = [row["pid"] for row in await database.fetch(_OTHER_BACKENDS)]
    await database.execute(
        "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", terminated
    )
    # Only these: the pools open new backends meanwhile (which have written nothing yet).
    for _ in range(int(BACKENDS_GONE / 0.05)):
        if not await database.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", terminated
        ):
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("the auth service's terminated PostgreSQL backends did not exit")
    await database.execute("SELECT pg_stat_clear_snapshot()")


def _per_item(
    before: dict[str, float], after: dict[str, float], count: int, background: float
) -> dict[str, float]:
    item = {name: (after[name] - before[name]) / count for name in before if name != "time"}
    item["redis_commands"] -= background * (after["time"] - before["time"]) / count
    return item
