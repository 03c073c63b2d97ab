"""Redis Sentinel under a real failover (SIGKILL of the primary, real sentinels).

The client that every service uses follows the promoted replica without being
rebuilt, and what a replica acknowledged (``WAIT``) before the crash is there
afterwards. Unacknowledged writes may be lost: asynchronous replication's
window, reported, not asserted.
"""

from __future__ import annotations

import logging
import time

import redis
from prometheus_client import CollectorRegistry, Histogram

from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_stack.redis_topologies import RedisSentinelGroup
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.dependency_metrics import instrumented_redis
from tessera_verify.session_store import RedisSessionStore

from .fixtures_infra import first_answer, save_sessions

log = logging.getLogger(__name__)


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
    group = redis_sentinel_group
    latency = Histogram("latency", "", ["dependency", "command"], registry=CollectorRegistry())
    client = instrumented_redis(group.url, timeout=2.0, latency=latency)
    sessions = RedisSessionStore(client, clock)
    refresh = RefreshTokenStore(client, hash_key=b"k" * 32, ttl=3600, clock=clock)
    try:
        await client.flushdb()
        acknowledged = await save_sessions(sessions, clock, 20)
        tokens = [
            (await refresh.start_family(user_id="u1", session_link=f"link-{i}"))[0]
            for i in range(5)
        ]
        # One client, used by one task: WAIT runs on the connection that wrote.
        assert await client.wait(1, 5000) >= 1
        unacknowledged = await save_sessions(sessions, clock, 20)

        killed_at = time.monotonic()
        killed = group.kill_primary()
        try:
            record, seconds, errors = await first_answer(
                lambda: sessions.load(acknowledged[0]), since=killed_at
            )
            promoted = group.wait_for_failover()
            assert promoted is not killed
            assert record is not None
            for key in acknowledged:
                assert await sessions.load(key) is not None
            for token in tokens:  # rotation goes on, on the new primary
                grant = await refresh.peek(token)
                assert (await refresh.claim(token, grant)).outcome == "fresh"
            lost = [key for key in unacknowledged if await sessions.load(key) is None]
            log.info(
                "sentinel failover: first answer %.2f s after SIGKILL (errors before it: %s); "
                "acknowledged sessions lost: 0/%d; unacknowledged lost: %d/%d",
                seconds,
                sorted(set(errors)),
                len(acknowledged),
                len(lost),
                len(unacknowledged),
            )
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
