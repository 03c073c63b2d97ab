"""A pooled Redis connection the server has closed is replaced, not used.

After a Redis restart, or a ``CLIENT KILL`` (an operator's, a proxy's idle
timeout), every connection a client opened before is dead. The next command
on one of them must not fail with ``Connection closed by server``: a login,
a session check or a revocation refused with 503 for a server that is back.
Each test opens several connections (concurrent commands), has the server
close them, then sends as many concurrent commands again: all must succeed,
on one server (killed and restarted too), a Sentinel group's primary and a
cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from tessera_stack.processes import free_port
from tessera_stack.redis_topologies import RedisClusterGroup, RedisSentinelGroup
from tessera_stack.servers.redis_server import RedisServer
from tessera_verify.dependency_metrics import CloseSafeConnection, instrumented_redis

from .fixtures_infra import running

CONCURRENT = 8


@pytest.fixture(scope="module")
def lone_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # A fixed port, so that a restart comes back where the client looks.
    with running(RedisServer(tmp_path_factory.mktemp("lone-redis"), port=free_port())) as server:
        yield server


async def _connection_ids(client: Redis) -> set[int]:
    """The server-side IDs of ``CONCURRENT`` pooled connections (one command on each)."""
    ids = await asyncio.gather(*(_held_id(client) for _ in range(CONCURRENT)))
    assert len(set(ids)) == CONCURRENT  # each command had a connection of its own
    return set(ids)


async def _held_id(client: Redis) -> int:
    # CLIENT ID, then a BLPOP that holds the connection for 50 ms: the concurrent
    # calls cannot share one connection.
    async with client.pipeline(transaction=False) as pipe:
        pipe.client_id()
        pipe.blpop(["reconnect:never-pushed"], timeout=0.05)
        client_id, _ = await pipe.execute()
    return int(client_id)


async def _all_answer(client: Redis) -> None:
    keys = [f"reconnect:{i}" for i in range(CONCURRENT)]
    await asyncio.gather(*(client.set(key, "v", ex=60) for key in keys))
    assert await asyncio.gather(*(client.get(key) for key in keys)) == [b"v"] * CONCURRENT


async def _killed_then_all_answer(url: str, server_port: int) -> None:
    """Through a client of ``url``: open connections, have the server on ``server_port``
    close each (``CLIENT KILL ID``), then concurrent commands must all succeed."""
    client = instrumented_redis(url, timeout=2.0, latency=None)
    admin = Redis(host="127.0.0.1", port=server_port)
    try:
        for client_id in await _connection_ids(client):
            assert await admin.client_kill_filter(_id=client_id) == 1
        await _all_answer(client)
    finally:
        await client.aclose()
        await admin.aclose()


async def test_connections_a_lone_server_closed_are_replaced(lone_redis: RedisServer) -> None:
    await _killed_then_all_answer(lone_redis.url, lone_redis.port)


async def test_connections_opened_before_a_redis_restart_are_replaced(
    lone_redis: RedisServer,
) -> None:
    client = instrumented_redis(lone_redis.url, timeout=2.0, latency=None)
    port = lone_redis.port
    try:
        await _connection_ids(client)
        await asyncio.to_thread(lone_redis.stop)
        await asyncio.to_thread(lone_redis.start)
        assert lone_redis.port == port
        await _all_answer(client)
    finally:
        await client.aclose()
        if not lone_redis.running:
            lone_redis.start()


async def test_connections_a_sentinel_groups_primary_closed_are_replaced(
    redis_sentinel_group: RedisSentinelGroup,
) -> None:
    primary = redis_sentinel_group.primary()
    assert primary is not None
    await _killed_then_all_answer(redis_sentinel_group.url, primary.port)


#: Rounds of "close every connection, then command at once": one in twenty failed
#: (redis-py's own race, see ``CloseSafeConnection``) before each write checked its writer.
CLUSTER_ROUNDS = 100


async def test_connections_cluster_nodes_closed_are_replaced(
    redis_cluster_group: RedisClusterGroup,
) -> None:
    for _ in range(CLUSTER_ROUNDS):
        client = instrumented_redis(redis_cluster_group.url, timeout=2.0, latency=None)
        try:
            await _all_answer(client)  # connections to every primary the keys hash to
            for port in redis_cluster_group.ports:
                admin = Redis(host="127.0.0.1", port=port)
                try:
                    # Normal clients only: the cluster's own links are not clients, and
                    # replicas connect to their primary as TYPE replica.
                    await admin.client_kill_filter(_type="normal", skipme=True)
                finally:
                    await admin.aclose()
            await _all_answer(client)
            nodes = cast(RedisCluster, client).get_nodes()
            opened = [connection for node in nodes for connection in node._connections]
            assert opened and all(isinstance(c, CloseSafeConnection) for c in opened)
        finally:
            await client.aclose()


async def test_a_write_on_a_connection_another_task_closed_is_a_lost_connection(
    lone_redis: RedisServer,
) -> None:
    """The check itself: the writer gone, or closing, is a lost connection (which every
    caller retries or answers 503 for), never ``AttributeError`` (a 500)."""
    client = instrumented_redis(lone_redis.url, timeout=2.0, latency=None)
    try:
        connection = await client.connection_pool.get_connection()
        assert isinstance(connection, CloseSafeConnection)
        try:
            writer = connection._writer  # get_connection() connected it
            assert writer is not None
            writer.close()  # closing: another task's disconnect, before its wait ends
            with pytest.raises(RedisConnectionError):
                await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
            await connection.disconnect()  # closed: the writer is gone
            with pytest.raises(RedisConnectionError):
                await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
        finally:
            await client.connection_pool.release(connection)
        assert await client.ping()  # the pool opens a new connection for the next command
    finally:
        await client.aclose()
