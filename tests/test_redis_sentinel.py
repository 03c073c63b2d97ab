"""Redis Sentinel under a real failover (SIGKILL of the primary, real sentinels).

The client that every service uses follows the promoted replica without being
rebuilt, and what a replica acknowledged (``WAIT``) before the crash is there
afterwards. Unacknowledged writes may be lost: asynchronous replication's
window, reported, not asserted.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import redis
from prometheus_client import CollectorRegistry, Histogram

from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_stack.redis_topologies import RedisNode, RedisSentinelGroup
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.dependency_metrics import instrumented_redis
from tessera_verify.session_store import RedisSessionStore

from .fixtures_infra import FailoverWrites, save_sessions, start_families


def test_the_sentinel_url_names_every_sentinel_and_the_master(
    redis_sentinel_group: RedisSentinelGroup,
) -> None:
    group = redis_sentinel_group
    assert group.url == (
        "redis+sentinel://"
        + ",".join(f"127.0.0.1:{port}" for port in group.sentinel_ports)
        + "/tessera/0"
    )
    assert [node.role() for node in group.sentinels] == ["sentinel"] * 3
    assert sorted(str(node.role()) for node in group.nodes) == ["master", "slave", "slave"]


async def test_the_client_follows_a_sentinel_failover_and_acknowledged_writes_survive(
    redis_sentinel_group: RedisSentinelGroup, clock: ManualClock
) -> None:
    """Mirrors test_the_client_follows_a_cluster_failover_... in test_redis_cluster.py on
    purpose: the same writes and checks (:class:`FailoverWrites`), but a Sentinel group is
    acknowledged and killed (and rejoins) differently from a Cluster."""
    group = redis_sentinel_group
    latency = Histogram("latency", "", ["dependency", "command"], registry=CollectorRegistry())
    client = instrumented_redis(group.url, timeout=2.0, latency=latency)
    sessions = RedisSessionStore(client, clock)
    refresh = RefreshTokenStore(client, hash_key=b"k" * 32, ttl=3600, clock=clock)
    try:
        await client.flushdb()
        acknowledged = await save_sessions(sessions, clock, 20)
        tokens = await start_families(refresh, 5)
        # One client, used by one task: WAIT runs on the connection that wrote.
        assert await client.wait(1, 5000) >= 1
        writes = FailoverWrites(
            sessions, refresh, acknowledged, tokens, await save_sessions(sessions, clock, 20)
        )

        killed_at = time.monotonic()
        killed = group.kill_primary()
        try:
            promoted = await writes.survive(
                "sentinel",
                probe=acknowledged[0],
                killed_at=killed_at,
                failover=group.wait_for_failover,
            )
            assert promoted is not killed
        finally:
            group.restart(killed)
        # The old primary is back, with the data: as a replica of the new one, or (on a
        # loaded machine the sentinels' 1 s down-after can fail over once more) as the
        # primary the sentinels name again. Never as a second primary.
        assert killed.role() == "slave" or group.primary() is killed
        with redis.Redis(host="127.0.0.1", port=killed.port, socket_timeout=2.0) as old_primary:
            assert old_primary.exists(*(redis_layout.session(k) for k in acknowledged)) == 20
    finally:
        await client.aclose()
    timed = {sample.labels["command"] for metric in latency.collect() for sample in metric.samples}
    assert {"pipeline", "evalsha", "wait"} <= timed  # a session is one MULTI (pipeline)


async def test_writes_reach_the_promoted_primary_soon_after_a_paused_primary_returns(
    redis_sentinel_group: RedisSentinelGroup,
) -> None:
    """The primary is paused (SIGSTOP) long enough for the sentinels to promote a replica,
    then resumed: it comes back still saying it is the primary, for the tens of seconds
    the sentinels take to demote it. The client's idle connections to it must not be used
    for that long: within the client's recheck interval (1 s; 5 s is a deadline, not a
    speed), every write lands on the promoted node, not on the one about to be demoted."""
    group = redis_sentinel_group
    client = instrumented_redis(group.url, timeout=2.0, latency=None)
    paused: RedisNode | None = None
    try:
        # Several connections to the primary, idle in the pool when it is paused.
        await asyncio.gather(*(client.set(f"paused:{i}", "before") for i in range(8)))
        paused = group.pause_primary()
        try:
            promoted = await asyncio.to_thread(group.wait_for_failover)
        finally:
            group.resume(paused)
        assert promoted is not paused

        async def writes_land_on_promoted() -> bool:
            keys = [f"paused:after:{uuid.uuid4().hex}" for _ in range(8)]
            try:
                await asyncio.gather(*(client.set(key, "after", ex=60) for key in keys))
            except redis.RedisError:
                return False  # the demotion may close a connection under a write
            with redis.Redis(host="127.0.0.1", port=promoted.port, socket_timeout=2.0) as node:
                return bool(node.exists(*keys) == len(keys))

        deadline = time.monotonic() + 5.0
        while not await writes_land_on_promoted():
            assert time.monotonic() < deadline, "writes still go to the primary that was paused"
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
        if paused is not None and group.primary() is not paused:
            # Demote it now rather than in twenty seconds (what an operator does).
            paused.kill()
            group.restart(paused)
        group.wait_healthy()
