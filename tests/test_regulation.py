"""Login throttling: failures per account and per address, bans that age out, no enumeration."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tessera_auth.regulation import RegulationPolicy
from tessera_verify.clock import ManualClock

from .conftest import AuthClientFactory, register_and_login

Client = TestClient[Any, Any]
POLICY = RegulationPolicy(max_failures_per_account=3, max_failures_per_address=6, window=60)


async def _attempt(client: Client, username: str, password: str) -> Any:
    return await client.post("/auth/login", json={"username": username, "password": password})


async def test_an_account_is_throttled_after_repeated_failures_even_with_the_right_password(
    make_auth_client: AuthClientFactory,
) -> None:
    client = await make_auth_client(regulation=POLICY)
    body = await register_and_login(client, credential="none")
    name = body["user"]["username"]
    for _ in range(3):
        assert (await _attempt(client, name, "wrong password")).status == 401
    refused = await _attempt(client, name, body["password"])
    assert refused.status == 429
    assert (await refused.json())["error"] == "too_many_attempts"
    assert 60 <= int(refused.headers["Retry-After"]) <= 120
    # Spelling the name differently does not get around it.
    assert (await _attempt(client, name.upper(), body["password"])).status == 429


async def test_the_ban_ages_out_with_the_clock_and_success_clears_the_count(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(regulation=POLICY)
    body = await register_and_login(client, credential="none")
    name = body["user"]["username"]
    for _ in range(3):
        await _attempt(client, name, "wrong password")
    assert (await _attempt(client, name, body["password"])).status == 429
    clock.advance(121)  # two windows later
    assert (await _attempt(client, name, body["password"])).status == 200
    for _ in range(2):
        await _attempt(client, name, "wrong password")
    assert (await _attempt(client, name, body["password"])).status == 200  # clears it
    for _ in range(2):
        await _attempt(client, name, "wrong password")
    assert (await _attempt(client, name, body["password"])).status == 200


async def test_unknown_and_known_accounts_are_throttled_alike(
    make_auth_client: AuthClientFactory,
) -> None:
    client = await make_auth_client(regulation=POLICY)
    body = await register_and_login(client, credential="none")
    answers = {}
    for name in (body["user"]["username"], "nobody-by-that-name"):
        for _ in range(3):
            await _attempt(client, name, "wrong password")
        response = await _attempt(client, name, "wrong password")
        answers[name] = (response.status, (await response.json())["error"])
    assert set(answers.values()) == {(429, "too_many_attempts")}


async def test_one_address_failing_on_many_accounts_is_throttled_but_others_are_not(
    make_auth_client: AuthClientFactory,
) -> None:
    client = await make_auth_client(regulation=POLICY)
    body = await register_and_login(client, credential="none")
    for index in range(6):
        await _attempt(client, f"spray-target-{index}", "wrong password")
    assert (await _attempt(client, body["user"]["username"], body["password"])).status == 429


async def test_throttling_is_audited_and_counted(make_auth_client: AuthClientFactory) -> None:
    from tessera_auth import appkeys

    client = await make_auth_client(regulation=POLICY)
    for _ in range(4):
        await _attempt(client, "mallory", "wrong password")
    await client.app[appkeys.AUDIT].flush()
    outcomes = [e["outcome"] for e in await client.app[appkeys.AUDIT].query(kind="login")]
    assert outcomes == ["throttled", "failure", "failure", "failure"]
    metrics = await (await client.get("/metrics")).text()
    assert 'tessera_logins_total{outcome="throttled"} 1.0' in metrics
