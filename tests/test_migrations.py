"""Versioned migrations applied by a command, safe to run concurrently."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import pytest

from tessera_auth import db

from .fixtures_infra import throwaway_database, until


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "tessera_migrate") as url:
        yield url


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_migrations_apply_in_order_and_only_once(empty_database: str) -> None:
    connection = await asyncpg.connect(empty_database)
    try:
        shipped = [m.version for m in db.available_migrations()]
        assert shipped == list(range(1, len(shipped) + 1))  # numbered without gaps
        assert [m.version for m in await db.pending_migrations(connection)] == shipped
        applied = await db.migrate(connection)
        assert [m.name for m in applied][:2] == ["users", "signing_keys"]
        assert [m.version for m in applied] == shipped
        assert await db.migrate(connection) == []
        assert await db.pending_migrations(connection) == []
    finally:
        await connection.close()
    assert {"users", "signing_keys", "schema_migrations"} <= await _tables(empty_database)


async def test_concurrent_migrators_do_not_race(empty_database: str) -> None:
    connections = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(db.migrate(c) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    shipped = len(db.available_migrations())
    assert sorted(len(applied) for applied in results) == [0, 0, 0, shipped]


def test_migrate_command_applies_pending_migrations(empty_database: str, redis_url: str) -> None:
    env = {
        **os.environ,
        "TESSERA_ENV": "development",
        "DATABASE_URL": empty_database,
        "REDIS_URL": redis_url,
    }

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tessera_auth", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = migrate()
    assert result.returncode == 0, result.stderr
    assert "0001_users" in result.stdout and "0002_signing_keys" in result.stdout
    again = migrate()
    assert "nothing to apply" in again.stdout


async def test_migrations_wait_out_a_lock_longer_than_a_short_command_timeout(
    empty_database: str,
) -> None:
    """A service with a short dependency timeout runs its start-up migrations on a pool
    whose command timeout is that (0.5 s in the fault tests). Every statement of the
    migration must take the migration timeout instead: before the fix, reading the
    applied versions did not, and a start-up on a busy PostgreSQL failed (seen in CI:
    TimeoutError in the auth service's start-up)."""
    setup = await asyncpg.connect(empty_database)
    holder = await asyncpg.connect(empty_database)
    migrating = await asyncpg.connect(empty_database, command_timeout=0.2)
    try:
        await db.migrate(setup)
        locked = holder.transaction()
        await locked.start()
        await holder.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
        attempt = asyncio.create_task(db.migrate(migrating))
        # Released only once PostgreSQL says the migration has waited on the lock for
        # twice the short timeout (or once the migration gave up: the old failure).
        waiting_long = """SELECT count(*) FROM pg_stat_activity
                          WHERE pid = $1 AND wait_event_type = 'Lock'
                            AND clock_timestamp() - query_start > interval '0.4 s'"""

        async def waited_or_gave_up() -> bool:
            if attempt.done():
                return True
            return bool(await setup.fetchval(waiting_long, migrating.get_server_pid()))

        assert await until(waited_or_gave_up, 30)
        await locked.commit()
        assert await attempt == []
    finally:
        for connection in (setup, holder, migrating):
            await connection.close()
