"""Versioned SQL migrations for any tessera service that keeps data in PostgreSQL.

Each service ships ``NNNN_name.sql`` files in a package and records what it
applied in a table of its own, so services sharing one database never see
each other's versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import asyncpg
from prometheus_client import Histogram

from .process_settings import ProcessSettings

log = logging.getLogger(__name__)

#: What a migration's statements may take (the services' other statements give up after
#: the dependency timeout): a schema change, or waiting for another process's migration.
MIGRATION_TIMEOUT = 300.0

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


class Migrator:
    """Applies the migrations of ``package`` and records them in ``table``."""

    def __init__(self, package: str, table: str) -> None:
        if not _TABLE_NAME.match(table):
            raise ValueError(f"bad migrations table name {table!r}")
        self.package = package
        self.table = table
        # One advisory lock per table: every replica of a service waits for the others.
        self._lock_id = zlib.crc32(table.encode())

    def available(self) -> list[Migration]:
        """The shipped migrations, in order."""
        found: list[Migration] = []
        for entry in resources.files(self.package).iterdir():
            match = _MIGRATION_NAME.match(entry.name)
            if match:
                found.append(Migration(int(match[1]), match[2], entry.read_text()))
        found.sort(key=lambda m: m.version)
        versions = [m.version for m in found]
        if len(set(versions)) != len(versions):
            raise RuntimeError(f"duplicate migration versions in {self.package}: {versions}")
        return found

    async def migrate(self, connection: Connection) -> list[Migration]:
        """Apply pending migrations, each in its own transaction; returns those applied.

        An advisory lock makes concurrent callers (several replicas starting at
        once) wait for each other instead of racing.
        """
        await connection.execute(
            "SELECT pg_advisory_lock($1)", self._lock_id, timeout=MIGRATION_TIMEOUT
        )
        try:
            await connection.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())""",
                timeout=MIGRATION_TIMEOUT,
            )
            rows = await connection.fetch(
                f"SELECT version FROM {self.table}",  # noqa: S608
                timeout=MIGRATION_TIMEOUT,
            )
            done = {row["version"] for row in rows}
            applied: list[Migration] = []
            for migration in self.available():
                if migration.version in done:
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql, timeout=MIGRATION_TIMEOUT)
                    await connection.execute(
                        f"INSERT INTO {self.table} (version, name) VALUES ($1, $2)",  # noqa: S608
                        migration.version,
                        migration.name,
                        timeout=MIGRATION_TIMEOUT,
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied.append(migration)
            return applied
        finally:
            await connection.execute(
                "SELECT pg_advisory_unlock($1)", self._lock_id, timeout=MIGRATION_TIMEOUT
            )

    async def pending(self, connection: Connection) -> list[Migration]:
        exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", self.table)
        done: set[int] = set()
        if exists:
            rows = await connection.fetch(f"SELECT version FROM {self.table}")  # noqa: S608
            done = {row["version"] for row in rows}
        return [m for m in self.available() if m.version not in done]


async def migrate_database(dsn: str, migrator: Migrator) -> str:
    """Apply ``migrator``'s pending migrations to ``dsn``; a one-line summary for the CLI."""
    connection = await asyncpg.connect(dsn)
    try:
        applied = await migrator.migrate(connection)
    finally:
        await connection.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to apply"
    return f"migrations: {names}"


#: A statement that can only read or write rows: one statement, of these verbs...
_ROW_STATEMENT = re.compile(r"\s*(?:SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)
#: ...and none of what outlives a statement in its session: a second statement, a
#: session-level advisory lock (``pg_advisory_xact_lock`` ends with the statement's
#: transaction), a setting changed for the session (``set_config``, an ``UPDATE`` of
#: ``pg_settings``), a temporary table, another database.
_SESSION_STATE = re.compile(
    r";|pg_(?:try_)?advisory_lock(?:_shared)?\b|\bset_config\b|\bpg_settings\b"
    r"|\btemp(?:orary)?\b|\bdblink",
    re.IGNORECASE,
)


def leaves_no_session_state(args: tuple[Any, ...]) -> bool:
    """Whether the statement a pool call ran (its SQL is ``args[0]``) leaves its
    connection as it found it: one statement that reads or writes rows, and none of
    the built-ins that change a session (:data:`_SESSION_STATE`, ``pg_settings``).
    A function of the database's own that changes the session would pass: the
    services' statements call none (their migrations define no functions).
    """
    sql = args[0] if args else None
    return isinstance(sql, str) and _plain_row_statement(sql)


@functools.lru_cache(maxsize=1024)  # the services' statements are a few constant strings
def _plain_row_statement(sql: str) -> bool:
    return bool(_ROW_STATEMENT.match(sql)) and not _SESSION_STATE.search(sql)


class PooledConnection(asyncpg.Connection):
    """A pooled connection that skips asyncpg's reset query when it knows there is
    nothing to reset.

    asyncpg resets every connection a pool takes back with one more round trip
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``): about as
    much CPU again as the statement itself, for a single-statement call on a pool.
    After :meth:`next_release_is_clean` (one statement that
    :func:`leaves_no_session_state`) the next reset sends none of it. asyncpg still
    rolls back an open transaction and drops listeners, as on every release
    (``Connection.get_reset_query``'s documented contract). Every other use
    (``acquire()``, a transaction, a migration's advisory lock) is reset in full.
    """

    _clean_release = False

    def next_release_is_clean(self) -> None:
        self._clean_release = True

    def get_reset_query(self) -> str:
        clean, self._clean_release = self._clean_release, False
        return "" if clean else str(super().get_reset_query())


def mark_clean(connection: Any) -> None:
    """Let the pool's ``connection`` (its proxy) skip the next reset query. The proxy hands
    attribute access on to its :class:`PooledConnection`, and has none once the server
    closed it under the statement (asyncpg let go of it: nothing is reset or reused)."""
    with contextlib.suppress(AttributeError):
        cast(PooledConnection, connection).next_release_is_clean()


class _RetryingPool(asyncpg.Pool):
    """A pool whose one-statement calls (``execute``, ``fetch``, ...) survive a connection
    the server closed, and give up on a server that hangs within the timeout.

    - ``pg_terminate_backend`` (an operator, a pooler, a failover) sends each backend's
      client a FATAL and closes the socket. asyncpg reads the FATAL when it arrives, but
      the pool may hand the connection out before the close is processed: the statement
      then fails at once with :class:`~asyncpg.exceptions.InternalClientError` ("cannot
      switch to state ...; another operation is in progress"), before anything is sent,
      so running it again elsewhere cannot run it twice. Every pooled connection may be
      in that state (all were terminated), so a statement is tried on as many
      connections as the pool holds, and one more.
    - The FATAL may also arrive after the statement went out (the server reads the
      termination a moment after the pool handed the connection on): asyncpg raises
      :class:`~asyncpg.exceptions.ConnectionDoesNotExistError`. A write may have
      committed by then (its result can be lost with the connection), so only a read
      (a statement that begins with ``SELECT``) runs again; a write fails with that
      error, which the services answer 503 (its outcome is unknown to them too).
    - A statement that times out (a paused or unreachable server) is reported at once:
      its connection goes back to the pool in the background, where asyncpg first sends
      the statement's cancellation (a new connection to the same, maybe silent, server)
      and resets it, which may take about as long again. The cancellation still goes
      out: a slow server stops the statement rather than finish it unseen.

    A transaction (``acquire()`` then ``transaction()``) is not retried: it fails with
    that error, which the services answer 503 (``service_errors``).

    A one-statement call that left its connection as it found it gives it back without
    asyncpg's reset round trip (:class:`PooledConnection`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Releases under way in the background (the loop keeps only weak references).
        self._releasing: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("execute", args, kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("executemany", args, kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetch", args, kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetchval", args, kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetchrow", args, kwargs)

    async def _statement(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        attempts = self.get_max_size() + 1
        for attempt in range(1, attempts + 1):
            connection = await self.acquire()
            try:
                result = await getattr(connection, method)(*args, **kwargs)
            except (asyncpg.exceptions.InternalClientError, *_LOST) as exc:
                await self.release(connection)
                if attempt == attempts or not _may_run_again(exc, args):
                    raise
                log.info("a PostgreSQL connection the server closed, trying again: %r", exc)
                continue
            except TimeoutError:
                self._release_later(connection)
                raise
            except BaseException:
                await self.release(connection)
                raise
            if leaves_no_session_state(args):
                mark_clean(connection)
            await self.release(connection)
            return result
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _release_later(self, connection: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.release(connection))
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.info("a timed-out PostgreSQL connection was dropped: %r", error)


#: How asyncpg's InternalClientError begins when it is raised before a statement is sent
#: (the protocol's state check, ``asyncpg/protocol/coreproto.pyx``): only then may a
#: statement run again.
_NOT_SENT = ("cannot switch to state", "not connected")

#: A connection lost under a statement: closed by the server (asyncpg's error, with the
#: server's FATAL as its cause when one came) or the server's FATAL itself.
_LOST = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.IdleSessionTimeoutError,
)


_READ = re.compile(r"\s*SELECT\b", re.IGNORECASE)


def _may_run_again(exc: Exception, args: tuple[Any, ...]) -> bool:
    """Whether a statement that met ``exc`` may run again on another connection: it was
    never sent (asyncpg's state check; its other internal errors may come after it
    ran), or it only reads, so running it twice is running it once (its text begins
    with ``SELECT``; tessera's reads call no function that writes)."""
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return str(exc).startswith(_NOT_SENT)
    return bool(args) and isinstance(args[0], str) and _READ.match(args[0]) is not None


async def create_pool(
    dsn: str, *, max_size: int, timeout: float, latency: Histogram | None = None
) -> asyncpg.Pool:
    """A pool whose connects and statements give up after ``timeout``: no hangs (a
    statement that may take longer says so, ``timeout=``); a statement that met a
    connection the server had closed runs again (:class:`_RetryingPool`).

    With ``latency``, every query is timed into it (``tessera_dependency_duration_seconds``).
    """
    # asyncpg.create_pool's defaults, but the class.
    pool = _RetryingPool(
        dsn,
        min_size=1,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=PooledConnection,
        record_class=asyncpg.Record,
        init=None if latency is None else query_timer(latency),
        timeout=timeout,
        command_timeout=timeout,
    )
    await pool
    return pool


async def open_database(
    database_url: str,
    process: ProcessSettings,
    migrator: Migrator,
    *,
    latency: Histogram | None = None,
) -> asyncpg.Pool:
    """The service's pool, with its migrations applied first when the settings ask."""
    pool = await create_pool(
        database_url,
        max_size=process.db_pool_max,
        timeout=process.dependency_timeout,
        latency=latency,
    )
    if process.migrate_on_start:
        async with pool.acquire() as connection:
            await migrator.migrate(connection)
    return pool


def query_timer(latency: Histogram) -> Any:
    """An asyncpg pool ``init`` hook that times every query by its leading SQL verb."""

    def record(query: asyncpg.connection.LoggedQuery) -> None:
        verb = query.query.lstrip().split(None, 1)[0].lower() if query.query.strip() else "?"
        latency.labels("postgresql", verb).observe(query.elapsed)

    async def init(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(record)

    return init
