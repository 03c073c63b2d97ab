"""The revocation plane under faults: each invariant of README's "Revocation invariants",
attacked the way it fails in production, against real Redis and PostgreSQL.

(a) durable before the 2xx, (b) trusted only while proven fresh (S), (c) a loss of
Redis state never reopens a revoked credential, (d) no write brings a revoked
session back, (e) a denylisted jti outlives every verifier's leeway.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tessera_auth import app_state
from tessera_auth.app import create_app
from tessera_auth.settings import Settings
from tessera_stack import RedisServer
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.integration import tessera_verify
from tessera_verify.revocation import MAX_LEEWAY
from tessera_verify.revocation_cache import RevocationCache
from tests.conftest import with_changes

from .conftest import LoggedIn, ResourceFactory, log_in_with_everything
from .tcp_proxy import TcpProxy

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"
CLIENT_ID, CLIENT_SECRET = "resource-api", "introspection-secret-0123"
S = 2.0  # the staleness bound these tests run with
PROPAGATION_BOUND = 1.0  # README: a revocation reaches every verifier within 1 s (healthy)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _logout(auth: Client, user: LoggedIn, *, token_only: bool = False) -> None:
    """Logout with every credential at once (the session, the access and refresh tokens),
    or with the access token alone (its ``jti`` is denylisted)."""
    if token_only:
        response = await auth.post("/auth/logout", headers=_bearer(user.token))
    else:
        response = await auth.post(
            "/auth/logout",
            headers={**_bearer(user.token), **user.cookie},
            json={"refresh_token": user.refresh},
        )
    assert response.status == 200, await response.text()


async def _statuses(replica: Client, user: LoggedIn) -> tuple[int, int]:
    """(bearer status, session status) on /api/me."""
    by_token = await replica.get("/api/me", headers=_bearer(user.token))
    by_cookie = await replica.get("/api/me", headers=user.cookie)
    return by_token.status, by_cookie.status


async def _eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 10.0) -> None:
    """Poll ``check`` in short steps until it holds (bounded; never a timing assertion)."""
    for _ in range(int(seconds / 0.05)):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
async def stack(
    aiohttp_client: Callable[..., Awaitable[Client]],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    make_replica: ResourceFactory,
    settings: Settings,
    clock: ManualClock,
    own_redis: RedisServer,
) -> tuple[Client, list[Client]]:
    """One auth service and three replicas on ``own_redis``, staleness bound S."""
    auth_settings = with_changes(
        settings,
        redis_url=own_redis.url,
        revocation_max_staleness=S,
        dependency_timeout=0.5,
        introspection_clients=((CLIENT_ID, CLIENT_SECRET.encode()),),
    )
    auth = await aiohttp_client(await aiohttp_server(create_app(auth_settings, clock=clock)))
    replicas = [
        await make_replica(
            f"r{i}", redis_url=own_redis.url, revocation_max_staleness=S, dependency_timeout=0.5
        )
        for i in (1, 2, 3)
    ]
    return auth, replicas


def _cache(replica: Client) -> RevocationCache:
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    return cache


# --- (c) a loss of Redis state never reopens a revoked credential ----------------------


async def test_flushall_under_a_stream_of_logins_and_logouts_accepts_no_revoked_credential(
    stack: tuple[Client, list[Client]],
    own_redis: RedisServer,
    record_property: Callable[[str, object], None],
) -> None:
    auth, replicas = stack
    revoked: list[LoggedIn] = []
    acknowledged: dict[str, float] = {}  # user -> when the logout answered (monotonic)
    accepted_revoked = accepted_within_bound = 0
    stop = asyncio.Event()

    async def churn() -> None:
        # While the plane is being rebuilt the auth service answers 503 (it cannot
        # verify what it is asked to revoke): a client retries.
        while not stop.is_set():
            try:
                user = await log_in_with_everything(auth)
            except AssertionError:
                continue
            while True:
                response = await auth.post(
                    "/auth/logout",
                    headers={**_bearer(user.token), **user.cookie},
                    json={"refresh_token": user.refresh},
                )
                if response.status == 200:
                    break
                assert response.status == 503, await response.text()
                await asyncio.sleep(0.05)
            acknowledged[user.name] = time.monotonic()
            revoked.append(user)

    async def probe() -> None:
        # Invariant (a): refused by every verifier within the propagation bound of the
        # acknowledgement. An acceptance inside the bound is counted apart, and reported.
        nonlocal accepted_revoked, accepted_within_bound
        while not stop.is_set():
            for user in list(revoked):
                started = time.monotonic()
                results = await asyncio.gather(*(_statuses(r, user) for r in replicas))
                accepted = sum(s == 200 for pair in results for s in pair)
                if started - acknowledged[user.name] >= PROPAGATION_BOUND:
                    accepted_revoked += accepted
                else:
                    accepted_within_bound += accepted
            await asyncio.sleep(0)

    workers = [asyncio.create_task(churn()) for _ in range(3)]
    workers.append(asyncio.create_task(probe()))
    await _eventually(lambda: len(revoked) >= 6)
    client = Redis.from_url(own_redis.url)
    try:
        await client.flushall()  # what a failover to an empty replica does
        before = len(revoked)
        await _eventually(lambda: len(revoked) >= before + 6)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await client.aclose()
    record_property("revoked_checks_accepted_within_bound", accepted_within_bound)
    record_property("revoked_credentials", len(revoked))
    assert accepted_revoked == 0
    # The plane is back, from PostgreSQL: every revoked credential is refused as revoked.
    for user in revoked:
        for replica in replicas:
            assert await _statuses(replica, user) == (401, 401)


async def test_a_redis_restart_without_data_is_rebuilt_and_reopens_nothing(
    stack: tuple[Client, list[Client]], own_redis: RedisServer
) -> None:
    auth, replicas = stack
    gone, live = await log_in_with_everything(auth), await log_in_with_everything(auth)
    await _logout(auth, gone)
    port = own_redis.port
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGKILL)
    await asyncio.to_thread(own_redis.stop)
    await asyncio.to_thread(own_redis.start)  # same port, empty: it kept nothing
    assert own_redis.port == port
    for replica in replicas:
        await _eventually(lambda r=replica: _is(r, live.token, 200))  # type: ignore[misc]
        assert (await replica.get("/api/me", headers=_bearer(gone.token))).status == 401
    store = auth.app[app_state.REVOCATION_STORE]
    assert store.rebuilds >= 1


async def _is(replica: Client, token: str, status: int) -> bool:
    return (await replica.get("/api/me", headers=_bearer(token))).status == status


async def test_a_revoked_session_or_refresh_family_that_redis_brings_back_stays_dead(
    stack: tuple[Client, list[Client]], own_redis: RedisServer
) -> None:
    # A restore from an old AOF, or a failover to a replica that lagged, hands back
    # records that were deleted. The plane (from PostgreSQL) still kills them.
    auth, replicas = stack
    user = await log_in_with_everything(auth)
    client = Redis.from_url(own_redis.url)
    try:
        before = {key: await client.dump(key) for key in await client.keys("tessera:session:*")}
        families = await client.keys("tessera:refresh-family:*")
        await _logout(auth, user)
        for key, dumped in before.items():
            assert dumped is not None
            await client.restore(key, 0, dumped, replace=True)
        for family in families:
            await client.hset(family, "revoked", "0")
    finally:
        await client.aclose()
    for replica in replicas:
        assert (await replica.get("/api/me", headers=user.cookie)).status == 401
    assert (await auth.get("/auth/me", headers=user.cookie)).status == 401
    refreshed = await auth.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": user.refresh}
    )
    assert refreshed.status == 400
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    introspected = await auth.post(
        "/auth/introspect",
        data={"token": user.refresh},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert introspected.status == 200
    assert (await introspected.json()) == {"active": False}


async def test_a_refresh_family_that_redis_rolls_back_ends_at_the_first_later_token(
    stack: tuple[Client, list[Client]], own_redis: RedisServer
) -> None:
    """A restore or a lagging failover takes a family back two rotations: the token its
    owner holds is then *later* than the family knows, and the spent one a thief
    copied is current again. The owner's next refresh ends the family (reuse), so the
    thief's copy, and whatever it got first, dies with it."""
    auth, replicas = stack
    user = await log_in_with_everything(auth)
    stolen = user.refresh  # copied before its owner spent it
    client = Redis.from_url(own_redis.url)
    try:
        (family,) = await client.keys("tessera:refresh-family:*")
        saved = await client.dump(family)
        assert saved is not None
        owner = user.refresh
        for _ in range(2):
            owner = (await (await _refresh(auth, owner)).json())["refresh_token"]
        await client.restore(family, 0, saved, replace=True)  # Redis forgot two rotations
    finally:
        await client.aclose()
    thief = await _refresh(auth, stolen)  # current again: it works, once
    assert thief.status == 200
    thief_pair = await thief.json()
    refused = await _refresh(auth, owner)  # later than the family knows
    assert refused.status == 400
    assert (await refused.json())["error"] == "invalid_grant"
    assert (await _refresh(auth, thief_pair["refresh_token"])).status == 400
    bearer = _bearer(thief_pair["access_token"])
    for replica in replicas:  # within the propagation bound (1 s; 10 s allowed here)

        async def refused(replica: Client = replica) -> bool:
            return (await replica.get("/api/me", headers=bearer)).status == 401

        await _eventually(refused)


