"""Redis Cluster: tessera's scripts and transactions on a real cluster, and a real failover.

A cluster refuses a MULTI or a script whose keys span hash slots, so every
such path runs here for real. Then the primary of a session's slot is
SIGKILLed: the same client reaches the promoted replica, and what was
acknowledged (``WAIT``) before the crash is there afterwards.
"""

from __future__ import annotations

import secrets
import time
from typing import cast

import redis
from redis.asyncio.cluster import RedisCluster

from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_auth.regulation import RegulationPolicy, Regulator
from tessera_stack.redis_topologies import RedisClusterGroup
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.dependency_metrics import instrumented_redis
from tessera_verify.errors import InvalidGrant, TooManyAttempts
from tessera_verify.session_store import RedisSessionStore

from .fixtures_infra import FailoverWrites, save_sessions, start_families


async def test_refresh_token_rotation_and_reuse_detection_run_on_a_cluster(
    redis_cluster_group: RedisClusterGroup, clock: ManualClock
) -> None:
    client = instrumented_redis(redis_cluster_group.url, timeout=2.0, latency=None)
    refresh = RefreshTokenStore(client, hash_key=b"k" * 32, ttl=3600, clock=clock, grace=10)
    try:
        token, grant = await refresh.start_family(user_id="u1", session_link="link")
        claim = await refresh.claim(token, await refresh.peek(token))
        assert claim.outcome == "fresh" and claim.rotated is not None
        successor, _ = claim.rotated
        assert await refresh.record_successor(token, grant, {"refresh_token": successor})
        concurrent = await refresh.claim(token, grant)  # within the grace window
        assert concurrent.outcome == "grace"
        assert concurrent.successor == {"refresh_token": successor}
        clock.advance(11)
        assert (await refresh.claim(token, grant)).outcome == "reuse"
        # Reuse revoked the whole family, the successor included.
        try:
            await refresh.claim(successor, await refresh.peek(successor))
        except InvalidGrant:
            pass
        else:
            raise AssertionError("a token of a revoked family was accepted")
        assert [f.family_id for f in await refresh.families_of("u1")] == [grant.family_id]
        family = await refresh.family(grant.family_id)
        assert family is not None
        await refresh.revoke_family(family)
        assert await refresh.families_of("u1") == []
        # A successor made while its family was revoked is not recorded (one slot, one script).
        assert not await refresh.record_successor(successor, grant, {"refresh_token": "x"})
    finally:
        await client.aclose()


async def test_login_throttling_counts_on_a_cluster(
    redis_cluster_group: RedisClusterGroup, clock: ManualClock
) -> None:
    client = instrumented_redis(redis_cluster_group.url, timeout=2.0, latency=None)
    account = secrets.token_hex(8)
    regulator = Regulator(client, clock, RegulationPolicy(10, 100, 60, max_failures_per_pair=3))
    try:
        for _ in range(3):
            await regulator.reserve(account, "192.0.2.1")  # three failures
        try:
            await regulator.reserve(account, "192.0.2.1")
        except TooManyAttempts:
            pass
        else:
            raise AssertionError("the fourth attempt was not throttled")
        attempt = await regulator.reserve(account, "192.0.2.2")  # another address still may
        await attempt.succeeded()
    finally:
        await client.aclose()


async def test_the_client_follows_a_cluster_failover_and_acknowledged_writes_survive(
    redis_cluster_group: RedisClusterGroup, clock: ManualClock
) -> None:
    """Mirrors test_the_client_follows_a_sentinel_failover_... in test_redis_sentinel.py on
    purpose: the same writes and checks (:class:`FailoverWrites`); a Cluster acknowledges
    per primary, loses one slot's primary, and makes it a replica of its successor."""
    group = redis_cluster_group
    client = instrumented_redis(group.url, timeout=2.0, latency=None)
    sessions = RedisSessionStore(client, clock)
    refresh = RefreshTokenStore(client, hash_key=b"k" * 32, ttl=3600, clock=clock)
    try:
        await client.flushdb()
        acknowledged = await save_sessions(sessions, clock, 30)
        tokens = await start_families(refresh, 6)  # some live on the primary killed below
        # Each primary's replica has what that primary took (one client, one
        # task: each WAIT runs on the connection that wrote). WAIT answers per
        # primary; the client adds the answers up.
        replicas = await cast(RedisCluster, client).execute_command(
            "WAIT", 1, 5000, target_nodes=RedisCluster.PRIMARIES
        )
        assert replicas >= 3
        writes = FailoverWrites(
            sessions, refresh, acknowledged, tokens, await save_sessions(sessions, clock, 30)
        )

        victim = acknowledged[0]
        killed_at = time.monotonic()
        killed = group.kill_primary(redis_layout.session(victim))
        try:
            promoted = await writes.survive(
                "cluster (the killed slot)",
                probe=victim,
                killed_at=killed_at,
                failover=group.wait_for_failover,
            )
            assert promoted is not killed
            assert len(await sessions.list_for_user("u1")) >= len(acknowledged)
        finally:
            group.restart(killed)
        # The old primary is back as a replica of the node that took its slots.
        assert killed.role() == "slave"
        with redis.Redis(host="127.0.0.1", port=killed.port, socket_timeout=2.0) as old_primary:
            role = old_primary.execute_command("ROLE")
            assert (role[0], role[1], role[2]) == (b"slave", b"127.0.0.1", promoted.port)
    finally:
        await client.aclose()
