"""After a dependency fault ends, everything recovers without a restart.

Against real servers, each test makes a fault, ends it, and checks the first
requests after: PostgreSQL connections terminated by the server
(``pg_terminate_backend``), the revocation feed's subscriptions killed
(``CLIENT KILL TYPE pubsub``), and a network partition between the auth
service and Redis (a loopback proxy dropping bytes) during which a revocation
was kept in PostgreSQL but could not reach Redis: once the partition heals,
the plane must be rebuilt and every verifier refuse the credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tessera_auth import app_state
from tessera_auth.app import create_app
from tessera_auth.revocation_store import RevocationStore
from tessera_auth.settings import Settings
from tessera_platform.pg_migrations import create_pool
from tessera_stack import RedisServer
from tessera_verify.clock import ManualClock
from tessera_verify.integration import tessera_verify
from tessera_verify.revocation_cache import RevocationCache

from .conftest import LoggedIn, ResourceFactory, log_in_with_everything, with_changes
from .fixtures_infra import until
from .tcp_proxy import TcpProxy

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"
S = 2.0  # the staleness bound these tests run with
TIMEOUT = 0.5  # the dependency timeout these tests run with
ROUNDS = 20  # pg_terminate_backend rounds (the race is hit in some of them)
READ_ROUNDS = 100  # the same, straight on a pool (no HTTP between: the race is hit more often)
READERS = 8  # reads at once after each round's termination, on a pool of 4


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(client: Client, path: str, user: LoggedIn) -> int:
    return (await client.get(path, headers=_bearer(user.token))).status


async def _login(auth: Client, user: LoggedIn) -> int:
    response = await auth.post(
        "/auth/login", json={"username": user.name, "password": PASSWORD, "credential": "both"}
    )
    return response.status


def _cache(replica: Client) -> RevocationCache:
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    return cache


@pytest.fixture
async def make_auth_server(
    aiohttp_client: Callable[..., Awaitable[Client]],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    settings: Settings,
    clock: ManualClock,
) -> Callable[[str], Awaitable[Client]]:
    """An auth service (a real server, for replicas' JWKS) on the Redis at the given URL."""

    async def make(redis_url: str) -> Client:
        changed = with_changes(
            settings,
            redis_url=redis_url,
            revocation_max_staleness=S,
            dependency_timeout=TIMEOUT,
        )
        return await aiohttp_client(await aiohttp_server(create_app(changed, clock=clock)))

    return make


# --- PostgreSQL: connections the server terminated ------------------------------------


async def _terminate_backends(database_url: str) -> int:
    """``pg_terminate_backend`` every other connection to the database; how many."""
    admin = await asyncpg.connect(database_url)
    try:
        terminated: int = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return terminated


async def test_the_first_requests_after_pg_terminate_backend_succeed(
    make_replica: ResourceFactory, auth: Client, settings: Settings
) -> None:
    """An operator's pg_terminate_backend, a pooler's or a failover's reset: every pooled
    connection of both services is dead, and PostgreSQL answers new ones at once. The
    next request must succeed, never a 500 (and not a 503 either: nothing is down).

    Failed before the fix, in some of the rounds: a pooled connection that has read the server's
    FATAL (57P01) but whose socket close asyncpg has not processed yet is handed out,
    and the query fails with asyncpg's InternalClientError ("cannot switch to state
    12; another operation (2) is in progress"), which is not a dependency error: 500.
    """
    user = await log_in_with_everything(auth)
    replica = await make_replica("r1")
    outcomes: list[tuple[int, int]] = []
    for _ in range(ROUNDS):
        assert await _status(replica, "/api/comments", user) == 200  # connections in use
        assert await _terminate_backends(settings.database_url) >= 2  # both services'
        outcomes.append((await _login(auth, user), await _status(replica, "/api/comments", user)))
    assert outcomes == [(200, 200)] * ROUNDS
    response = await auth.post("/auth/logout", headers=_bearer(user.token))
    assert response.status == 200, await response.text()  # a revocation: PostgreSQL first


async def test_a_read_sent_as_the_server_terminates_its_connection_is_read_again(
    settings: Settings,
) -> None:
    """The pool hands out a connection whose backend is being terminated but has not sent
    its FATAL yet: the statement goes out, and the connection is lost under it
    (asyncpg's ConnectionDoesNotExistError, the FATAL as its cause). A read runs again on
    another connection; the caller never sees the loss.

    Failed before the fix in about a third of the rounds (126 of 400 on this machine): a
    read right after ``pg_terminate_backend`` failed, and a request answered 503.
    """
    pool = await create_pool(settings.database_url, max_size=4, timeout=TIMEOUT * 4)
    try:
        for number in range(READ_ROUNDS):
            # Several connections in the pool, each with a backend.
            await asyncio.gather(*(pool.fetchval("SELECT pg_sleep(0.001)") for _ in range(3)))
            assert await _terminate_backends(settings.database_url) >= 1
            # More reads at once than the pool holds connections, all of them dead.
            reads = await asyncio.gather(
                *(pool.fetchval("SELECT $1::int", number + i) for i in range(READERS))
            )
            assert reads == [number + i for i in range(READERS)]
    finally:
        await pool.close()


# --- Redis: the revocation feed's subscriptions killed ----------------------------------


async def test_a_killed_feed_subscription_resubscribes_and_revocations_still_arrive(
    make_auth_server: Callable[[str], Awaitable[Client]],
    make_replica: ResourceFactory,
    own_redis: RedisServer,
) -> None:
    auth = await make_auth_server(own_redis.url)
    replica = await make_replica(
        "r1", redis_url=own_redis.url, revocation_max_staleness=S, dependency_timeout=TIMEOUT
    )
    cache = _cache(replica)
    assert await cache.wait_fresh(5.0)
    victims = [await log_in_with_everything(auth) for _ in range(3)]
    bystander = await log_in_with_everything(auth)
    admin = Redis.from_url(own_redis.url)
    try:
        for victim in victims:  # three times: a feed that resubscribed can lose it again
            # Both feeds (the auth service's own and the replica's) lose their connection.
            assert await admin.client_kill_filter(_type="pubsub") == 2
            response = await auth.post("/auth/logout", headers=_bearer(victim.token))
            assert response.status == 200, await response.text()

            async def refused_and_fresh(user: LoggedIn = victim) -> bool:
                return await _status(replica, "/api/me", user) == 401 and cache.fresh

            assert await until(refused_and_fresh, 5.0)
            assert await _status(replica, "/api/me", bystander) == 200
        # Subscribed again, once each: nothing leaked, nothing left behind.
        assert len(await admin.client_list(_type="pubsub")) == 2
    finally:
        await admin.aclose()


async def test_a_feed_that_meets_an_error_redis_py_does_not_name_follows_again(
    make_auth_server: Callable[[str], Awaitable[Client]],
    make_replica: ResourceFactory,
    own_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py 8.1 lets a connection closed under a write through as AttributeError
    (``'NoneType' object has no attribute 'writelines'``) or TypeError, not as one of its
    connection errors. The feed distrusts its copy and follows again, as for any failure.

    Failed before the fix (seen in CI, a cluster's feed): the feed's task ended with that
    error, and the replica's copy never became fresh again (every credential 503).
    """
    auth = await make_auth_server(own_redis.url)
    replica = await make_replica(
        "r1", redis_url=own_redis.url, revocation_max_staleness=S, dependency_timeout=TIMEOUT
    )
    cache = _cache(replica)
    assert await cache.wait_fresh(5.0)
    victim, bystander = await log_in_with_everything(auth), await log_in_with_everything(auth)
    marker = cache.reader.marker
    raised: list[AttributeError] = []

    async def closed_under_a_write() -> tuple[str | None, int]:
        if not raised:
            raised.append(AttributeError("'NoneType' object has no attribute 'writelines'"))
            raise raised[0]
        return await marker()

    async def has_raised() -> bool:
        return bool(raised)

    monkeypatch.setattr(cache.reader, "marker", closed_under_a_write)
    admin = Redis.from_url(own_redis.url)
    try:
        assert await admin.client_kill_filter(_type="pubsub") == 2  # the feed follows anew
        assert await until(has_raised, 5.0)
        assert await cache.wait_fresh(10.0)  # followed again, not stopped for good
        assert "revocation feed failed" in caplog.text
        response = await auth.post("/auth/logout", headers=_bearer(victim.token))
        assert response.status == 200, await response.text()

        async def refused(user: LoggedIn = victim) -> bool:
            return await _status(replica, "/api/me", user) == 401

        assert await until(refused, 5.0)
        assert await _status(replica, "/api/me", bystander) == 200
    finally:
        await admin.aclose()


# --- Redis: a partition that ends (the revocation that could not be published) ---------


async def test_a_revocation_redis_missed_reaches_the_replicas_once_a_partition_heals(
    make_auth_server: Callable[[str], Awaitable[Client]],
    make_replica: ResourceFactory,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The auth service loses Redis (a partition: its proxy drops every byte) while the
    replica still reaches it. A logout is kept in PostgreSQL and answered 503 ("will be
    in the next rebuild", RevocationStore.record). The watch tries that rebuild during
    the partition, and it fails. Once the partition heals, the plane must be rebuilt
    from PostgreSQL and the replica must refuse the token.

    Failed before the fix: RevocationStore.rebuild() cleared ``dirty`` before it started and did not
    set it again when it fails; after the partition, needs_rebuild() sees the marker and
    the same Redis run ID and never rebuilds. The replica accepts the revoked token
    until it expires, while the auth service (its local copy) refuses it.
    """
    proxy = TcpProxy("127.0.0.1", own_redis.port)
    await proxy.start()
    try:
        auth = await make_auth_server(proxy.url)
        replica = await make_replica(
            "r1", redis_url=own_redis.url, revocation_max_staleness=S, dependency_timeout=TIMEOUT
        )
        store: RevocationStore = auth.app[app_state.REVOCATION_STORE]
        user = await log_in_with_everything(auth)
        assert await _status(replica, "/api/me", user) == 200

        proxy.mode = "drop"
        response = await auth.post("/auth/logout", headers=_bearer(user.token))
        assert response.status == 503, await response.text()  # durable, not yet published
        assert store.dirty

        async def rebuild_started() -> bool:
            return not store.dirty

        # The watch starts a rebuild (it clears the flag) while the partition lasts...
        assert await until(rebuild_started, 10 * store.check_interval)
        caplog.clear()
        caplog.set_level(logging.WARNING, logger="tessera_auth.revocation_store")

        async def rebuild_failed() -> bool:
            return any("revocation plane check failed" in m for m in caplog.messages)

        # ...which fails on Redis (or a later check does): the fault is still on.
        assert await until(rebuild_failed, 10 * (store.check_interval + TIMEOUT))
        rebuilds = store.rebuilds
        proxy.mode = "forward"  # the partition ends

        async def replica_refuses() -> bool:
            return await _status(replica, "/api/me", user) == 401

        # A few watch intervals and a feed resync are enough; 5 s is a generous deadline.
        refused = await until(replica_refuses, 5.0)
        assert await _status(auth, "/auth/me", user) == 401  # the auth service knows
        assert refused, (
            f"the replica still accepts a token revoked in PostgreSQL after the partition "
            f"healed (rebuilds since: {store.rebuilds - rebuilds}, dirty: {store.dirty})"
        )
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()
