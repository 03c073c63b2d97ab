"""A guess is reserved in one round trip, and that changes none of the throttle's promises.

:meth:`Regulator.reserve` sends the account's script and the address's script in one
pipeline. Each still checks and counts atomically, so simultaneous guesses never pass a
budget; when one budget refuses, what the other counted is given back. A login whose
Redis dies after the reservation fails closed (503 problem+json) and issues nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio import Redis

from tessera_auth import app_state
from tessera_auth.regulation import RegulationPolicy, Regulator
from tessera_stack import RedisServer, free_port
from tessera_verify.clock import ManualClock
from tessera_verify.dependency_metrics import instrumented_redis
from tessera_verify.errors import TooManyAttempts

from .conftest import AuthClientFactory
from .fixtures_infra import running

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"


async def _count(redis: Redis, pattern: str) -> int:
    """The sum of the login-failure counters whose keys match ``pattern``."""
    total = 0
    async for key in redis.scan_iter(match=f"tessera:login-failures:{pattern}"):
        if b"next-slot" not in key:
            total += int(await redis.get(key) or 0)
    return total


async def _reserved(regulator: Regulator, account: str, address: str) -> bool:
    try:
        await regulator.reserve(account, address)
    except TooManyAttempts:
        return False
    return True


async def test_a_reservation_is_one_round_trip(redis_url: str, clock: ManualClock) -> None:
    latency = Histogram("latency", "", ["dependency", "command"], registry=CollectorRegistry())
    client = instrumented_redis(redis_url, timeout=2.0, latency=latency)
    try:
        regulator = Regulator(client, clock, RegulationPolicy())
        await regulator.reserve("alice", "192.0.2.1")
    finally:
        await client.aclose()
    counts = {
        sample.labels["command"]: sample.value
        for metric in latency.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    }
    assert counts == {"pipeline": 1}


async def test_simultaneous_guesses_from_40_addresses_never_pass_the_account_budget(
    redis: Redis, clock: ManualClock
) -> None:
    policy = RegulationPolicy(max_failures_per_account=10, max_failures_per_address=5, window=60)
    regulator = Regulator(redis, clock, policy)
    outcomes = await asyncio.gather(
        *(_reserved(regulator, "alice", f"192.0.2.{n}") for n in range(1, 41))
    )
    # The clock stands still: past the soft limit exactly one backoff slot opens.
    assert outcomes.count(True) == policy.max_failures_per_account + 1
    # Every refused guess gave its address's count back.
    assert await _count(redis, "{address:*") == outcomes.count(True)


async def test_a_guess_the_account_refuses_leaves_nothing_on_its_address(
    redis: Redis, clock: ManualClock
) -> None:
    policy = RegulationPolicy(max_failures_per_pair=3, max_failures_per_address=4, window=60)
    regulator = Regulator(redis, clock, policy)
    for _ in range(3):
        assert await _reserved(regulator, "alice", "192.0.2.1")
    refused = await asyncio.gather(*(_reserved(regulator, "alice", "192.0.2.1") for _ in range(20)))
    assert not any(refused)
    assert await _count(redis, "{address:*") == 3
    # The address's own budget is untouched by the refused guesses: one left.
    assert await _reserved(regulator, "bob", "192.0.2.1")
    assert not await _reserved(regulator, "carol", "192.0.2.1")


async def test_a_guess_the_address_refuses_leaves_nothing_on_the_account(
    redis: Redis, clock: ManualClock
) -> None:
    policy = RegulationPolicy(max_failures_per_address=3, window=60)
    regulator = Regulator(redis, clock, policy)
    for name in ("a1", "a2", "a3"):
        assert await _reserved(regulator, name, "192.0.2.1")
    refused = await asyncio.gather(*(_reserved(regulator, "dave", "192.0.2.1") for _ in range(10)))
    assert not any(refused)
    assert await _count(redis, "{account:*") == 3 * 2  # a1-a3: account and pair, nothing else


# --- a Redis that dies between the reservation and the credential ------------------------


@pytest.fixture(scope="module")
def own_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running(RedisServer(tmp_path_factory.mktemp("own-redis"), port=free_port())) as server:
        yield server


@pytest.fixture
def redis_server(own_redis_server: RedisServer) -> Iterator[RedisServer]:
    if not own_redis_server.running:
        own_redis_server.start()
    yield own_redis_server
    if not own_redis_server.running:
        own_redis_server.start()


@pytest.mark.parametrize("credential", ["session", "token"])
async def test_a_login_whose_redis_dies_after_the_reservation_fails_closed_and_issues_nothing(
    make_auth_client: AuthClientFactory,
    redis_server: RedisServer,
    credential: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client: Client = await make_auth_client(redis_url=redis_server.url)
    username = f"user-{uuid.uuid4().hex[:10]}"
    response = await client.post(
        "/auth/register", json={"username": username, "password": PASSWORD}
    )
    assert response.status == 201, await response.text()
    user_id = (await response.json())["user"]["id"]
    hasher = client.app[app_state.ACCOUNTS].hasher
    verify = hasher.verify

    async def verify_then_kill_redis(*args: Any, **options: Any) -> bool:
        result: bool = await verify(*args, **options)
        await asyncio.to_thread(redis_server.stop)
        return result

    monkeypatch.setattr(hasher, "verify", verify_then_kill_redis)
    body = {"username": username, "password": PASSWORD, "credential": credential}
    response = await client.post("/auth/login", json=body)
    text = await response.text()
    assert response.status == 503, text
    assert response.content_type == "application/problem+json", text
    assert (await response.json())["error"] == "dependency_unavailable"
    assert "Set-Cookie" not in response.headers

    monkeypatch.setattr(hasher, "verify", verify)
    await asyncio.to_thread(redis_server.start)
    inspect = Redis.from_url(redis_server.url)
    try:
        assert await inspect.exists(f"tessera:user-sessions:{user_id}") == 0
        assert await inspect.exists(f"tessera:user-refresh-families:{user_id}") == 0
        assert [k async for k in inspect.scan_iter(match="tessera:session:*")] == []
    finally:
        await inspect.aclose()
    for _ in range(100):  # the client reconnects by itself
        response = await client.post("/auth/login", json=body)
        if response.status == 200:
            break
        await asyncio.sleep(0.05)
    assert response.status == 200, await response.text()


async def test_a_failing_account_script_gives_back_what_the_address_counted(
    redis: Redis, clock: ManualClock
) -> None:
    # The account's counter is not a counter (the script fails on it, as it would on a
    # shard failing over), while the address's script, in the same round trip, counts:
    # the guess fails, and the address is left as it was, not charged for Redis's fault.
    regulator = Regulator(redis, clock, RegulationPolicy())
    await regulator.reserve("bob", "192.0.2.7")  # the keys exist now; learn their names
    account_keys = [
        key
        async for key in redis.scan_iter(match="tessera:login-failures:{account:*")
        if b":from:" not in key and b"next-slot" not in key
    ]
    assert account_keys
    for key in account_keys:
        await redis.delete(key)
        await redis.hset(key, "not", "a counter")
    before = await _count(redis, "{address:*")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await regulator.reserve("bob", "192.0.2.7")
    assert await _count(redis, "{address:*") == before
