"""PostgreSQL for the auth service: its migrations (`python -m tessera_auth migrate`)."""

from __future__ import annotations

from tessera_platform.pg_migrations import Connection, Migration, Migrator, create_pool

MIGRATOR = Migrator("tessera_auth.migrations", "schema_migrations")

__all__ = ["MIGRATOR", "Connection", "Migration", "available_migrations", "create_pool"]


def available_migrations() -> list[Migration]:
    return MIGRATOR.available()


async def migrate(connection: Connection) -> list[Migration]:
    return await MIGRATOR.migrate(connection)


async def pending_migrations(connection: Connection) -> list[Migration]:
    return await MIGRATOR.pending(connection)
