"""Resource replicas validating every kind of credential (real auth service, PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tessera_verify.principal import AuthMethod
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import FORWARD_SECRET, ResourceFactory, register_and_login

Client = TestClient[Any, Any]
LOCAL_COOKIE = "__Host-tessera_local_session"
PROPAGATION_BOUND = 1.0  # README: a revocation reaches every verifier within 1 s (healthy)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cookie_value(response: Any, name: str) -> str:
    for header in response.headers.getall("Set-Cookie"):
        if header.startswith(name + "="):
            return str(header.split(";", 1)[0].split("=", 1)[1])
    raise AssertionError(f"no {name} cookie")


async def test_replica_accepts_a_jwt_verified_against_the_auth_jwks(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica("r1")
    response = await replica.get("/api/me", headers=_bearer(login["access_token"]))
    assert response.status == 200
    assert response.headers["X-Served-By"] == "r1"
    assert response.headers["X-Auth-Method"] == "jwt"
    body = await response.json()
    assert body["user_id"] == login["user"]["id"]
    assert body["auth_method"] == "jwt"


async def test_replica_refuses_a_jwt_revoked_at_logout(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica()
    assert (await auth.post("/auth/logout", headers=_bearer(login["access_token"]))).status == 200
    # The replica hears of the logout on the feed: within the propagation bound (README,
    # "Revocation invariants": 1 s when healthy), almost always before the next request;
    # a loaded machine may run this request first (Redis answered the logout's PUBLISH
    # before it wrote the message to the replica's subscription).
    for _ in range(int(PROPAGATION_BOUND / 0.05)):
        response = await replica.get("/api/me", headers=_bearer(login["access_token"]))
        if response.status != 200:
            break
        await asyncio.sleep(0.05)
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.headers["X-Served-By"] == "r1"
    assert response.headers["X-Auth-Method"] == "none"


async def test_every_replica_sees_a_shared_session(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="session")
    assert login["session"]["id"]
    response = await auth.post(
        "/auth/login", json={"username": login["user"]["username"], "password": login["password"]}
    )
    session_id = _cookie_value(response, SESSION_COOKIE)
    for name in ("r1", "r2", "r3"):
        replica = await make_replica(name)
        me = await replica.get("/api/me", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"})
        assert me.status == 200
        assert me.headers["X-Auth-Method"] == "shared_session"
        assert (await me.json())["username"] == login["user"]["username"]


async def test_local_session_lives_only_on_the_replica_that_made_it(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="none")
    r1, r2 = await make_replica("r1"), await make_replica("r2")
    response = await r1.post(
        "/api/login", json={"username": login["user"]["username"], "password": login["password"]}
    )
    assert response.status == 200
    session_id = _cookie_value(response, LOCAL_COOKIE)
    cookie = {"Cookie": f"{LOCAL_COOKIE}={session_id}"}
    me = await r1.get("/api/me", headers=cookie)
    assert me.status == 200
    assert me.headers["X-Auth-Method"] == "local_session"
    other = await r2.get("/api/me", headers=cookie)
    assert other.status == 401
    assert (await other.json())["error"] == "invalid_session"


async def test_local_login_with_a_wrong_password_is_401(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="none")
    replica = await make_replica()
    response = await replica.post(
        "/api/login", json={"username": login["user"]["username"], "password": "wrong password"}
    )
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_credentials"


async def test_local_login_when_auth_is_unreachable_is_503(make_replica: ResourceFactory) -> None:
    replica = await make_replica(auth_url="http://127.0.0.1:9")
    response = await replica.post("/api/login", json={"username": "alice", "password": "x" * 12})
    assert response.status == 503
    assert (await response.json())["error"] == "dependency_unavailable"


async def test_local_login_is_not_offered_without_local_sessions(
    make_replica: ResourceFactory,
) -> None:
    replica = await make_replica(auth_methods=(AuthMethod.JWT,))
    response = await replica.post("/api/login", json={"username": "alice", "password": "x" * 12})
    assert response.status == 404


async def test_forwarded_identity_is_believed_only_with_the_secret_from_a_trusted_proxy(
    make_replica: ResourceFactory,
) -> None:
    replica = await make_replica()
    identity = {"X-Tessera-User-Id": "user-42", "X-Tessera-Username": "alice"}
    good = await replica.get(
        "/api/me", headers={**identity, "X-Tessera-Forward-Secret": FORWARD_SECRET.decode()}
    )
    assert good.status == 200
    assert good.headers["X-Auth-Method"] == "forward"
    assert (await good.json())["username"] == "alice"
    no_secret = await replica.get("/api/me", headers=identity)
    assert no_secret.status == 401
    wrong = await replica.get(
        "/api/me", headers={**identity, "X-Tessera-Forward-Secret": "guess-guess-guess"}
    )
    assert wrong.status == 401
    untrusted = await make_replica("r2", trusted_proxies=(ipaddress.ip_network("10.9.8.7/32"),))
    spoofed = await untrusted.get(
        "/api/me", headers={**identity, "X-Tessera-Forward-Secret": FORWARD_SECRET.decode()}
    )
    assert spoofed.status == 401


async def test_auth_forward_endpoint_answers_identity_headers_or_401(auth: Client) -> None:
    login = await register_and_login(auth, credential="both")
    response = await auth.get("/auth/forward", headers=_bearer(login["access_token"]))
    assert response.status == 200
    assert response.headers["X-Tessera-User-Id"] == login["user"]["id"]
    assert response.headers["X-Tessera-Username"] == login["user"]["username"]
    assert response.headers["X-Tessera-Auth-Method"] == "jwt"
    assert (await auth.get("/auth/forward")).status == 401


async def test_comments_are_stored_and_listed_with_the_serving_replica(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="token")
    r1, r2 = await make_replica("r1"), await make_replica("r2")
    created = await r1.post(
        "/api/comments", json={"body": "  hello from r1  "}, headers=_bearer(login["access_token"])
    )
    assert created.status == 201
    comment = (await created.json())["comment"]
    assert comment["body"] == "hello from r1"
    assert comment["served_by"] == "r1"
    listed = await r2.get("/api/comments", headers=_bearer(login["access_token"]))
    assert listed.status == 200
    assert [c["body"] for c in (await listed.json())["comments"]] == ["hello from r1"]


@pytest.mark.parametrize(
    ("body", "status"),
    [({"body": ""}, 400), ({"body": "   "}, 400), ({"body": "x" * 2001}, 400), ({}, 400)],
)
async def test_bad_comments_are_4xx_and_nothing_is_stored(
    auth: Client, make_replica: ResourceFactory, body: dict[str, Any], status: int
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica()
    response = await replica.post(
        "/api/comments", json=body, headers=_bearer(login["access_token"])
    )
    assert response.status == status
    listed = await replica.get("/api/comments", headers=_bearer(login["access_token"]))
    assert (await listed.json())["comments"] == []


async def test_cookie_authenticated_cross_site_post_is_refused(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="none")
    replica = await make_replica()
    response = await replica.post(
        "/api/login", json={"username": login["user"]["username"], "password": login["password"]}
    )
    cookie = {"Cookie": f"{LOCAL_COOKIE}={_cookie_value(response, LOCAL_COOKIE)}"}
    cross = await replica.post(
        "/api/comments",
        json={"body": "csrf"},
        headers={**cookie, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert cross.status == 403
    same = await replica.post(
        "/api/comments", json={"body": "mine"}, headers={**cookie, "Sec-Fetch-Site": "same-origin"}
    )
    assert same.status == 201


async def test_anonymous_requests_are_401_and_every_response_names_the_replica(
    make_replica: ResourceFactory,
) -> None:
    replica = await make_replica("r7")
    for path in ("/api/me", "/api/comments"):
        replica.session.cookie_jar.clear()
        response = await replica.get(path)
        assert response.status == 401
        assert response.headers["X-Served-By"] == "r7"
        assert "tessera_route=r7" in response.headers["Set-Cookie"]
    replica.session.cookie_jar.clear()
    routed = await replica.get("/api/me", headers={"Cookie": "tessera_route=r7"})
    assert "Set-Cookie" not in routed.headers


async def test_replica_readiness_reports_its_dependencies(make_replica: ResourceFactory) -> None:
    replica = await make_replica()
    response = await replica.get("/readyz")
    assert response.status == 200
    assert (await response.json())["checks"] == {"redis": "ok", "postgresql": "ok"}
