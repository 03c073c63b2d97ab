"""Session-wide PostgreSQL and Redis for the test suite.

Loaded by ``pytest_plugins = ["tests.fixtures_infra"]`` in tests/conftest.py.
``DATABASE_URL`` / ``REDIS_URL`` in the environment point the suite at
existing servers; otherwise a real throwaway server is started for the
session and stopped (and deleted) at its end. ``test_database_url`` is a
database of the run's own on that PostgreSQL (:func:`throwaway_database`).

A Redis Sentinel group and a Redis Cluster (real ``redis-server`` processes
on loopback) are started the first time a test asks for one: the failover
tests kill their nodes, so they are always the suite's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import redis.exceptions

from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_stack import PostgresServer, RedisServer, free_port
from tessera_stack.redis_topologies import RedisClusterGroup, RedisNode, RedisSentinelGroup
from tessera_verify.clock import ManualClock
from tessera_verify.session_store import RedisSessionStore, SessionRecord

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Throwaway(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def remove_data(self) -> None: ...


S = TypeVar("S", bound=_Throwaway)


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    """``server`` started, then stopped and its data deleted (a server or a Redis group)."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.remove_data()


def _url_from_env_or_throwaway(
    variable: str, throwaway: Callable[[], PostgresServer | RedisServer]
) -> Iterator[str]:
    """``$variable`` when set (an existing server); else the URL of ``throwaway()``, run
    for the session."""
    if url := os.environ.get(variable):
        yield url
        return
    with running(throwaway()) as server:
        yield server.url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL URL whose user may create databases."""
    yield from _url_from_env_or_throwaway(
        "DATABASE_URL", lambda: PostgresServer(tmp_path_factory.mktemp("postgres"))
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL that tests may use freely (and flush): a throwaway server's database 0,
    or ``REDIS_URL``'s database plus this worker's number under pytest-xdist (the
    workers share that server, never a database)."""
    for url in _url_from_env_or_throwaway(
        "REDIS_URL", lambda: RedisServer(tmp_path_factory.mktemp("redis"))
    ):
        if os.environ.get("REDIS_URL"):  # as _url_from_env_or_throwaway reads it
            given = urlsplit(url).path.strip("/") or "0"
            url = with_path(url, f"/{int(given) + _worker_number()}")
        yield url


