"""JWT access tokens and refresh tokens over HTTP, keys shared through PostgreSQL."""

from __future__ import annotations

import base64
import json
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tessera_auth.settings import Settings
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.revocation import MAX_LEEWAY, parse_entry

from .conftest import AuthClientFactory, register_and_login

Client = TestClient[Any, Any]


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    return decode(header), decode(payload)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refresh(client: Client, refresh_token: str, *, form: bool = False) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if form:
        return await client.post("/auth/token", data=data)
    return await client.post("/auth/token", json=data)


async def test_token_login_returns_an_rfc6749_token_response(auth_client: Client) -> None:
    body = await register_and_login(auth_client, credential="token")
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert isinstance(body["refresh_token"], str) and len(body["refresh_token"]) == 65
    assert body["access_token"].count(".") == 2
    assert "session" not in body


async def test_access_token_follows_rfc9068_and_carries_nothing_personal(
    auth_client: Client, clock: ManualClock
) -> None:
    body = await register_and_login(auth_client, credential="token", username="alice.smith")
    header, claims = _segments(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    assert header["kid"]
    assert set(claims) == {"iss", "sub", "aud", "client_id", "iat", "nbf", "exp", "jti", "sid"}
    assert claims["iss"] == "https://auth.tessera.test"
    assert claims["aud"] == "tessera-api"
    assert claims["sub"] == body["user"]["id"]
    assert claims["exp"] - claims["iat"] == 300
    assert claims["iat"] == int(clock.now())
    assert "alice" not in json.dumps(claims)


async def test_both_credentials_link_token_to_session(auth_client: Client) -> None:
    body = await register_and_login(auth_client, credential="both")
    _, claims = _segments(body["access_token"])
    assert claims["sid"] == body["session"]["id"]


async def test_access_token_verifies_against_the_published_jwks(auth_client: Client) -> None:
    body = await register_and_login(auth_client, credential="token")
    response = await auth_client.get("/.well-known/jwks.json")
    assert response.status == 200
    assert "max-age" in response.headers["Cache-Control"]
    jwks = await response.json(content_type=None)
    header, _ = _segments(body["access_token"])
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert "d" not in jwk and jwk["use"] == "sig" and jwk["alg"] == "ES256"
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        body["access_token"],
        key,
        algorithms=["ES256"],
        audience="tessera-api",
        issuer="https://auth.tessera.test",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["sub"] == body["user"]["id"]


async def test_metadata_holds_only_rfc8414_members_and_each_is_true(auth_client: Client) -> None:
    """No signing algorithms for a token endpoint that authenticates no client, and no
    tessera_* members (the OpenAPI document describes tessera's own endpoints)."""
    response = await auth_client.get("/.well-known/oauth-authorization-server")
    issuer = "https://auth.tessera.test"
    assert await response.json() == {
        "issuer": issuer,
        "jwks_uri": issuer + "/.well-known/jwks.json",
        "token_endpoint": issuer + "/auth/token",
        "grant_types_supported": ["refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": [],
        "introspection_endpoint": issuer + "/auth/introspect",
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "revocation_endpoint": issuer + "/auth/revoke",
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
    }
    # Each endpoint it names answers at the path it names.
    for path in ("/auth/token", "/auth/introspect", "/auth/revoke"):
        assert (await auth_client.post(path, data={"token": "x"})).status != 404
    assert (await auth_client.get("/.well-known/jwks.json")).status == 200


async def test_me_accepts_the_bearer_token(auth_client: Client) -> None:
    body = await register_and_login(auth_client, credential="token")
    response = await auth_client.get("/auth/me", headers=_bearer(body["access_token"]))
    assert response.status == 200
    me = await response.json()
    assert me["method"] == "jwt"
    assert me["user_id"] == body["user"]["id"]


async def test_access_token_expires_when_the_clock_moves(
    auth_client: Client, clock: ManualClock
) -> None:
    body = await register_and_login(auth_client, credential="token")
    clock.advance(299)
    assert (await auth_client.get("/auth/me", headers=_bearer(body["access_token"]))).status == 200
    clock.advance(10)
    response = await auth_client.get("/auth/me", headers=_bearer(body["access_token"]))
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
async def test_refresh_returns_a_new_pair_and_the_old_refresh_token_is_spent(
    auth_client: Client, clock: ManualClock, form: bool
) -> None:
    body = await register_and_login(auth_client, credential="token")
    response = await _refresh(auth_client, body["refresh_token"], form=form)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    pair = await response.json()
    assert pair["refresh_token"] != body["refresh_token"]
    assert pair["access_token"] != body["access_token"]
    assert _segments(pair["access_token"])[1]["sid"] == _segments(body["access_token"])[1]["sid"]
    clock.advance(11)  # past the grace window for concurrent refreshes
    again = await _refresh(auth_client, body["refresh_token"], form=form)
    assert again.status == 400
    assert (await again.json())["error"] == "invalid_grant"


async def test_refresh_tokens_are_stored_nowhere(
    auth_client: Client, redis: Redis, clock: ManualClock
) -> None:
    """Neither a token nor the key that makes one is in Redis, under any name or in any
    value: the family's hash, and a spent token's grace record keyed by a keyed hash."""
    body = await register_and_login(auth_client, credential="token")
    first = body["refresh_token"]
    second = await (await _refresh(auth_client, first)).json()
    tokens = [first, second["refresh_token"]]
    keys = [k.decode() for k in await redis.keys(redis_layout.refresh_token(first[:16]))]
    assert len(keys) == 1, keys  # the spent token's grace record; the live one has none
    stored: list[bytes] = []
    for key in [*keys, redis_layout.refresh_family(first[:16])]:
        stored += [key.encode(), *(v for kv in (await redis.hgetall(key)).items() for v in kv)]
    assert stored
    for token in tokens:
        assert all(token.encode() not in value for value in stored)
        assert all(token[16:].encode() not in value for value in stored)  # nor its MAC
    # The record lives for the grace window (10 s) and a second more, then one hash per
    # family is all there is; a replay past the window is reuse all the same.
    assert 0 < await redis.pttl(keys[0]) <= 11_000
    clock.advance(11)
    assert (await _refresh(auth_client, first)).status == 400


async def test_refresh_token_expires_with_the_clock(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(refresh_token_ttl=3600)
    body = await register_and_login(client, credential="token")
    clock.advance(3601)
    assert (await _refresh(client, body["refresh_token"])).status == 400


async def test_unsupported_grant_type_is_refused(auth_client: Client) -> None:
    response = await auth_client.post("/auth/token", json={"grant_type": "password"})
    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_grant_type"


async def test_logout_denylists_the_access_token_durably_past_expiry_and_any_leeway(
    auth_client: Client, redis: Redis, settings: Settings
) -> None:
    body = await register_and_login(auth_client, credential="token")
    _, claims = _segments(body["access_token"])
    response = await auth_client.post(
        "/auth/logout",
        headers=_bearer(body["access_token"]),
        json={"refresh_token": body["refresh_token"]},
    )
    assert response.status == 200
    assert sorted((await response.json())["revoked"]) == ["access_token", "refresh_token"]
    # Remembered MAX_LEEWAY past exp (no verifier's leeway reopens it), in PostgreSQL
    # (the source of truth, before the 2xx) and in Redis's copy.
    until = claims["exp"] + MAX_LEEWAY
    entry = await redis.hget(redis_layout.revocations("jti"), claims["jti"])
    assert entry is not None and parse_entry(entry) == (until, until)
    connection = await asyncpg.connect(settings.database_url)
    try:
        row = await connection.fetchrow(
            "SELECT until FROM revocations WHERE kind = 'jti' AND value = $1", claims["jti"]
        )
    finally:
        await connection.close()
    assert row is not None and row["until"] == until
    me = await auth_client.get("/auth/me", headers=_bearer(body["access_token"]))
    assert me.status == 401
    assert "revoked" in (await me.json())["detail"]
    assert (await _refresh(auth_client, body["refresh_token"])).status == 400


async def test_keys_survive_a_restart_and_are_shared_by_replicas(
    make_auth_client: AuthClientFactory,
) -> None:
    first = await make_auth_client()
    body = await register_and_login(first, credential="token")
    kid = _segments(body["access_token"])[0]["kid"]
    await first.close()
    second = await make_auth_client()  # a restart, or another replica on the same database
    third = await make_auth_client()
    for client in (second, third):
        assert (await client.get("/auth/me", headers=_bearer(body["access_token"]))).status == 200
        other = await register_and_login(client, credential="token")
        assert _segments(other["access_token"])[0]["kid"] == kid


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
async def test_other_asymmetric_algorithms_are_selectable(
    make_auth_client: AuthClientFactory, algorithm: str
) -> None:
    client = await make_auth_client(jwt_algorithm=algorithm)
    body = await register_and_login(client, credential="token")
    assert _segments(body["access_token"])[0]["alg"] == algorithm
    assert (await client.get("/auth/me", headers=_bearer(body["access_token"]))).status == 200
    jwks = await (await client.get("/.well-known/jwks.json")).json(content_type=None)
    assert algorithm in {k["alg"] for k in jwks["keys"]}


async def test_hs256_shared_secret_mode_signs_and_publishes_nothing(
    make_auth_client: AuthClientFactory,
) -> None:
    secret = b"a-shared-secret-of-at-least-32-bytes!!"
    client = await make_auth_client(jwt_algorithm="HS256", hs256_secret=secret)
    body = await register_and_login(client, credential="token")
    header, _ = _segments(body["access_token"])
    assert header["alg"] == "HS256"
    jwt.decode(
        body["access_token"],
        secret,
        algorithms=["HS256"],
        audience="tessera-api",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    jwks = await (await client.get("/.well-known/jwks.json")).json(content_type=None)
    assert jwks == {"keys": []}
    assert (await client.get("/auth/me", headers=_bearer(body["access_token"]))).status == 200


async def test_token_of_a_disabled_user_cannot_be_refreshed(auth_client: Client) -> None:
    from tessera_auth import app_state

    body = await register_and_login(auth_client, credential="token")
    await auth_client.app[app_state.ACCOUNTS].users.set_disabled(body["user"]["id"], True)
    assert (await _refresh(auth_client, body["refresh_token"])).status == 400
    assert (await auth_client.get("/auth/me", headers=_bearer(body["access_token"]))).status == 401
