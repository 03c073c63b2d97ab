"""The revocation plane through a Redis failover, on real Sentinel and Cluster groups.

The auth service and a replica run on the group's URL; users log in and out;
the primary that holds the plane (Sentinel's master, the Cluster node of the
``{rev}`` slot) is SIGKILLed while the replica is asked, continuously, about a
revoked and a live user. Nothing revoked may be accepted, before, during or
after; the feed follows the new primary, and a revocation made after the
failover reaches the replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tessera_auth import app_state
from tessera_stack.redis_topologies import RedisClusterGroup, RedisSentinelGroup
from tessera_verify import redis_layout
from tessera_verify.integration import tessera_verify

from .conftest import AuthClientFactory, LoggedIn, ResourceFactory, log_in_with_everything

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"


async def _logout(auth: Client, user: LoggedIn) -> int:
    response = await auth.post(
        "/auth/logout",
        headers={"Authorization": f"Bearer {user.token}", **user.cookie},
        json={"refresh_token": user.refresh},
    )
    return response.status


async def _me(replica: Client, user: LoggedIn) -> tuple[int, int]:
    by_token = await replica.get("/api/me", headers={"Authorization": f"Bearer {user.token}"})
    by_cookie = await replica.get("/api/me", headers=user.cookie)
    return by_token.status, by_cookie.status


async def _me_until(
    replica: Client, user: LoggedIn, expected: tuple[int, int], *, tries: int, every: float
) -> tuple[int, int]:
    """Ask (at most ``tries`` times, ``every`` seconds) until the replica answers
    ``expected`` for ``user``; its last answer."""
    for _ in range(tries):
        if (answer := await _me(replica, user)) == expected:
            return answer
        await asyncio.sleep(every)
    return await _me(replica, user)


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
async def test_a_failover_of_the_planes_primary_accepts_no_revoked_credential(
    topology: str,
    request: pytest.FixtureRequest,
    make_auth_client: AuthClientFactory,
    make_replica: ResourceFactory,
    record_property: Callable[[str, object], None],
) -> None:
    group: RedisSentinelGroup | RedisClusterGroup = request.getfixturevalue(
        f"redis_{topology}_group"
    )
    url = group.url
    auth = await make_auth_client(redis_url=url, revocation_max_staleness=2.0)
    replica = await make_replica(
        "r1", redis_url=url, revocation_max_staleness=2.0, dependency_timeout=1.0
    )
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    assert await cache.wait_fresh(10.0)
    revoked, live = await log_in_with_everything(auth), await log_in_with_everything(auth)
    assert await _logout(auth, revoked) == 200
    assert await _me_until(replica, revoked, (401, 401), tries=100, every=0.02) == (401, 401)
    assert await _me(replica, live) == (200, 200)

    statuses: dict[str, list[int]] = {"revoked": [], "live": []}
    failures: list[float] = []  # when a live user's request failed
    stop = asyncio.Event()

    async def ask() -> None:
        while not stop.is_set():
            statuses["revoked"].extend(await _me(replica, revoked))
            answers = await _me(replica, live)
            statuses["live"].extend(answers)
            if answers != (200, 200):
                failures.append(time.monotonic())
            await asyncio.sleep(0.01)

    asker = asyncio.create_task(ask())
    killed_at = time.monotonic()
    if isinstance(group, RedisClusterGroup):
        killed = group.kill_primary(redis_layout.revocation_generation())
    else:
        killed = group.kill_primary()
    try:
        await asyncio.to_thread(group.wait_for_failover, 60.0)
        # The live user's session and token work again through the new primary.
        back = await _me_until(replica, live, (200, 200), tries=600, every=0.05)
        assert back == (200, 200), "the live user never came back"
        stop.set()
        await asyncio.wait_for(asker, 30)
        record_property("failover_seconds", round(time.monotonic() - killed_at, 3))
        unavailable = failures[-1] - failures[0] if failures else 0.0
        record_property("seconds_unavailable", round(unavailable, 3))
        record_property("requests_failed", sum(s != 200 for s in statuses["live"]))
        record_property("requests", len(statuses["live"]) + len(statuses["revoked"]))
        assert 200 not in statuses["revoked"]  # not one revoked credential accepted

        # The feed follows the new primary: a revocation made now reaches the replica.
        assert await _logout(auth, live) == 200
        assert await _me_until(replica, live, (401, 401), tries=100, every=0.02) == (401, 401)
        assert await _me(replica, revoked) == (401, 401)
        record_property("plane_rebuilds", auth.app[app_state.REVOCATION_STORE].rebuilds)
    finally:
        stop.set()
        await asyncio.gather(asker, return_exceptions=True)
        await asyncio.to_thread(group.restart, killed)
