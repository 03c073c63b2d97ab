"""Refresh rotation, reuse detection, one revocation plane, introspection and revocation.

Real PostgreSQL and Redis; the auth service and resource replicas run in-process
on real sockets; time moves on the injected clock.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis

from tessera_auth import app_state
from tessera_auth.app import create_app
from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_auth.revoker import Revoker
from tessera_auth.settings import Settings
from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.errors import InvalidGrant
from tessera_verify.integration import tessera_verify
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import AuthClientFactory, ResourceFactory, register_and_login

Client = TestClient[Any, Any]
CLIENT_ID, CLIENT_SECRET = "resource-api", "introspection-secret-0123"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={session_id}"}


def _basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


async def _refresh(client: Client, token: str) -> Any:
    return await client.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": token}
    )


async def _login(client: Client, body: dict[str, Any], credential: str) -> Any:
    return await client.post(
        "/auth/login",
        json={
            "username": body["user"]["username"],
            "password": body["password"],
            "credential": credential,
        },
    )


def _session_id(response: Any) -> str:
    return str(response.cookies[SESSION_COOKIE].value)


async def _feed_caught_up(replica: Client, applied_before: int, count: int = 1) -> None:
    """Wait (bounded) until the replica's revocation cache applied ``count`` more events."""
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    for _ in range(500):
        if cache.events_applied >= applied_before + count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the revocation event never reached the replica")


def _applied(replica: Client) -> int:
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    return cache.events_applied


# --- refresh rotation ------------------------------------------------------------------


async def test_concurrent_refreshes_of_one_token_all_get_the_same_new_pair(
    make_auth_client: AuthClientFactory,
) -> None:
    first, second = await make_auth_client(), await make_auth_client()  # two auth replicas
    login = await register_and_login(first, credential="token")
    responses = await asyncio.gather(
        *(_refresh(client, login["refresh_token"]) for client in [first, second] * 10)
    )
    assert [r.status for r in responses] == [200] * 20
    pairs = [await r.json() for r in responses]
    assert len({p["refresh_token"] for p in pairs}) == 1
    assert len({p["access_token"] for p in pairs}) == 1
    # The user is still logged in: the new refresh token works.
    assert (await _refresh(first, pairs[0]["refresh_token"])).status == 200


