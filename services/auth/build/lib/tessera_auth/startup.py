"""Start-up checks: a real round-trip to every dependency, all problems listed at once."""

from __future__ import annotations

import asyncio

import asyncpg

from . import db
from .app import create_redis
from .settings import Settings


async def check_dependencies(settings: Settings) -> list[str]:
    """Everything wrong with Redis and PostgreSQL as configured; empty when all is well."""
    problems: list[str] = []
    timeout = settings.process.dependency_timeout

    redis = create_redis(settings)
    try:
        await asyncio.wait_for(redis.ping(), timeout)
    except Exception as exc:
        problems.append(f"REDIS_URL: cannot reach Redis: {exc!r}")
    finally:
        await redis.aclose()

    try:
        connection = await asyncio.wait_for(asyncpg.connect(settings.database_url), timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problems.append(f"DATABASE_URL: cannot reach PostgreSQL: {exc!r}")
    else:
        try:
            pending = await db.pending_migrations(connection)
            if pending and not settings.process.migrate_on_start:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
                problems.append(
                    f"DATABASE_URL: migrations pending ({names}); "
                    "run `python -m tessera_auth migrate`"
                )
        finally:
            await connection.close()
    return problems