def _worker_number() -> int:
    """This pytest-xdist worker's number (``gw1``: 1); 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def with_path(url: str, path: str) -> str:
    """``url`` with ``path`` (a database: ``/name`` for PostgreSQL, ``/N`` for Redis)."""
    return urlunsplit(urlsplit(url)._replace(path=path))


async def _admin(database_url: str, sql: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.contextmanager
def throwaway_database(database_url: str, prefix: str) -> Iterator[str]:
    """A database of its own on ``database_url``'s server (named ``prefix``, this process
    and a random part), dropped with its connections at the end; its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_admin(database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_path(database_url, f"/{name}")
    finally:
        asyncio.run(_admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def test_database_url(database_url: str) -> Iterator[str]:
    """A database of our own on the server, created for this test run and dropped after."""
    with throwaway_database(database_url, "tessera_test") as url:
        yield url


@pytest.fixture(autouse=True)
def _reap_failover_sockets(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on a Sentinel or Cluster group, collect what its failovers left.

    When a primary is SIGKILLed, redis-py's cluster and Sentinel clients drop the
    dead node's connections without closing the ones a command was waiting on;
    the sockets are closed when the garbage collector gets to them, which may be
    in a later test, whose event loop is another (a ResourceWarning there, an
    error under ``filterwarnings = error``). They are reaped here, in the test
    that killed the node, with the warnings a deliberate SIGKILL causes ignored.
    """
    yield
    if {"redis_sentinel_group", "redis_cluster_group"} & set(request.fixturenames):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.fixture(scope="session")
def redis_sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelGroup]:
    """One primary, two replicas, three sentinels; tests that kill a node restart it."""
    with running(RedisSentinelGroup(tmp_path_factory.mktemp("redis-sentinel"))) as group:
        yield group


@pytest.fixture(scope="session")
def redis_cluster_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    """Three primaries with a replica each; tests that kill a node restart it."""
    with running(RedisClusterGroup(tmp_path_factory.mktemp("redis-cluster"))) as group:
        yield group


async def first_answer(
    call: Callable[[], Awaitable[T]], *, since: float, timeout: float = 60.0
) -> tuple[T, float, list[str]]:
    """Retry ``call`` every 50 ms until Redis answers it (through a failover, say).

    Returns its result, the seconds from ``since`` (a ``time.monotonic()``) to
    the answer, and the name of each error seen on the way.
    """
    errors: list[str] = []
    while True:
        try:
            result = await call()
        except (
            redis.exceptions.RedisError,
            redis.exceptions.RedisClusterException,
            OSError,
        ) as exc:
            errors.append(type(exc).__name__)
            if time.monotonic() - since > timeout:
                raise
            await asyncio.sleep(0.05)
        else:
            return result, time.monotonic() - since, errors


@dataclass(frozen=True)
class FailoverWrites:
    """What a failover test wrote before it SIGKILLed a primary: sessions and refresh-token
    families a replica acknowledged (``WAIT``), and sessions it may not have."""

    sessions: RedisSessionStore
    refresh: RefreshTokenStore
    acknowledged: list[str]
    tokens: list[str]
    unacknowledged: list[str]

    async def survive(
        self, label: str, *, probe: str, killed_at: float, failover: Callable[[], RedisNode]
    ) -> RedisNode:
        """Wait for the first answer (session ``probe``) and for ``failover()``; assert every
        acknowledged write is there and rotation goes on; log what else was lost. The
        promoted node."""
        record, seconds, errors = await first_answer(
            lambda: self.sessions.load(probe), since=killed_at
        )
        promoted = failover()
        assert record is not None
        for key in self.acknowledged:
            assert await self.sessions.load(key) is not None
        for token in self.tokens:  # rotation goes on, on the new primary
            grant = await self.refresh.peek(token)
            assert (await self.refresh.claim(token, grant)).outcome == "fresh"
        lost = [key for key in self.unacknowledged if await self.sessions.load(key) is None]
        log.info(
            "%s failover: first answer %.2f s after SIGKILL (errors before it: %s); "
            "acknowledged sessions lost: 0/%d; unacknowledged lost: %d/%d",
            label,
            seconds,
            sorted(set(errors)),
            len(self.acknowledged),
            len(lost),
            len(self.unacknowledged),
        )
        return promoted


async def start_families(refresh: RefreshTokenStore, count: int) -> list[str]:
    """``count`` refresh-token families of user ``u1``; their first tokens."""
    return [
        (await refresh.start_family(user_id="u1", session_link=f"link-{i}"))[0]
        for i in range(count)
    ]


async def save_sessions(store: RedisSessionStore, clock: ManualClock, count: int) -> list[str]:
    """``count`` fresh sessions of user ``u1`` saved in ``store``; their storage keys."""
    keys = [secrets.token_hex(16) for _ in range(count)]
    for key in keys:
        now = clock.now()
        record = SessionRecord(
            user_id="u1",
            username="u1",
            public_id=secrets.token_urlsafe(8),
            created_at=now,
            last_seen_at=now,
            expires_at=now + 3600,
            ip="127.0.0.1",
            user_agent="pytest",
        )
        await store.save(key, record, record.expires_at)
    return keys


@pytest.fixture
async def from_addresses() -> AsyncIterator[Callable[[int], aiohttp.ClientSession]]:
    """``from_addresses(n)``: an HTTP client whose connections come from 127.0.n.1 (one
    client per address: a crowd of distinct callers on loopback)."""
    opened: dict[int, aiohttp.ClientSession] = {}

    def session(n: int) -> aiohttp.ClientSession:
        if n not in opened:
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.{n}.1", 0), force_close=True)
            opened[n] = aiohttp.ClientSession(connector=connector)
        return opened[n]

    yield session
    for client in opened.values():
        await client.close()


async def until(check: Callable[[], Awaitable[bool]], seconds: float, poll: float = 0.05) -> bool:
    """Poll ``check`` every ``poll`` s for at most ``seconds`` (a deadline, not a speed
    check); its last answer."""
    for _ in range(int(seconds / poll)):
        if await check():
            return True
        await asyncio.sleep(poll)
    return await check()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A Redis of this test's own, to kill, pause and flush without touching the others
    (resumed first if a test left it paused)."""
    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    if server.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)
    await asyncio.to_thread(server.stop)
    server.remove_data()