async def test_reused_refresh_token_revokes_family(
    auth: Client, make_replica: ResourceFactory, clock: ManualClock
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica()
    rotated = await (await _refresh(auth, login["refresh_token"])).json()
    assert (await replica.get("/api/me", headers=_bearer(rotated["access_token"]))).status == 200
    clock.advance(11)  # the grace window is over: a second use is a replay
    before = _applied(replica)
    replay = await _refresh(auth, login["refresh_token"])
    assert replay.status == 400
    assert "reuse" in (await replay.json())["error_description"]
    # The whole family is gone: the legitimate holder's newer tokens too.
    assert (await _refresh(auth, rotated["refresh_token"])).status == 400
    await _feed_caught_up(replica, before)
    refused = await replica.get("/api/me", headers=_bearer(rotated["access_token"]))
    assert refused.status == 401
    assert (await auth.get("/auth/me", headers=_bearer(rotated["access_token"]))).status == 401


async def test_a_grace_use_of_a_token_whose_pair_was_refused_is_refused_not_kept_waiting(
    redis: Redis, clock: ManualClock
) -> None:
    """Two tabs spend one token; the first one's pair is refused (its family was revoked
    meanwhile). The second, in the grace window, gets invalid_grant at once, not a
    503 after waiting for a pair that will never be recorded."""
    store = RefreshTokenStore(redis, hash_key=b"k" * 32, ttl=3600, clock=clock)
    token, grant = await store.start_family(user_id="u-grace", session_link="link")
    assert (await store.claim(token, grant)).outcome == "fresh"
    family = await store.family(grant.family_id)
    assert family is not None
    await store.revoke_family(family)
    assert not await store.record_successor(token, grant, {"refresh_token": "never handed out"})
    with pytest.raises(InvalidGrant):
        await store.claim(token, grant)


async def test_revoking_a_family_that_expired_meanwhile_writes_nothing(
    redis: Redis, clock: ManualClock
) -> None:
    """A bare revoked flag would be a family without fields or expiry, forever."""
    store = RefreshTokenStore(redis, hash_key=b"k" * 32, ttl=3600, clock=clock)
    token, grant = await store.start_family(user_id="u-expired", session_link="link")
    family = await store.family(grant.family_id)
    assert family is not None
    key = redis_layout.refresh_family(grant.family_id)
    await redis.delete(key)  # its time ran out between the listing and the revocation
    await store.revoke_family(family)
    assert not await redis.exists(key)
    with pytest.raises(InvalidGrant):
        await store.peek(token)


async def test_a_logout_everywhere_that_flagged_late_is_dated_past_the_second_of_its_first_date(
    auth: Client, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failed the first flagging of the families: the revocation is recorded,
    then the families flagged, then dated again, past the whole second of the first
    date, since an access token issued in between was dated into that next second."""
    login = await register_and_login(auth, credential="token")
    revoker = auth.app[app_state.REVOKER]
    original = Revoker._revoke_families_of
    calls = []

    async def fail_first(self: Revoker, user_id: str) -> Any:
        calls.append(user_id)
        if len(calls) == 1:
            raise redis_exceptions.ConnectionError("Redis went away for a moment")
        return await original(self, user_id)

    monkeypatch.setattr(Revoker, "_revoke_families_of", fail_first)
    clock.advance(0.25 - clock.now() % 1)  # a quarter into a second
    first = clock.now()
    summary = await revoker.revoke_everything(login["user"]["id"], reason="test")
    assert len(calls) == 2 and summary.refresh_families == 1
    assert summary.access_tokens_before == int(first) + 1
    valid_after = await auth.app[app_state.REVOCATIONS].user_valid_after(login["user"]["id"])
    assert valid_after == int(first) + 1
    assert (await _refresh(auth, login["refresh_token"])).status == 400


async def test_reuse_of_a_token_from_a_session_login_also_ends_that_session(
    auth: Client, clock: ManualClock
) -> None:
    body = await register_and_login(auth, credential="none")
    response = await _login(auth, body, "both")
    login = await response.json()
    session_id = _session_id(response)
    await _refresh(auth, login["refresh_token"])
    clock.advance(11)
    assert (await _refresh(auth, login["refresh_token"])).status == 400
    assert (await auth.get("/auth/me", headers=_cookie(session_id))).status == 401


async def test_refresh_family_never_outlives_its_login(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(refresh_token_ttl=3600)
    token = (await register_and_login(client, credential="token"))["refresh_token"]
    for _ in range(3):
        clock.advance(1000)
        response = await _refresh(client, token)
        assert response.status == 200
        token = (await response.json())["refresh_token"]
    clock.advance(700)  # 3700 s after the login
    assert (await _refresh(client, token)).status == 400


# --- one revocation plane ----------------------------------------------------------------


async def test_logout_everywhere_revokes_sessions_refresh_and_access_tokens(
    auth: Client, make_replica: ResourceFactory
) -> None:
    body = await register_and_login(auth, credential="none")
    session_response = await _login(auth, body, "session")
    session_id = _session_id(session_response)
    tokens = await (await _login(auth, body, "token")).json()
    replicas = [await make_replica(name) for name in ("r1", "r2", "r3")]
    for replica in replicas:
        assert (await replica.get("/api/me", headers=_bearer(tokens["access_token"]))).status == 200
        assert (await replica.get("/api/me", headers=_cookie(session_id))).status == 200
    before = [_applied(r) for r in replicas]
    response = await auth.post("/auth/logout-all", headers=_bearer(tokens["access_token"]))
    assert response.status == 200
    summary = (await response.json())["revoked"]
    assert summary["sessions"] == 1
    assert summary["refresh_families"] == 1
    for replica, applied in zip(replicas, before, strict=True):
        await _feed_caught_up(replica, applied, count=2)  # the session, the user
        assert (await replica.get("/api/me", headers=_bearer(tokens["access_token"]))).status == 401
        assert (await replica.get("/api/me", headers=_cookie(session_id))).status == 401
    assert (await _refresh(auth, tokens["refresh_token"])).status == 400
    # Logging in again right away works: new tokens are not born revoked.
    fresh = await (await _login(auth, body, "token")).json()
    assert (await replicas[0].get("/api/me", headers=_bearer(fresh["access_token"]))).status == 200


async def test_sessions_list_marks_the_current_one_and_revokes_one(auth: Client) -> None:
    body = await register_and_login(auth, credential="none")
    phone = await _login(auth, body, "session")
    laptop = await auth.post(
        "/auth/login",
        json={"username": body["user"]["username"], "password": body["password"]},
        headers={"User-Agent": "laptop/1.0"},
    )
    phone_id, laptop_id = _session_id(phone), _session_id(laptop)
    listed = await (await auth.get("/auth/sessions", headers=_cookie(laptop_id))).json()
    sessions = listed["sessions"]
    assert len(sessions) == 2
    current = [s for s in sessions if s["current"]]
    assert len(current) == 1
    assert current[0]["user_agent"] == "laptop/1.0"
    assert {"created_at", "last_seen_at", "ip", "user_agent", "id"} <= set(current[0])
    other = next(s for s in sessions if not s["current"])
    revoke = await auth.delete(f"/auth/sessions/{other['id']}", headers=_cookie(laptop_id))
    assert revoke.status == 200
    assert (await auth.get("/auth/me", headers=_cookie(phone_id))).status == 401
    assert (await auth.get("/auth/me", headers=_cookie(laptop_id))).status == 200
    missing = await auth.delete("/auth/sessions/no-such-session", headers=_cookie(laptop_id))
    assert missing.status == 404


async def test_revoking_a_session_revokes_tokens_issued_with_it(auth: Client) -> None:
    body = await register_and_login(auth, credential="none")
    both = await _login(auth, body, "both")
    login = await both.json()
    other = _session_id(await _login(auth, body, "session"))
    await auth.delete(f"/auth/sessions/{login['session']['id']}", headers=_cookie(other))
    assert (await auth.get("/auth/me", headers=_bearer(login["access_token"]))).status == 401
    assert (await _refresh(auth, login["refresh_token"])).status == 400


async def test_password_change_revokes_everything_and_the_old_password(auth: Client) -> None:
    body = await register_and_login(auth, credential="none")
    tokens = await (await _login(auth, body, "token")).json()
    session_id = _session_id(await _login(auth, body, "session"))
    wrong = await auth.post(
        "/auth/password",
        json={"current_password": "not it at all", "new_password": "a new passphrase"},
        headers=_bearer(tokens["access_token"]),
    )
    assert wrong.status == 403  # still signed in: not a 401
    changed = await auth.post(
        "/auth/password",
        json={"current_password": body["password"], "new_password": "a new passphrase"},
        headers=_bearer(tokens["access_token"]),
    )
    assert changed.status == 200
    assert (await auth.get("/auth/me", headers=_bearer(tokens["access_token"]))).status == 401
    assert (await auth.get("/auth/me", headers=_cookie(session_id))).status == 401
    assert (await _refresh(auth, tokens["refresh_token"])).status == 400
    assert (await _login(auth, body, "session")).status == 401
    body["password"] = "a new passphrase"
    assert (await _login(auth, body, "session")).status == 200


async def test_disabling_a_user_from_the_admin_command_revokes_everything(
    auth: Client,
    make_replica: ResourceFactory,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from tessera_auth.cli_users import users_set_disabled

    body = await register_and_login(auth, credential="none")
    tokens = await (await _login(auth, body, "token")).json()
    replica = await make_replica()
    assert (await replica.get("/api/me", headers=_bearer(tokens["access_token"]))).status == 200
    before = _applied(replica)
    args = argparse.Namespace(users_command="disable", username=body["user"]["username"])
    await users_set_disabled(settings, args)
    assert '"disabled": true' in capsys.readouterr().out
    await _feed_caught_up(replica, before)
    # The replica never asks PostgreSQL: only the revocation plane can stop this token.
    assert (await replica.get("/api/me", headers=_bearer(tokens["access_token"]))).status == 401
    assert (await auth.get("/auth/me", headers=_bearer(tokens["access_token"]))).status == 401
    assert (await _refresh(auth, tokens["refresh_token"])).status == 400
    assert (await _login(auth, body, "token")).status == 401


# --- the pushed channel, the caches and the fallback ------------------------------------


async def test_a_logout_reaches_three_replicas_over_the_feed_with_no_round_trip(
    auth: Client, make_replica: ResourceFactory, record_property: Callable[[str, object], None]
) -> None:
    """Measures (and records, never asserts) how long the revocation takes to arrive."""
    import time

    login = await register_and_login(auth, credential="token")
    replicas = [await make_replica(name) for name in ("r1", "r2", "r3")]
    bearer = _bearer(login["access_token"])
    for replica in replicas:
        assert (await replica.get("/api/me", headers=bearer)).status == 200
    before = [_applied(r) for r in replicas]
    started = time.perf_counter()
    assert (await auth.post("/auth/logout", headers=bearer)).status == 200
    for replica, applied in zip(replicas, before, strict=True):
        await _feed_caught_up(replica, applied)
    record_property("revocation_propagation_ms", round((time.perf_counter() - started) * 1e3, 3))
    for replica in replicas:
        assert (await replica.get("/api/me", headers=bearer)).status == 401
        cache = tessera_verify(replica.app).revocations
        assert cache is not None
        assert cache.fallback_checks == 0  # every check, the refusal included, was local


async def test_replicas_check_revocations_locally_while_the_feed_is_up(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica()
    verify = tessera_verify(replica.app)
    assert verify.revocations is not None
    assert verify.revocations.fresh
    for _ in range(5):
        assert (await replica.get("/api/me", headers=_bearer(login["access_token"]))).status == 200
    assert verify.revocations.local_checks == 5
    assert verify.revocations.fallback_checks == 0
    assert verify.token_cache.hits == 4  # one signature check, then the cache


async def test_shared_session_cache_is_invalidated_by_a_revocation(
    auth: Client, make_replica: ResourceFactory
) -> None:
    body = await register_and_login(auth, credential="none")
    session_id = _session_id(await _login(auth, body, "session"))
    replica = await make_replica()
    verify = tessera_verify(replica.app)
    assert verify.session_cache is not None
    for _ in range(3):
        assert (await replica.get("/api/me", headers=_cookie(session_id))).status == 200
    assert verify.session_cache.cache.hits == 2
    before = _applied(replica)
    assert (await auth.post("/auth/logout", headers=_cookie(session_id))).status == 200
    # Two events: the session's link revoked, then the session deleted (which evicts it);
    # the feed may deliver the second after the first is applied.
    await _feed_caught_up(replica, before, count=2)
    assert len(verify.session_cache.cache) == 0
    assert (await replica.get("/api/me", headers=_cookie(session_id))).status == 401


async def test_when_the_feed_drops_replicas_fall_back_to_redis_and_still_refuse_revoked(
    auth: Client, make_replica: ResourceFactory, redis: Redis
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica()
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    assert (await replica.get("/api/me", headers=_bearer(login["access_token"]))).status == 200
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # the feed's connection
    for _ in range(500):
        if not cache.fresh:
            break
        await asyncio.sleep(0.01)
    assert not cache.fresh
    # Revoke while this replica cannot hear it: it must ask Redis.
    await auth.post("/auth/logout", headers=_bearer(login["access_token"]))
    fallback_before = cache.fallback_checks
    response = await replica.get("/api/me", headers=_bearer(login["access_token"]))
    if cache.fresh:  # it reconnected already: then the snapshot carried the revocation
        assert response.status == 401
    else:
        assert response.status == 401
        assert cache.fallback_checks == fallback_before + 1
    assert await cache.wait_fresh(5.0)  # and it catches up by itself


async def test_auth_refuses_with_503_rather_than_trust_stale_state_when_redis_is_down(
    aiohttp_client: Callable[..., Awaitable[Client]],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    settings: Settings,
    clock: ManualClock,
    tmp_path: Any,
) -> None:
    from dataclasses import replace

    from tessera_stack import RedisServer, free_port

    port = free_port()
    server = RedisServer(tmp_path, port=port)
    server.start()
    try:
        app = create_app(replace(settings, redis_url=server.url), clock=clock)
        client = await aiohttp_client(await aiohttp_server(app))
        login = await register_and_login(client, credential="token")
        await asyncio.to_thread(server.stop)
        for _ in range(500):
            if not app[app_state.REVOCATIONS].fresh:
                break
            await asyncio.sleep(0.01)
        response = await client.get("/auth/me", headers=_bearer(login["access_token"]))
        assert response.status == 503
    finally:
        await asyncio.to_thread(server.stop)
        server.remove_data()


# --- introspection (RFC 7662) and revocation (RFC 7009) ------------------------------------


@pytest.fixture
async def oauth_auth(make_auth_client: AuthClientFactory) -> Client:
    return await make_auth_client(introspection_clients=((CLIENT_ID, CLIENT_SECRET.encode()),))


async def test_introspection_requires_client_authentication(oauth_auth: Client) -> None:
    for headers in ({}, _basic(secret="wrong-secret-0000000"), _basic("other-client")):
        response = await oauth_auth.post("/auth/introspect", data={"token": "x"}, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == "invalid_client"
        assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_introspection_describes_jwts_sessions_and_refresh_tokens(oauth_auth: Client) -> None:
    body = await register_and_login(oauth_auth, credential="none")
    both = await _login(oauth_auth, body, "both")
    login = await both.json()
    session_id = _session_id(both)
    expectations = [
        (login["access_token"], "access_token"),
        (session_id, "session"),
        (login["refresh_token"], "refresh_token"),
    ]
    for token, token_type in expectations:
        response = await oauth_auth.post(
            "/auth/introspect", data={"token": token}, headers=_basic()
        )
        assert response.status == 200
        answer = await response.json()
        assert answer["active"] is True
        assert answer["token_type"] == token_type
        assert answer["sub"] == body["user"]["id"]
        assert answer["exp"] > answer["iat"]
    garbage = await oauth_auth.post(
        "/auth/introspect", data={"token": "not-a-token"}, headers=_basic()
    )
    assert await garbage.json() == {"active": False}


@pytest.mark.parametrize("which", ["access_token", "refresh_token", "session"])
async def test_revocation_endpoint_revokes_each_kind_and_introspection_agrees(
    oauth_auth: Client, which: str
) -> None:
    body = await register_and_login(oauth_auth, credential="none")
    both = await _login(oauth_auth, body, "both")
    login = await both.json()
    token = {
        "access_token": login["access_token"],
        "refresh_token": login["refresh_token"],
        "session": _session_id(both),
    }[which]
    response = await oauth_auth.post("/auth/revoke", data={"token": token})
    assert response.status == 200
    answer = await (
        await oauth_auth.post("/auth/introspect", data={"token": token}, headers=_basic())
    ).json()
    assert answer == {"active": False}


async def test_revoking_an_unknown_token_is_still_200(oauth_auth: Client) -> None:
    response = await oauth_auth.post("/auth/revoke", data={"token": "never-issued"})
    assert response.status == 200
    bad_client = await oauth_auth.post(
        "/auth/revoke", data={"token": "x"}, headers=_basic(secret="nope-nope-nope-nope")
    )
    assert bad_client.status == 401


async def test_metadata_advertises_introspection_and_revocation(oauth_auth: Client) -> None:
    document = await (await oauth_auth.get("/.well-known/oauth-authorization-server")).json()
    assert document["introspection_endpoint"].endswith("/auth/introspect")
    assert document["revocation_endpoint"].endswith("/auth/revoke")


# --- the admin command --------------------------------------------------------------------

CLI_HASH_KEY = "cli-test-session-hash-key-0123456789abcdef"


async def _cli(settings: Settings, *args: str, stdin: str = "") -> tuple[int, str, str]:
    import os
    import sys

    env = {
        **os.environ,
        "TESSERA_ENV": "development",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "TESSERA_SESSION_HASH_KEY": CLI_HASH_KEY,
        "TESSERA_KEY_ENCRYPTION_KEY": settings.key_encryption_key.decode(),
        "TESSERA_ISSUER": settings.issuer,
        "TESSERA_AUDIENCE": settings.audience,
        "TESSERA_ARGON2_MEMORY_KIB": str(settings.argon2.memory_kib),
        "TESSERA_ARGON2_TIME_COST": str(settings.argon2.time_cost),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tessera_auth",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_admin_commands_create_list_and_revoke_a_users_sessions(
    make_auth_client: AuthClientFactory, make_replica: ResourceFactory, settings: Settings
) -> None:
    import json

    code, out, err = await _cli(
        settings, "users", "create", "Carol", "--password-stdin", stdin="carol's passphrase\n"
    )
    assert code == 0, err
    assert json.loads(out)["username"] == "carol"
    client = await make_auth_client(session_hash_key=CLI_HASH_KEY.encode())
    replica = await make_replica(session_hash_key=CLI_HASH_KEY.encode())
    body = {"user": {"username": "carol"}, "password": "carol's passphrase"}
    session_id = _session_id(await _login(client, body, "session"))
    tokens = await (await _login(client, body, "token")).json()
    code, out, err = await _cli(settings, "sessions", "list", "carol")
    assert code == 0, err
    listing = json.loads(out)
    assert len(listing["sessions"]) == 1
    assert len(listing["refresh_token_families"]) == 1

    before = _applied(replica)
    code, out, err = await _cli(settings, "sessions", "revoke-all", "carol")
    assert code == 0, err
    assert json.loads(out)["revoked"]["sessions"] == 1
    await _feed_caught_up(replica, before, count=2)
    assert (await replica.get("/api/me", headers=_cookie(session_id))).status == 401
    assert (await replica.get("/api/me", headers=_bearer(tokens["access_token"]))).status == 401
    assert (await _refresh(client, tokens["refresh_token"])).status == 400

    code, _, err = await _cli(settings, "sessions", "revoke", "carol", "no-such-session")
    assert code == 1
    assert "no session" in err
    code, _, err = await _cli(settings, "users", "show", "nobody")
    assert code == 1
    assert "no user" in err
