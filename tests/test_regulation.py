"""Login throttling attacked the way it is attacked: simultaneous guesses from one and from
many real loopback addresses, against an account whose owner must still get in.

Every request here comes from its own source address (127.0.N.1, a real bound
socket), and Argon2 verifications are counted on the app's own hasher.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tessera_auth import app_state
from tessera_auth.regulation import RegulationPolicy
from tessera_verify.clock import ManualClock
from tessera_verify.errors import ServerBusy

from .conftest import AuthClientFactory, register_and_login

Client = TestClient[Any, Any]
POLICY = RegulationPolicy(
    max_failures_per_account=10,
    max_failures_per_address=30,
    window=60,
    max_failures_per_pair=3,
    max_backoff=8.0,
    max_registrations_per_address=3,
)
From = Callable[..., Any]


@pytest.fixture
async def client(make_auth_client: AuthClientFactory) -> Client:
    # More simultaneous guesses than the default Argon2 bound admits (it would answer
    # some 503 server_busy, uncounted): the bound has its own tests (test_argon2_backpressure).
    return await make_auth_client(regulation=POLICY, argon2_max_pending=1000)


@pytest.fixture
def verifications(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many Argon2 verifications the app ran (real ones, dummy ones for unknown names)."""
    hasher = client.app[app_state.ACCOUNTS].hasher
    count = [0]

    def counting(method: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(*args: Any, **options: Any) -> Any:
            count[0] += 1
            return await method(*args, **options)

        return wrapped

    monkeypatch.setattr(hasher, "verify", counting(hasher.verify))
    monkeypatch.setattr(hasher, "verify_dummy", counting(hasher.verify_dummy))
    return count


async def _login(
    client: Client, session: aiohttp.ClientSession, username: str, password: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with session.post(
        client.make_url("/auth/login"), json={"username": username, "password": password}
    ) as response:
        return response.status, dict(response.headers), await response.json()


async def test_simultaneous_guesses_from_one_address_get_no_more_verifications_than_the_limit(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession], verifications: list[int]
) -> None:
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    attacker = from_addresses(9)
    before = verifications[0]  # the owner's own login above
    guesses = ["wrong password"] * 40 + [owner["password"]]
    answers = await asyncio.gather(*(_login(client, attacker, name, g) for g in guesses))
    statuses = [status for status, _, _ in answers]
    assert verifications[0] - before <= POLICY.max_failures_per_pair
    assert statuses.count(429) >= len(guesses) - POLICY.max_failures_per_pair
    assert set(statuses) <= {200, 401, 429}


async def test_simultaneous_guesses_from_many_addresses_are_bounded_by_the_account_budget(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession], verifications: list[int]
) -> None:
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    before = verifications[0]
    answers = await asyncio.gather(
        *(_login(client, from_addresses(n), name, "wrong password") for n in range(10, 50))
    )
    # Past the soft limit, one guess per backoff slot: the clock stands still here,
    # so exactly one slot opens.
    assert verifications[0] - before <= POLICY.max_failures_per_account + 1
    assert [s for s, _, _ in answers].count(429) >= 40 - POLICY.max_failures_per_account - 1


async def test_the_owner_logs_in_from_a_fresh_address_during_an_attack_from_another(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession]
) -> None:
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    attack = [_login(client, from_addresses(60), name, f"guess {i}") for i in range(30)]
    answers = await asyncio.gather(*attack)
    assert {s for s, _, _ in answers} == {401, 429}
    status, _, body = await _login(client, from_addresses(61), name, owner["password"])
    assert status == 200, body
    # The attacker's address stays refused for this account, even with the right password.
    status, headers, body = await _login(client, from_addresses(60), name, owner["password"])
    assert status == 429 and body["error"] == "too_many_attempts"
    assert 60 <= int(headers["Retry-After"]) <= 120


async def test_a_distributed_attack_slows_the_account_but_never_locks_the_owner_out(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession], clock: ManualClock
) -> None:
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    for n in range(70, 82):  # twelve addresses, one guess each: past the soft limit
        await _login(client, from_addresses(n), name, "wrong password")
    status, headers, _ = await _login(client, from_addresses(90), name, owner["password"])
    if status == 429:  # the attacker took the slot: the owner waits a bounded, honest time
        wait = int(headers["Retry-After"])
        assert 1 <= wait <= POLICY.max_backoff
        clock.advance(wait)
        status, _, _ = await _login(client, from_addresses(90), name, owner["password"])
    assert status == 200


async def test_a_pair_ban_lifts_when_its_retry_after_has_passed(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession], clock: ManualClock
) -> None:
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    for _ in range(POLICY.max_failures_per_pair):
        assert (await _login(client, from_addresses(100), name, "wrong password"))[0] == 401
    status, headers, _ = await _login(client, from_addresses(100), name, owner["password"])
    assert status == 429
    clock.advance(int(headers["Retry-After"]))
    assert (await _login(client, from_addresses(100), name, owner["password"]))[0] == 200


async def test_unknown_and_known_accounts_are_throttled_alike(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession]
) -> None:
    owner = await register_and_login(client, credential="none")
    answers = {}
    for name in (owner["user"]["username"], "nobody-by-that-name"):
        for _ in range(POLICY.max_failures_per_pair):
            await _login(client, from_addresses(110), name, "wrong password")
        status, _, body = await _login(client, from_addresses(110), name, "wrong password")
        answers[name] = (status, body["error"])
    assert set(answers.values()) == {(429, "too_many_attempts")}


