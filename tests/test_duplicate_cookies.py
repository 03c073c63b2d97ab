"""A session cookie sent twice is refused (400 ``duplicate_cookie``) on every path that reads it.

Browsers send two cookies of one name when they were set for different paths or
domains (a subdomain can plant one). Readers that pick different copies (the
first for authentication, the last for logout) would log out a session other
than the one that authenticated, or keep a planted session alive across login.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tessera_verify.integration import LOCAL_SESSION_COOKIE
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import ResourceFactory, register_and_login

Client = TestClient[Any, Any]


def _twice(name: str, first: str = "a" * 43, second: str = "b" * 43) -> dict[str, str]:
    return {"Cookie": f"{name}={first}; other=1; {name}={second}"}


async def _duplicate_cookie(response: ClientResponse) -> None:
    text = await response.text()
    assert response.status == 400, text
    assert response.content_type == "application/problem+json", text
    body = json.loads(text)
    assert body["error"] == "duplicate_cookie", body
    assert SESSION_COOKIE in body["detail"] or LOCAL_SESSION_COOKIE in body["detail"], body


async def test_auth_refuses_a_repeated_session_cookie_on_me_logout_and_login(auth: Client) -> None:
    login = await register_and_login(auth, credential="none")
    await _duplicate_cookie(await auth.get("/auth/me", headers=_twice(SESSION_COOKIE)))
    await _duplicate_cookie(await auth.get("/auth/forward", headers=_twice(SESSION_COOKIE)))
    await _duplicate_cookie(await auth.post("/auth/logout", headers=_twice(SESSION_COOKIE)))
    credentials = {"username": login["user"]["username"], "password": login["password"]}
    await _duplicate_cookie(
        await auth.post("/auth/login", json=credentials, headers=_twice(SESSION_COOKIE))
    )


async def test_logout_with_the_session_cookie_twice_revokes_nothing(auth: Client) -> None:
    login = await register_and_login(auth, credential="none")
    credentials = {"username": login["user"]["username"], "password": login["password"]}
    response = await auth.post("/auth/login", json=credentials)
    assert response.status == 200
    cookie = response.cookies[SESSION_COOKIE].value
    auth.session.cookie_jar.clear()
    await _duplicate_cookie(
        await auth.post("/auth/logout", headers=_twice(SESSION_COOKIE, "c" * 43, cookie))
    )
    still = await auth.get("/auth/me", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert still.status == 200, await still.text()


@pytest.mark.parametrize("name", [SESSION_COOKIE, LOCAL_SESSION_COOKIE])
async def test_replica_refuses_a_repeated_session_cookie(
    auth: Client, make_replica: ResourceFactory, name: str
) -> None:
    login = await register_and_login(auth, credential="none")
    replica = await make_replica("r1")
    replica.session.cookie_jar.clear()
    response = await replica.get("/api/me", headers=_twice(name))
    await _duplicate_cookie(response)
    assert response.headers["X-Served-By"] == "r1"
    await _duplicate_cookie(await replica.post("/api/logout", headers=_twice(name)))
    credentials = {"username": login["user"]["username"], "password": login["password"]}
    await _duplicate_cookie(
        await replica.post("/api/login", json=credentials, headers=_twice(name))
    )
