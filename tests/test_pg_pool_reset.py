"""The services' PostgreSQL pool gives a connection back without asyncpg's reset round trip
only when the one statement it ran left nothing in the session (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tessera_platform.pg_migrations import create_pool, leaves_no_session_state, mark_clean

RESET_MARK = "pg_advisory_unlock_all"


@pytest.mark.parametrize(
    ("sql", "clean"),
    [
        ("SELECT id FROM users WHERE username = $1", True),
        ("  select 1", True),
        ("UPDATE users SET disabled = $2 WHERE id = $1", True),
        ("INSERT INTO audit_log (event) VALUES ($1)", True),
        ("DELETE FROM revocations WHERE until <= $1", True),
        ("WITH gone AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM gone", True),
        ("SELECT pg_advisory_xact_lock($1)", True),  # released with its statement
        ("SELECT pg_advisory_lock($1)", False),
        ("SELECT pg_try_advisory_lock_shared($1)", False),
        ("select PG_ADVISORY_LOCK(1)", False),
        ("SELECT set_config('search_path', 'x', false)", False),
        ("UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'", False),
        ("SET search_path TO x", False),
        ("RESET ALL", False),
        ("LISTEN channel", False),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", False),
        ("CREATE TEMP TABLE t (x int)", False),
        ("SELECT 1 INTO TEMPORARY t", False),
        ("SELECT 1; SET search_path TO x", False),
        ("SELECT 1;", False),  # conservative: any second statement, even an empty one
        ("SELECT * FROM dblink('x', 'SET a = 1') AS t(a int)", False),
        ("BEGIN", False),
        ("", False),
    ],
)
def test_only_a_single_row_statement_counts_as_leaving_no_session_state(
    sql: str, clean: bool
) -> None:
    assert leaves_no_session_state((sql, 1)) is clean


def test_a_call_without_sql_text_is_never_clean() -> None:
    assert leaves_no_session_state(()) is False
    assert leaves_no_session_state((b"SELECT 1",)) is False


@pytest.fixture
async def pool_and_log(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """One connection, so every call meets what the one before left; every query it
    sends (asyncpg's reset query included) is logged (a query logger stays with its
    connection across releases)."""
    pool = await create_pool(database_url, max_size=1, timeout=10.0)
    sent: list[str] = []
    async with pool.acquire() as connection:
        connection.add_query_logger(lambda query: sent.append(query.query))
    try:
        yield pool, sent
    finally:
        await pool.close()


def _resets(sent: list[str]) -> int:
    return sum(RESET_MARK in query for query in sent)


async def test_plain_statements_skip_the_reset_and_the_rest_is_reset_in_full(
    pool_and_log: tuple[asyncpg.Pool, list[str]],
) -> None:
    pool, sent = pool_and_log
    sent.clear()
    for _ in range(5):
        assert await pool.fetchval("SELECT $1::int", 7) == 7
    assert _resets(sent) == 0  # five statements, no reset round trip
    async with pool.acquire() as connection:
        await connection.fetchval("SELECT 1")
    assert _resets(sent) == 1  # acquire(): whatever the caller did, reset in full
    await pool.fetchval("SHOW application_name")
    assert _resets(sent) == 2  # not a row statement it knows: reset in full
    await pool.fetchval("SELECT 1")
    assert _resets(sent) == 2


async def test_a_session_setting_made_by_one_call_never_reaches_the_next(
    pool_and_log: tuple[asyncpg.Pool, list[str]],
) -> None:
    pool, _ = pool_and_log
    leaked = f"leak-{secrets.token_hex(4)}"
    assert await pool.fetchval("SELECT set_config('application_name', $1, false)", leaked)
    assert await pool.fetchval("SHOW application_name") != leaked
    async with pool.acquire() as connection:
        await connection.execute(f"SET application_name = '{leaked}'")
    assert await pool.fetchval("SHOW application_name") != leaked


async def test_a_session_advisory_lock_taken_through_the_pool_is_released(
    pool_and_log: tuple[asyncpg.Pool, list[str]], database_url: str
) -> None:
    pool, _ = pool_and_log
    lock_id = secrets.randbelow(2**31)
    await pool.execute("SELECT pg_advisory_lock($1)", lock_id)
    other = await asyncpg.connect(database_url)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
        await other.execute("SELECT pg_advisory_unlock($1)", lock_id)
        async with pool.acquire() as connection:
            await connection.execute("SELECT pg_advisory_lock($1)", lock_id)
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
    finally:
        await other.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(
    pool_and_log: tuple[asyncpg.Pool, list[str]],
) -> None:
    pool, _ = pool_and_log
    table = f"pool_reset_{secrets.token_hex(4)}"
    async with pool.acquire() as connection:
        await connection.execute("BEGIN")
        await connection.execute(f"CREATE TABLE {table} (x int)")
    assert await pool.fetchval("SELECT to_regclass($1) IS NULL", table)


async def test_a_connection_the_pool_let_go_of_is_not_marked_and_nothing_fails(
    pool_and_log: tuple[asyncpg.Pool, list[str]],
) -> None:
    """The server closed the connection under a statement that had answered: asyncpg has
    detached the pool's proxy from it, and marking it clean must not turn the answer
    into an error."""
    pool, sent = pool_and_log
    proxy = await pool.acquire()
    await pool.release(proxy)  # detached, as asyncpg does when the server closes it
    mark_clean(proxy)
    await pool.release(proxy)  # asyncpg: already released, nothing to do
    sent.clear()
    async with pool.acquire() as connection:
        await connection.fetchval("SELECT 1")
    assert _resets(sent) == 1  # the next holder of the connection is reset in full


#: What a statement may meet while the server kills the pool's connections under it.
_FAULTS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


async def test_concurrent_calls_never_see_a_session_setting_while_their_backends_are_killed(
    database_url: str,
) -> None:
    """40 callers share a pool of 4: half set a session setting (reset in full after), half
    read it with a plain statement (no reset after), while another session terminates the
    pool's backends again and again. No read sees a setting another call made, no call
    fails otherwise than with a connection error, and the pool serves again after."""
    pool = await create_pool(database_url, max_size=4, timeout=10.0)
    leaked = f"leak-{secrets.token_hex(4)}"
    pids: set[int] = set()
    seen: list[str] = []
    faults = 0

    async def caller(number: int) -> None:
        nonlocal faults
        for turn in range(25):
            try:
                if (number + turn) % 2:
                    await pool.fetchval("SELECT set_config('application_name', $1, false)", leaked)
                else:
                    row = await pool.fetchrow(
                        "SELECT pg_backend_pid() AS pid, "
                        "current_setting('application_name') AS name"
                    )
                    assert row is not None
                    pids.add(row["pid"])
                    seen.append(row["name"])
            except _FAULTS:
                faults += 1

    async def killer(other: asyncpg.Connection, callers: asyncio.Future[Any]) -> None:
        for _ in range(1000):  # bounded: about 20 s at most
            if callers.done():
                return
            await asyncio.sleep(0.02)
            # Only this pool's backends: other tests share the server.
            await other.fetch(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(pids)
            )

    other = await asyncpg.connect(database_url)
    try:
        callers = asyncio.gather(*(caller(number) for number in range(40)))
        await killer(other, callers)
        await callers
        assert await pool.fetchval("SELECT current_setting('application_name')") != leaked
    finally:
        await other.close()
        await pool.close()
    assert len(seen) > 100  # the reads ran, between the kills
    assert leaked not in seen
    assert faults > 0  # the kills met calls in flight