async def test_one_address_spraying_many_accounts_is_throttled_but_others_are_not(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession]
) -> None:
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    sprays = [
        _login(client, from_addresses(120), f"spray-target-{i}", "wrong password")
        for i in range(POLICY.max_failures_per_address + 10)
    ]
    statuses = [s for s, _, _ in await asyncio.gather(*sprays)]
    assert statuses.count(401) <= POLICY.max_failures_per_address
    assert (await _login(client, from_addresses(120), name, owner["password"]))[0] == 429
    assert (await _login(client, from_addresses(121), name, owner["password"]))[0] == 200


async def test_a_registration_flood_from_one_address_is_refused_before_any_hashing(
    client: Client,
    from_addresses: Callable[[int], aiohttp.ClientSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hasher = client.app[app_state.ACCOUNTS].hasher
    hashes = [0]
    original = hasher.hash

    async def counting(password: str, *, rank: int = 0) -> str:
        hashes[0] += 1
        return await original(password, rank=rank)

    monkeypatch.setattr(hasher, "hash", counting)

    async def register(n: int, i: int) -> int:
        async with from_addresses(n).post(
            client.make_url("/auth/register"),
            json={"username": f"flood-{n}-{i}", "password": "correct horse battery staple"},
        ) as response:
            return response.status

    statuses = await asyncio.gather(*(register(130, i) for i in range(20)))
    assert statuses.count(201) == POLICY.max_registrations_per_address
    assert statuses.count(429) == 20 - POLICY.max_registrations_per_address
    assert hashes[0] == POLICY.max_registrations_per_address
    assert await register(131, 0) == 201  # another address is not affected


async def test_password_change_guesses_are_throttled_and_a_wrong_one_is_403(
    client: Client,
) -> None:
    owner = await register_and_login(client, credential="token")
    bearer = {"Authorization": f"Bearer {owner['access_token']}"}

    async def change(current: str) -> Any:
        return await client.post(
            "/auth/password",
            headers=bearer,
            json={"current_password": current, "new_password": "another fine passphrase"},
        )

    for _ in range(POLICY.max_failures_per_pair):
        wrong = await change("not my password")
        assert wrong.status == 403
        assert (await wrong.json())["error"] == "wrong_current_password"
    refused = await change(owner["password"])
    assert refused.status == 429
    assert "Retry-After" in refused.headers
    # Nothing changed: the old password still logs in.
    login = await client.post(
        "/auth/login",
        json={"username": owner["user"]["username"], "password": owner["password"]},
    )
    assert login.status == 200


async def test_a_password_change_refused_for_a_full_argon2_queue_is_not_counted_as_a_guess(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await register_and_login(client, credential="token")
    bearer = {"Authorization": f"Bearer {owner['access_token']}"}
    accounts = client.app[app_state.ACCOUNTS]
    real_verify = accounts.verify_password

    async def busy(*_: Any, **__: Any) -> bool:
        raise ServerBusy()

    monkeypatch.setattr(accounts, "verify_password", busy)
    body = {"current_password": owner["password"], "new_password": "another fine passphrase"}
    for _ in range(2 * POLICY.max_failures_per_pair):
        refused = await client.post("/auth/password", headers=bearer, json=body)
        assert refused.status == 503
        assert (await refused.json())["error"] == "server_busy"
    monkeypatch.setattr(accounts, "verify_password", real_verify)
    changed = await client.post("/auth/password", headers=bearer, json=body)
    assert changed.status == 200, await changed.text()


async def test_throttling_is_audited_and_counted(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession]
) -> None:
    for _ in range(POLICY.max_failures_per_pair + 1):
        await _login(client, from_addresses(140), "mallory", "wrong password")
    await client.app[app_state.AUDIT].flush()
    outcomes = [e["outcome"] for e in await client.app[app_state.AUDIT].query(kind="login")]
    assert outcomes == ["throttled"] + ["failure"] * POLICY.max_failures_per_pair
    metrics = await (await client.get("/metrics")).text()
    assert 'tessera_logins_total{outcome="throttled"} 1.0' in metrics


async def _portal_guess(
    client: Client, session: aiohttp.ClientSession, username: str, password: str
) -> int:
    """One browser at ``session``'s address: the login form (its CSRF cookie and token),
    then the form posted with ``password``; the post's status."""
    async with session.get(client.make_url("/auth/portal/login")) as form:
        html = await form.text()
        cookies = "; ".join(line.split(";", 1)[0] for line in form.headers.getall("Set-Cookie", ()))
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None, html
    async with session.post(
        client.make_url("/auth/portal/login"),
        data={"username": username, "password": password, "csrf_token": token.group(1)},
        headers={"Cookie": cookies, "Origin": str(client.make_url("")).rstrip("/")},
        allow_redirects=False,
    ) as response:
        return response.status


async def test_simultaneous_portal_guesses_from_many_addresses_share_the_account_budget(
    client: Client, from_addresses: Callable[[int], aiohttp.ClientSession], verifications: list[int]
) -> None:
    # The portal's form is one more door to the same account: its guesses count
    # against the same budget as /auth/login's, however many browsers post at once.
    owner = await register_and_login(client, credential="none")
    name = owner["user"]["username"]
    before = verifications[0]
    statuses = await asyncio.gather(
        *(_portal_guess(client, from_addresses(n), name, "wrong password") for n in range(60, 100))
    )
    assert verifications[0] - before <= POLICY.max_failures_per_account + 1
    assert statuses.count(429) >= 40 - POLICY.max_failures_per_account - 1
    assert set(statuses) <= {401, 429}