async def _refresh(auth: Client, token: str) -> Any:
    return await auth.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": token}
    )


async def test_logout_everywhere_kills_sessions_that_come_back_by_their_creation_time(
    stack: tuple[Client, list[Client]], own_redis: RedisServer, clock: ManualClock
) -> None:
    auth, replicas = stack
    user = await log_in_with_everything(auth)
    client = Redis.from_url(own_redis.url)
    try:
        saved = {key: await client.dump(key) for key in await client.keys("tessera:session:*")}
        clock.advance(1)
        response = await auth.post("/auth/logout-all", headers=_bearer(user.token))
        assert response.status == 200, await response.text()
        for key, dumped in saved.items():
            assert dumped is not None
            await client.restore(key, 0, dumped, replace=True)
    finally:
        await client.aclose()
    for replica in replicas:
        assert (await replica.get("/api/me", headers=user.cookie)).status == 401


# --- (d) no write path brings a revoked session back ------------------------------------


async def test_idle_touches_racing_a_logout_never_revive_the_session(
    stack: tuple[Client, list[Client]], own_redis: RedisServer, clock: ManualClock
) -> None:
    auth, replicas = stack
    for _ in range(5):
        user = await log_in_with_everything(auth)
        # Past the touch interval: every load below writes last-seen back.
        clock.advance(120)
        reads = [replica.get("/api/me", headers=user.cookie) for replica in replicas for _ in "ab"]
        await asyncio.gather(*reads, _logout(auth, user))
        client = Redis.from_url(own_redis.url)
        try:
            assert await client.keys("tessera:session:*") == []
        finally:
            await client.aclose()
        for replica in replicas:
            assert (await replica.get("/api/me", headers=user.cookie)).status == 401


