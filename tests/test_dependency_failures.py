"""Fail closed when Redis or PostgreSQL goes away, and recover without a restart.

Each test points an auth app at a Redis or PostgreSQL server of its own
(started here from :mod:`tessera_stack.servers`), stops that server under the
running app, and starts it again on the same port and data directory. The
session-wide servers of the rest of the suite are never touched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tessera_stack import PostgresServer, RedisServer, free_port
from tessera_verify.dependency_metrics import REDIS_MAX_CONNECTIONS, instrumented_redis
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import AuthClientFactory, register_and_login
from .fixtures_infra import running

Client = TestClient[Any, Any]
Server = RedisServer | PostgresServer
S = TypeVar("S", RedisServer, PostgresServer)


# --- dedicated servers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # A fixed port, so that a restart comes back where the app's client looks.
    with running(RedisServer(tmp_path_factory.mktemp("own-redis"), port=free_port())) as server:
        yield server


@pytest.fixture(scope="module")
def own_postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("own-postgres"), port=free_port())
    with running(server):
        yield server


def _running(server: S) -> Iterator[S]:
    """The server, running at the start of a test and again after it (whatever it did)."""
    if not server.running:
        server.start()
    yield server
    if not server.running:
        server.start()


@pytest.fixture
def redis_server(own_redis_server: RedisServer) -> Iterator[RedisServer]:
    yield from _running(own_redis_server)


@pytest.fixture
def postgres_server(own_postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    yield from _running(own_postgres_server)


async def _stop(server: Server) -> None:
    port = server.port
    await asyncio.to_thread(server.stop)
    assert not server.running
    assert server.port == port


async def _restart(server: Server, port: int) -> None:
    """Start ``server`` again on ``port`` (and, for PostgreSQL, on the same data directory)."""
    await asyncio.to_thread(server.start)
    assert server.port == port


@pytest.fixture
async def app_on_own_redis(
    make_auth_client: AuthClientFactory, redis_server: RedisServer
) -> Client:
    return await make_auth_client(redis_url=redis_server.url)


@pytest.fixture
async def app_on_own_postgres(
    make_auth_client: AuthClientFactory, postgres_server: PostgresServer
) -> Client:
    return await make_auth_client(database_url=postgres_server.url, migrate_on_start=True)


# --- helpers -----------------------------------------------------------------------------


async def _unavailable(response: ClientResponse) -> None:
    text = await response.text()
    assert response.status == 503, text
    assert response.content_type == "application/problem+json", text
    assert (await response.json())["error"] == "dependency_unavailable"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Retry-After"] == "1"


async def _register(client: Client) -> tuple[str, str]:
    username, password = f"user-{uuid.uuid4().hex[:10]}", "correct horse battery staple"
    response = await client.post(
        "/auth/register", json={"username": username, "password": password}
    )
    assert response.status == 201, await response.text()
    return username, password


async def _login(client: Client, username: str, password: str, credential: str) -> ClientResponse:
    return await client.post(
        "/auth/login",
        json={"username": username, "password": password, "credential": credential},
    )


async def _once_the_feed_noticed(
    request: Callable[[], Awaitable[ClientResponse]],
) -> ClientResponse:
    """``request()``'s answer once it is not a 200 (3 s at most: the feed's probe notices
    a silent Redis within 1 s + 2 s). The service may accept a credential in the moment
    between Redis going away and its revocation feed reading the closed connection: its
    copy was proven complete less than S ago (README, "Revocation invariants", b); any
    error ends that trust at once, silence within S."""
    response = await request()
    for _ in range(60):
        if response.status != 200:
            break
        await asyncio.sleep(0.05)
        response = await request()
    return response


def _session_cookie(login: ClientResponse) -> dict[str, str]:
    assert login.status == 200
    return {"Cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE].value}"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- Redis -------------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["session", "token"])
async def test_login_answers_503_dependency_unavailable_while_redis_is_down(
    app_on_own_redis: Client, redis_server: RedisServer, credential: str
) -> None:
    username, password = await _register(app_on_own_redis)  # registration needs no Redis
    await _stop(redis_server)
    await _unavailable(await _login(app_on_own_redis, username, password, credential))


async def test_a_demoted_read_only_redis_answers_503_not_500(
    app_on_own_redis: Client, redis_server: RedisServer
) -> None:
    # Mid-failover, the old primary turns replica and refuses writes (READONLY).
    username, password = await _register(app_on_own_redis)
    client = Redis.from_url(redis_server.url)
    try:
        await client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        await _unavailable(await _login(app_on_own_redis, username, password, "session"))
    finally:
        await client.execute_command("REPLICAOF", "NO", "ONE")
        await client.aclose()


async def test_readyz_names_redis_as_down_while_healthz_stays_200(
    app_on_own_redis: Client, redis_server: RedisServer
) -> None:
    await _stop(redis_server)
    response = await app_on_own_redis.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["redis"].startswith("down")
    assert body["checks"]["postgresql"] == "ok"
    assert body["checks"]["keys"] == "ok"
    assert (await app_on_own_redis.get("/healthz")).status == 200


async def test_bearer_token_on_me_fails_closed_with_503_while_the_redis_denylist_is_down(
    app_on_own_redis: Client, redis_server: RedisServer
) -> None:
    # The token's signature still verifies, but whether it was revoked cannot be
    # known without the denylist: the auth service refuses rather than guesses.
    login = await register_and_login(app_on_own_redis, credential="token")
    await _stop(redis_server)
    await _unavailable(
        await _once_the_feed_noticed(
            lambda: app_on_own_redis.get("/auth/me", headers=_bearer(login["access_token"]))
        )
    )


async def test_session_cookie_on_me_fails_closed_with_503_while_redis_is_down(
    app_on_own_redis: Client, redis_server: RedisServer
) -> None:
    username, password = await _register(app_on_own_redis)
    cookie = _session_cookie(await _login(app_on_own_redis, username, password, "session"))
    await _stop(redis_server)
    await _unavailable(
        await _once_the_feed_noticed(lambda: app_on_own_redis.get("/auth/me", headers=cookie))
    )


async def test_login_and_tokens_work_again_when_redis_returns_without_restarting_the_app(
    app_on_own_redis: Client, redis_server: RedisServer
) -> None:
    port = redis_server.port
    username, password = await _register(app_on_own_redis)
    issued = await (await _login(app_on_own_redis, username, password, "token")).json()
    await _stop(redis_server)
    await _unavailable(await _login(app_on_own_redis, username, password, "token"))

    await _restart(redis_server, port)

    response = await _login(app_on_own_redis, username, password, "both")
    assert response.status == 200, await response.text()
    fresh = await response.json()
    # The restarted Redis is empty: tokens are refused (503) until the auth service has
    # rebuilt the revocation plane from PostgreSQL, which it does by itself.
    for _ in range(200):
        me = await app_on_own_redis.get("/auth/me", headers=_bearer(fresh["access_token"]))
        if me.status != 503:
            break
        await asyncio.sleep(0.05)
    assert me.status == 200
    # A token issued before the outage verifies again once the plane is back.
    me = await app_on_own_redis.get("/auth/me", headers=_bearer(issued["access_token"]))
    assert me.status == 200
    assert (await me.json())["username"] == username
    assert (await app_on_own_redis.get("/readyz")).status == 200


# --- PostgreSQL --------------------------------------------------------------------------
# Mirrors the Redis section on purpose, test for test under the same names (login, readyz,
# bearer token, session, recovery): each dependency's outage is read on its own, and
# the outcomes differ where they should (sessions live in Redis and outlast PostgreSQL).


async def test_login_answers_503_dependency_unavailable_while_postgresql_is_down(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    username, password = await _register(app_on_own_postgres)
    await _stop(postgres_server)
    await _unavailable(await _login(app_on_own_postgres, username, password, "session"))


async def test_register_answers_503_while_postgresql_is_down(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    await _stop(postgres_server)
    response = await app_on_own_postgres.post(
        "/auth/register", json={"username": "newcomer", "password": "correct horse battery"}
    )
    await _unavailable(response)


async def test_readyz_names_postgresql_as_down_while_healthz_stays_200(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    await _stop(postgres_server)
    response = await app_on_own_postgres.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["postgresql"].startswith("down")
    assert body["checks"]["redis"] == "ok"
    assert (await app_on_own_postgres.get("/healthz")).status == 200


async def test_bearer_token_on_me_fails_closed_with_503_while_postgresql_is_down(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    # /auth/me looks the token's user up (deleted or disabled users are refused),
    # which cannot be done without PostgreSQL.
    login = await register_and_login(app_on_own_postgres, credential="token")
    await _stop(postgres_server)
    await _unavailable(
        await app_on_own_postgres.get("/auth/me", headers=_bearer(login["access_token"]))
    )


async def test_an_existing_session_keeps_working_while_postgresql_is_down(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    # Sessions live in Redis, which is up: they are verified, not guessed.
    username, password = await _register(app_on_own_postgres)
    cookie = _session_cookie(await _login(app_on_own_postgres, username, password, "session"))
    await _stop(postgres_server)
    response = await app_on_own_postgres.get("/auth/me", headers=cookie)
    assert response.status == 200, await response.text()
    assert (await response.json())["username"] == username


async def test_login_works_again_when_postgresql_returns_without_restarting_the_app(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    port = postgres_server.port
    username, password = await _register(app_on_own_postgres)
    await _stop(postgres_server)
    await _unavailable(await _login(app_on_own_postgres, username, password, "session"))

    await _restart(postgres_server, port)

    # Same data directory: the user registered before the outage is still there.
    response = await _login(app_on_own_postgres, username, password, "both")
    assert response.status == 200, await response.text()
    token = (await response.json())["access_token"]
    me = await app_on_own_postgres.get("/auth/me", headers=_bearer(token))
    assert me.status == 200
    assert (await me.json())["username"] == username
    assert (await app_on_own_postgres.get("/readyz")).status == 200


async def test_a_refresh_refused_during_a_postgresql_outage_leaves_the_refresh_token_usable(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    port = postgres_server.port
    login = await register_and_login(app_on_own_postgres, credential="token")
    grant = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    await _stop(postgres_server)
    refused = await app_on_own_postgres.post("/auth/token", json=grant)
    # The token endpoint answers in OAuth's shape (RFC 6749 §5.2), with §4.1.2.1's code.
    assert refused.status == 503, await refused.text()
    assert refused.content_type == "application/json"
    assert (await refused.json())["error"] == "temporarily_unavailable"
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Cache-Control"] == "no-store"

    await _restart(postgres_server, port)

    response = await app_on_own_postgres.post("/auth/token", json=grant)
    assert response.status == 200, await response.text()


async def test_logout_during_a_postgresql_outage_answers_503_and_changes_nothing(
    app_on_own_postgres: Client, postgres_server: PostgresServer
) -> None:
    from tessera_auth import app_state

    port = postgres_server.port
    username, password = await _register(app_on_own_postgres)
    cookie = _session_cookie(await _login(app_on_own_postgres, username, password, "session"))
    audit = app_on_own_postgres.app[app_state.AUDIT]
    await _stop(postgres_server)
    # A revocation is acknowledged only once PostgreSQL (the source of truth) has it:
    # without it, logout refuses, and nothing is half-done (the session still works).
    await _unavailable(await app_on_own_postgres.post("/auth/logout", headers=cookie))
    assert (await app_on_own_postgres.get("/auth/me", headers=cookie)).status == 200

    await _restart(postgres_server, port)
    response = await app_on_own_postgres.post("/auth/logout", headers=cookie)
    assert response.status == 200, await response.text()
    assert (await app_on_own_postgres.get("/auth/me", headers=cookie)).status == 401
    for _ in range(500):
        if audit.pending == 0:
            break
        await asyncio.sleep(0.02)
    events = await audit.query(kind="logout")
    assert len(events) == 1


async def test_a_burst_past_the_redis_pool_waits_for_a_connection_instead_of_failing(
    redis_url: str,
) -> None:
    client = instrumented_redis(redis_url, timeout=5.0, latency=None)
    try:
        # More commands at once than the pool has connections: before, the rest failed
        # at once with MaxConnectionsError (a 503 under a login flood).
        burst = 3 * REDIS_MAX_CONNECTIONS
        replies = await asyncio.gather(*(client.ping() for _ in range(burst)))
        assert replies == [True] * burst
    finally:
        await client.aclose()
