"""``up --redis sentinel`` and ``up --redis cluster``: the local stack on a Redis group.

For each topology, a stack of its own (its own PostgreSQL too) whose Redis is
a real group from :mod:`tessera_stack.redis_topologies`, run detached by the
launcher. The services are handed the group's URL; a node SIGKILLed under
them is failed over by the group and brought back by ``up`` on its port, as
a replica, without restarting anything else.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import redis

from tessera_demo.users import DemoUser, demo_users, login, register
from tessera_stack.processes import is_alive
from tessera_stack.rows import ROWS
from tessera_stack.services import AUTH_PROGRAM, REPLICA_PROGRAM, running_pid
from tessera_stack.stack_redis import RedisGroup
from tessera_stack.state import AUTH

from .private_stack import OwnStack, own_stack

pytestmark = pytest.mark.slow

POLL = 0.05
MAX_POLLS = 600  # 30 s in 50 ms steps: a failover takes a few seconds
SCHEMES = {"sentinel": "redis+sentinel://", "cluster": "redis+cluster://"}


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnStack]:
    topology: str = request.param
    with own_stack(tmp_path_factory.mktemp(f"{topology}-stack"), "--redis", topology) as control:
        yield control


def _group(stack: OwnStack) -> RedisGroup:
    state = stack.state()
    group = RedisGroup.load(stack.layout, state.redis_topology)
    assert group is not None
    return group


def _service_pids(stack: OwnStack) -> dict[str, int | None]:
    state = stack.state()
    assert state.https_port is not None
    pids = {
        AUTH: running_pid(stack.layout, AUTH, AUTH_PROGRAM),
        "nginx": stack.layout.nginx_server(state.https_port).pid,
    }
    for entry in state.replicas:
        pids[entry.id] = running_pid(stack.layout, entry.process, REPLICA_PROGRAM)
    return pids


def _role(port: int) -> str | None:
    client = redis.Redis(port=port, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        return str(client.info("replication")["role"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


async def _me(user: DemoUser, base: str) -> int:
    async with user.session.get(f"{base}/api/me") as response:
        await response.read()
        return response.status


async def _until_ok(user: DemoUser, base: str) -> list[int]:
    """GET /api/me until a 200; every status seen (the last is 200)."""
    seen: list[int] = []
    for _ in range(MAX_POLLS):
        seen.append(await _me(user, base))
        if seen[-1] == 200:
            return seen
        await asyncio.sleep(POLL)
    raise AssertionError(f"no 200 within {MAX_POLLS} requests: {seen[-10:]}")


async def test_the_services_are_handed_the_groups_url_and_sessions_work(stack: OwnStack) -> None:
    state = stack.state()
    group = _group(stack)
    assert state.redis == "managed"
    assert stack.env()["REDIS_URL"] == group.url == state.redis_url
    assert group.url.startswith(SCHEMES[state.redis_topology])
    assert {a["REDIS_URL"] for a in state.addresses.values()} == {group.url}
    assert all(pid is not None for _, pid, _ in group.pids(stack.layout))
    async with demo_users(2, stack.ca_cert, prefix="group-user-") as users:
        await register(users, stack.base_url)
        for user in users:
            assert (await login(user, stack.base_url, ROWS[4])).status == 200
            assert await _me(user, stack.base_url) == 200


async def test_a_killed_primary_is_failed_over_and_up_brings_it_back_as_a_replica_on_its_port(
    stack: OwnStack,
) -> None:
    group = _group(stack)
    before = _service_pids(stack)
    primaries = [
        (name, pid, node)
        for name, pid, node in group.pids(stack.layout)
        if not node.sentinel and _role(node.port) == "master"
    ]
    name, pid, node = primaries[0]
    assert pid is not None
    async with demo_users(1, stack.ca_cert, prefix="failover-user-") as (user,):
        await register([user], stack.base_url)
        assert (await login(user, stack.base_url, ROWS[4])).status == 200

        os.kill(pid, signal.SIGKILL)
        others = [n.port for n in group.nodes if not n.sentinel and n.port != node.port]
        for _ in range(MAX_POLLS):
            # The group has failed over: as many primaries as before among the others.
            if not is_alive(pid) and sum(_role(p) == "master" for p in others) == len(primaries):
                break
            await asyncio.sleep(POLL)
        assert sum(_role(p) == "master" for p in others) == len(primaries)
        # The services follow the group without a restart.
        statuses = await _until_ok(user, stack.base_url)
        assert set(statuses) <= {200, 503}

        output = await stack.up()

        assert f"starting {name} again" in output
        assert "restarting" not in output
        assert _service_pids(stack) == before
        assert dict((n, p is not None) for n, p, _ in group.pids(stack.layout)) == {
            n: True for n, _, _ in group.pids(stack.layout)
        }
        for _ in range(MAX_POLLS):
            if _role(node.port) == "slave":
                break
            await asyncio.sleep(POLL)
        assert _role(node.port) == "slave"
        assert await _me(user, stack.base_url) == 200


#: Users, each from a loopback address of its own, and rounds of "every connection the
#: data nodes' clients hold killed while all of them send requests".
KILL_USERS = 24
KILL_ROUNDS = 10


def _kill_normal_clients(group: RedisGroup) -> None:
    """``CLIENT KILL TYPE normal`` on every data node: what a Redis restart does to every
    pooled connection, without the restart (replication links are TYPE replica)."""
    for node in group.nodes:
        if node.sentinel:
            continue
        client = redis.Redis(port=node.port, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            client.client_kill_filter(_type="normal", skipme=True)
        finally:
            client.close()


async def test_connections_killed_under_concurrent_requests_answer_no_500_and_heal_at_once(
    stack: OwnStack,
) -> None:
    """The services' pooled connections to the group killed mid-stream, under requests from
    many addresses at once: never a 500 (a connection another task closed was one, on the
    cluster: redis-py's AttributeError), and the next requests all succeed, no restart."""
    group = _group(stack)
    async with demo_users(KILL_USERS, stack.ca_cert, prefix="killed-conn-user-") as users:
        await register(users, stack.base_url)
        for user in users:
            assert (await login(user, stack.base_url, ROWS[4])).status == 200
        seen: list[int] = []
        for _ in range(KILL_ROUNDS):
            requests = asyncio.gather(*(_me(user, stack.base_url) for user in users * 2))
            await asyncio.sleep(0.005)  # some requests in flight, some not yet sent
            await asyncio.to_thread(_kill_normal_clients, group)
            seen += await requests
        assert 500 not in seen and set(seen) <= {200, 503}, sorted(set(seen))
        assert seen.count(200) > 0
        assert await asyncio.gather(*(_me(user, stack.base_url) for user in users)) == [200] * len(
            users
        )
