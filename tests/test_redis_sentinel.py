"""Redis Sentinel under a real failover (SIGKILL of the primary, real sentinels).

The client that every service uses follows the promoted replica without being
rebuilt, and what a replica acknowledged (``WAIT``) before the crash is there
afterwards. Unacknowledged writes may be lost: asynchronous replication's
window, reported, not asserted.
"""

from __future__ import annotations

import time

import redis
from prometheus_client import CollectorRegistry, Histogram

from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_stack.redis_topologies import RedisSentinelGroup
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
    assert {"pipeline", "set", "evalsha", "wait"} <= timed
