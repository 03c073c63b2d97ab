"""Argon2id: parameters, rehash on login, and the same work for every failed login."""

from __future__ import annotations

import asyncpg
import pytest

from tessera_auth.passwords import PasswordHasher
from tessera_auth.settings import Argon2Parameters
from tessera_verify.errors import problem

from .conftest import AuthClientFactory

PASSWORD = "correct horse battery staple"


async def test_default_parameters_are_owasp_argon2id() -> None:
    hasher = PasswordHasher(Argon2Parameters())
    encoded = await hasher.hash(PASSWORD)
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await hasher.verify(encoded, PASSWORD)
    assert not await hasher.verify(encoded, PASSWORD + "!")


async def test_garbage_hash_never_verifies() -> None:
    hasher = PasswordHasher(Argon2Parameters(memory_kib=1024, time_cost=1))
    assert not await hasher.verify("not-a-hash", PASSWORD)
    assert hasher.needs_rehash("not-a-hash")


async def _stored_hash(database_url: str, username: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        value = await connection.fetchval(
            "SELECT password_hash FROM users WHERE username = $1", username
        )
    finally:
        await connection.close()
    assert isinstance(value, str)
    return value


async def test_login_rehashes_when_parameters_change(
    make_auth_client: AuthClientFactory, clean_db: str
) -> None:
    weak = Argon2Parameters(memory_kib=1024, time_cost=1, parallelism=1)
    stronger = Argon2Parameters(memory_kib=2048, time_cost=2, parallelism=1)
    old = await make_auth_client(argon2=weak)
    await old.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    assert "$m=1024,t=1,p=1$" in await _stored_hash(clean_db, "alice")

    new = await make_auth_client(argon2=stronger)
    response = await new.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert response.status == 200
    assert "$m=2048,t=2,p=1$" in await _stored_hash(clean_db, "alice")
    again = await new.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert again.status == 200


async def test_wrong_password_does_not_rehash(
    make_auth_client: AuthClientFactory, clean_db: str
) -> None:
    old = await make_auth_client(argon2=Argon2Parameters(memory_kib=1024, time_cost=1))
    await old.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    before = await _stored_hash(clean_db, "alice")
    new = await make_auth_client(argon2=Argon2Parameters(memory_kib=2048, time_cost=2))
    response = await new.post("/auth/login", json={"username": "alice", "password": "wrong-pass"})
    assert response.status == 401
    assert await _stored_hash(clean_db, "alice") == before


@pytest.mark.parametrize("username", ["nobody-here", "alice", "x", "ALICE!!"])
async def test_every_failed_login_costs_one_argon2_verification(
    make_auth_client: AuthClientFactory, username: str
) -> None:
    """Unknown user, wrong password and invalid names all do the same Argon2 work."""
    client = await make_auth_client()
    await client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    from tessera_auth import app_state

    hasher = client.app[app_state.ACCOUNTS].hasher
    calls: list[str] = []
    original = hasher._verify_sync

    def counting(password_hash: str, password: str) -> bool:
        calls.append(password_hash.split("$")[3])  # the parameters part
        return original(password_hash, password)

    hasher._verify_sync = counting  # type: ignore[method-assign]
    response = await client.post(
        "/auth/login", json={"username": username, "password": "wrong password"}
    )
    assert response.status == 401
    assert await response.json() == problem(
        401, "invalid_credentials", "invalid username or password"
    )
    assert calls == ["m=1024,t=1,p=1"]


async def test_disabled_user_gets_the_same_answer_as_a_wrong_password(
    auth_client: object,
) -> None:
    from aiohttp.test_utils import TestClient

    from tessera_auth import app_state

    assert isinstance(auth_client, TestClient)
    response = await auth_client.post(
        "/auth/register", json={"username": "alice", "password": PASSWORD}
    )
    user_id = (await response.json())["user"]["id"]
    await auth_client.app[app_state.ACCOUNTS].users.set_disabled(user_id, True)
    response = await auth_client.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_credentials"
