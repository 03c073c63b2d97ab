"""A JSON body member that the endpoint does not read is refused: 400 ``invalid_request``
naming it, on every JSON endpoint of the auth service and the replicas.

A typo in a security-relevant field must not pass silently: ``{"credentail": "token"}``
would otherwise log in for the default credential, and the caller would never know
its choice went unread. Each endpoint is sent the body it reads plus one misspelt
member, from a caller who could otherwise have gone ahead, and must refuse it and
do nothing. Real auth service and replica, on real PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tessera_verify.errors import PROBLEM_JSON

from .conftest import ResourceFactory, register_and_login

Client = TestClient[Any, Any]
CLIENT_ID, CLIENT_SECRET = "resource-api", "introspection-secret-0123"
NEW_PASSWORD = "a new password that is long enough"


@dataclass(frozen=True)
class Case:
    """One JSON endpoint: where it is, and a body it would act on but for one misspelt
    member (``{username}``, ``{password}`` and ``{refresh_token}`` are the caller's)."""

    service: str  # "auth" or "replica"
    path: str
    body: dict[str, str]
    typo: str
    oauth: bool = False  # answers in RFC 6749 §5.2's shape, not problem details


CASES = [
    Case("auth", "/auth/register", {"username": "newcomer", "pasword": NEW_PASSWORD}, "pasword"),
    Case(
        "auth",
        "/auth/login",
        {"username": "{username}", "password": "{password}", "credentail": "token"},
        "credentail",
    ),
    Case(
        "auth",
        "/auth/password-check",
        {"user_name": "{username}", "password": "{password}"},
        "user_name",
    ),
    Case("auth", "/auth/logout", {"refresh-token": "{refresh_token}"}, "refresh-token"),
    Case(
        "auth",
        "/auth/password",
        {"current_pasword": "{password}", "new_password": NEW_PASSWORD},
        "current_pasword",
    ),
    Case(
        "auth",
        "/auth/token",
        {"grant_type": "refresh_token", "refreshtoken": "{refresh_token}"},
        "refreshtoken",
        oauth=True,
    ),
    Case("auth", "/auth/introspect", {"tokn": "{refresh_token}"}, "tokn", oauth=True),
    Case(
        "auth",
        "/auth/revoke",
        {"token": "{refresh_token}", "token_type": "refresh_token"},
        "token_type",
        oauth=True,
    ),
    Case("replica", "/api/comments", {"text": "hello"}, "text"),
    Case("replica", "/api/login", {"username": "{username}", "pasword": "{password}"}, "pasword"),
]


def _basic() -> dict[str, str]:
    encoded = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture
async def auth(make_auth_client: Any) -> Client:
    client: Client = await make_auth_client(
        introspection_clients=((CLIENT_ID, CLIENT_SECRET.encode()),)
    )
    return client


@pytest.mark.parametrize("case", CASES, ids=[case.path for case in CASES])
async def test_an_unknown_json_member_is_400_invalid_request_naming_it(
    case: Case, auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="both")
    caller = {
        "username": login["user"]["username"],
        "password": login["password"],
        "refresh_token": login["refresh_token"],
    }
    body = {name: value.format(**caller) for name, value in case.body.items()}
    bearer = {"Authorization": f"Bearer {login['access_token']}"}
    headers = {"/auth/introspect": _basic(), "/auth/revoke": {}}.get(case.path, bearer)
    client = auth if case.service == "auth" else await make_replica()

    response = await client.post(case.path, json=body, headers=headers)
    text = await response.text()
    assert response.status == 400, text
    answer = json.loads(text)
    assert answer["error"] == "invalid_request", answer
    if case.oauth:
        assert response.content_type == "application/json"
        assert f"'{case.typo}'" in answer["error_description"]
    else:
        assert response.content_type == PROBLEM_JSON
        assert answer["field"] == case.typo
        assert f"'{case.typo}'" in answer["detail"]
    if case.service == "auth":
        assert "Set-Cookie" not in response.headers

    if case.path == "/auth/logout":
        # A logout never fails open because of its body: the bearer token it came
        # with is revoked all the same (the refresh token it could not read is not).
        assert (await auth.get("/auth/me", headers=bearer)).status == 401
    else:
        # Nothing happened: nothing revoked or changed, nothing issued, nobody registered.
        assert (await auth.get("/auth/me", headers=bearer)).status == 200
    refreshed = await auth.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    )
    assert refreshed.status == 200, await refreshed.text()
    if case.path == "/auth/register":
        again = await auth.post(
            "/auth/register", json={"username": "newcomer", "password": NEW_PASSWORD}
        )
        assert again.status == 201, await again.text()  # the name was still free


#: A field each endpoint reads.
READ = [
    ("auth", "/auth/register", "username"),
    ("auth", "/auth/login", "password"),
    ("auth", "/auth/password-check", "username"),
    ("auth", "/auth/logout", "refresh_token"),
    ("auth", "/auth/password", "new_password"),
    ("auth", "/auth/token", "grant_type"),
    ("auth", "/auth/introspect", "token"),
    ("auth", "/auth/revoke", "token"),
    ("replica", "/api/comments", "body"),
    ("replica", "/api/login", "username"),
]


@pytest.mark.parametrize(("service", "path", "name"), READ, ids=[path for _, path, _ in READ])
async def test_a_member_given_twice_is_400_invalid_request(
    service: str, path: str, name: str, auth: Client, make_replica: ResourceFactory
) -> None:
    """Which copy a parser keeps is its own choice (RFC 8259 §4): neither is guessed."""
    assert {path for _, path, _ in READ} == {case.path for case in CASES}
    client = auth if service == "auth" else await make_replica()
    raw = "{" + f'"{name}": "a", "{name}": "b"' + "}"
    headers = {"Content-Type": "application/json"}
    if path == "/auth/introspect":
        headers.update(_basic())
    if path in ("/auth/password", "/api/comments"):
        login = await register_and_login(auth, credential="token")
        headers["Authorization"] = f"Bearer {login['access_token']}"
    response = await client.post(path, data=raw.encode(), headers=headers)
    text = await response.text()
    assert response.status == 400, text
    assert json.loads(text)["error"] == "invalid_request"
    assert f"'{name}' is given more than once" in text
