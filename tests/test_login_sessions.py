"""Register, log in with a session cookie, who am I, log out (against real PostgreSQL and Redis)."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import AuthClientFactory, register_and_login

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"


def _session_cookie(response: Any) -> tuple[str, dict[str, Any]]:
    """The session cookie's value and attributes from the raw Set-Cookie header."""
    headers = response.headers.getall("Set-Cookie")
    for header in headers:
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        if SESSION_COOKIE in parsed:
            morsel = parsed[SESSION_COOKIE]
            attributes = {k: morsel[k] for k in morsel if morsel[k]}
            attributes["_raw"] = header
            return morsel.value, attributes
    raise AssertionError(f"no {SESSION_COOKIE} cookie in {headers}")


def _cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={session_id}"}


async def _register(client: Client, username: str) -> None:
    response = await client.post(
        "/auth/register", json={"username": username, "password": PASSWORD}
    )
    assert response.status == 201, await response.text()


async def _login(client: Client, username: str, **extra: Any) -> Any:
    return await client.post(
        "/auth/login", json={"username": username, "password": PASSWORD}, **extra
    )


async def test_login_sets_a_host_prefixed_httponly_secure_lax_cookie(auth_client: Client) -> None:
    await _register(auth_client, "alice")
    response = await _login(auth_client, "alice")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    session_id, attributes = _session_cookie(response)
    assert len(session_id) == 43
    assert attributes["httponly"] is True
    assert attributes["secure"] is True
    assert attributes["samesite"] == "Lax"
    assert attributes["path"] == "/"
    assert "domain" not in attributes
    assert "expires" not in attributes and "max-age" not in attributes  # a browser-session cookie
    body = await response.json()
    assert body["user"]["username"] == "alice"
    assert "access_token" not in body


async def test_session_is_stored_under_a_keyed_hash_with_user_ip_and_agent(
    auth_client: Client, redis: Redis
) -> None:
    await _register(auth_client, "alice")
    response = await _login(auth_client, "alice", headers={"User-Agent": "tessera-test/1"})
    session_id, _ = _session_cookie(response)
    keys = [k.decode() for k in await redis.keys(redis_layout.session("*"))]
    assert len(keys) == 1
    assert session_id not in keys[0]
    raw = await redis.get(keys[0])
    assert session_id.encode() not in raw
    assert b"tessera-test/1" in raw and b"127.0.0.1" in raw
    assert await redis.ttl(keys[0]) > 0


async def test_me_answers_with_the_session_user(auth_client: Client) -> None:
    await _register(auth_client, "alice")
    session_id, _ = _session_cookie(await _login(auth_client, "alice"))
    response = await auth_client.get("/auth/me", headers=_cookie(session_id))
    assert response.status == 200
    body = await response.json()
    assert body["username"] == "alice"
    assert body["method"] == "shared_session"


async def test_me_without_credentials_is_401_with_challenge(auth_client: Client) -> None:
    response = await auth_client.get("/auth/me")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"] == "unauthenticated"


async def test_login_replaces_the_session_the_client_brought(auth_client: Client) -> None:
    await _register(auth_client, "alice")
    first, _ = _session_cookie(await _login(auth_client, "alice"))
    second, _ = _session_cookie(await _login(auth_client, "alice", headers=_cookie(first)))
    assert first != second
    assert (await auth_client.get("/auth/me", headers=_cookie(first))).status == 401
    assert (await auth_client.get("/auth/me", headers=_cookie(second))).status == 200


async def test_a_planted_unknown_session_id_is_never_adopted(auth_client: Client) -> None:
    await _register(auth_client, "alice")
    planted = "A" * 43
    session_id, _ = _session_cookie(await _login(auth_client, "alice", headers=_cookie(planted)))
    assert session_id != planted
    assert (await auth_client.get("/auth/me", headers=_cookie(planted))).status == 401


async def test_logout_deletes_the_session_server_side(auth_client: Client, redis: Redis) -> None:
    await _register(auth_client, "alice")
    session_id, _ = _session_cookie(await _login(auth_client, "alice"))
    response = await auth_client.post("/auth/logout", headers=_cookie(session_id))
    assert response.status == 200
    assert (await response.json())["revoked"] == ["session"]
    assert 'tessera_session=""' in response.headers["Set-Cookie"]
    assert await redis.keys(redis_layout.session("*")) == []
    assert (await auth_client.get("/auth/me", headers=_cookie(session_id))).status == 401


async def test_logout_without_any_credential_is_401(auth_client: Client) -> None:
    assert (await auth_client.post("/auth/logout")).status == 401


async def test_cross_site_logout_is_refused(auth_client: Client) -> None:
    await _register(auth_client, "alice")
    session_id, _ = _session_cookie(await _login(auth_client, "alice"))
    response = await auth_client.post(
        "/auth/logout",
        headers={
            **_cookie(session_id),
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert response.status == 403
    assert (await response.json())["error"] == "csrf_rejected"
    assert (await auth_client.get("/auth/me", headers=_cookie(session_id))).status == 200


async def test_session_idles_out_when_the_clock_moves(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(session_idle_timeout=600, session_absolute_timeout=3600)
    await _register(client, "alice")
    session_id, _ = _session_cookie(await _login(client, "alice"))
    clock.advance(590)
    assert (await client.get("/auth/me", headers=_cookie(session_id))).status == 200
    clock.advance(590)
    assert (await client.get("/auth/me", headers=_cookie(session_id))).status == 200
    clock.advance(601)
    assert (await client.get("/auth/me", headers=_cookie(session_id))).status == 401


async def test_session_ends_at_the_absolute_timeout(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(session_idle_timeout=600, session_absolute_timeout=1200)
    await _register(client, "alice")
    session_id, _ = _session_cookie(await _login(client, "alice"))
    for _ in range(3):
        clock.advance(350)
        assert (await client.get("/auth/me", headers=_cookie(session_id))).status == 200
    clock.advance(200)
    assert (await client.get("/auth/me", headers=_cookie(session_id))).status == 401


async def test_insecure_cookie_mode_drops_secure_and_prefix(
    make_auth_client: AuthClientFactory,
) -> None:
    client = await make_auth_client(cookie_insecure=True)
    body = await register_and_login(client)
    assert body["user"]["username"].startswith("user-")
    response = await client.post(
        "/auth/login", json={"username": body["user"]["username"], "password": body["password"]}
    )
    header = response.headers["Set-Cookie"]
    assert header.startswith("tessera_session=")
    assert "Secure" not in header and "HttpOnly" in header