# --- (b) trusted only while proven fresh: a silent feed, a paused Redis -----------------


async def test_a_feed_that_drops_bytes_is_refused_within_s_and_resyncs_after(
    make_replica: ResourceFactory,
    auth: Client,
    settings: Settings,
    clock: ManualClock,
) -> None:
    host, port = _host_port(settings.redis_url)
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        replica = await make_replica(
            "r1", redis_url=proxy.url, revocation_max_staleness=S, dependency_timeout=0.5
        )
        cache = _cache(replica)
        assert await cache.wait_fresh(5.0)
        victim, bystander = await log_in_with_everything(auth), await log_in_with_everything(auth)
        assert (await replica.get("/api/me", headers=_bearer(victim.token))).status == 200

        proxy.mode = "drop"  # the connection stays up; nothing gets through
        await _logout(auth, victim)
        clock.advance(S + 0.1)  # past S since the last proof
        refused = await replica.get("/api/me", headers=_bearer(victim.token))
        assert refused.status == 503
        assert (await refused.json())["error"] == "dependency_unavailable"
        assert proxy.dropped_bytes > 0

        proxy.mode = "forward"  # the same connections carry bytes again; what was lost is lost
        await _eventually(lambda: _is(replica, bystander.token, 200))
        assert (await replica.get("/api/me", headers=_bearer(victim.token))).status == 401
        await _eventually(lambda: cache.fresh)
    finally:
        await proxy.close()


async def test_a_paused_redis_is_refused_within_s_and_everything_recovers_after_sigcont(
    stack: tuple[Client, list[Client]], own_redis: RedisServer, clock: ManualClock
) -> None:
    auth, replicas = stack
    victim, bystander = await log_in_with_everything(auth), await log_in_with_everything(auth)
    await _logout(auth, victim)
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        clock.advance(S + 0.1)
        for replica in replicas:
            for user in (victim, bystander):
                response = await replica.get("/api/me", headers=_bearer(user.token))
                assert response.status == 503
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    for replica in replicas:
        await _eventually(lambda r=replica: _is(r, bystander.token, 200))  # type: ignore[misc]
        assert (await replica.get("/api/me", headers=_bearer(victim.token))).status == 401


async def test_staleness_zero_never_trusts_the_local_copy(
    make_replica: ResourceFactory, auth: Client
) -> None:
    replica = await make_replica("r1", revocation_max_staleness=0)
    user = await log_in_with_everything(auth)
    assert (await replica.get("/api/me", headers=_bearer(user.token))).status == 200
    cache = _cache(replica)
    assert not cache.fresh
    assert cache.local_checks == 0 and cache.fallback_checks == 1


# --- (a) durable before the 2xx; (e) the leeway --------------------------------------------


async def test_a_revocation_is_in_postgresql_before_the_logout_answers(
    stack: tuple[Client, list[Client]], settings: Settings
) -> None:
    import asyncpg

    auth, _ = stack
    # The session's link (its tokens, its family), then one access token alone.
    await _logout(auth, await log_in_with_everything(auth))
    await _logout(auth, await log_in_with_everything(auth), token_only=True)
    connection = await asyncpg.connect(settings.database_url)
    try:
        kinds = {row["kind"] for row in await connection.fetch("SELECT kind FROM revocations")}
    finally:
        await connection.close()
    assert kinds == {"jti", "sid"}


async def test_a_logged_out_token_stays_refused_through_every_verifiers_leeway(
    stack: tuple[Client, list[Client]], clock: ManualClock, own_redis: RedisServer
) -> None:
    auth, replicas = stack
    user = await log_in_with_everything(auth)
    await _logout(auth, user, token_only=True)
    expires_in = auth.app[app_state.SETTINGS].access_token_ttl
    clock.advance(expires_in + 4.5)  # past exp, within the 5 s leeway verifiers allow
    await auth.app[app_state.REVOCATION_STORE].prune()
    client = Redis.from_url(own_redis.url)
    try:
        assert await client.hlen(redis_layout.revocations("jti")) == 1
    finally:
        await client.aclose()
    for replica in replicas:
        response = await replica.get("/api/me", headers=_bearer(user.token))
        assert response.status == 401
        assert "revoked" in (await response.json())["detail"]
    assert MAX_LEEWAY >= 5


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port
