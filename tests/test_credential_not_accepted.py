"""A bearer token sent to a replica that takes sessions only is told so, with the kinds of
credential that replica does take, instead of a Bearer challenge that invites the same
token again (the default row, shared sessions, is where a new user meets this first).

Real auth service and replicas, on real PostgreSQL and Redis.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tessera_verify.errors import PROBLEM_JSON
from tessera_verify.principal import AuthMethod

from .conftest import ResourceFactory, extensions, log_in_with_everything

Client = TestClient[Any, Any]

SESSIONS_ONLY = [
    (AuthMethod.SHARED_SESSION,),
    (AuthMethod.LOCAL_SESSION,),
    (AuthMethod.SHARED_SESSION, AuthMethod.FORWARD),
]


@pytest.mark.parametrize(
    "methods", SESSIONS_ONLY, ids=["+".join(m.value for m in row) for row in SESSIONS_ONLY]
)
async def test_a_bearer_token_where_only_sessions_are_taken_is_401_naming_what_is(
    auth: Client, make_replica: ResourceFactory, methods: tuple[AuthMethod, ...]
) -> None:
    user = await log_in_with_everything(auth)
    replica = await make_replica(auth_methods=methods)
    for path in ("/api/me", "/api/comments"):
        response = await replica.get(path, headers={"Authorization": f"Bearer {user.token}"})
        text = await response.text()
        assert response.status == 401, text
        assert response.content_type == PROBLEM_JSON
        body = await response.json(content_type=None)
        assert body["error"] == "credential_not_accepted"
        accepted = [method.value for method in methods]
        assert extensions(body) == {"accepted_methods": accepted}
        assert "does not accept bearer tokens" in body["detail"]
        assert all(name in body["detail"] for name in accepted)
        # No Bearer challenge: that would ask for the very token refused.
        assert response.headers.getall("WWW-Authenticate") == ['Cookie realm="tessera"']
        assert response.headers["Cache-Control"] == "no-store"


async def test_a_session_beside_an_unread_bearer_token_still_authenticates(
    auth: Client, make_replica: ResourceFactory
) -> None:
    user = await log_in_with_everything(auth)
    replica = await make_replica(auth_methods=(AuthMethod.SHARED_SESSION,))
    both = {**user.cookie, "Authorization": f"Bearer {user.token}"}
    response = await replica.get("/api/me", headers=both)
    assert response.status == 200, await response.text()
    assert (await response.json())["auth_method"] == "shared_session"


async def test_without_any_credential_the_refusal_is_the_usual_one(
    auth: Client, make_replica: ResourceFactory
) -> None:
    replica = await make_replica(auth_methods=(AuthMethod.SHARED_SESSION,))
    response = await replica.get("/api/me")
    assert response.status == 401
    assert (await response.json(content_type=None))["error"] == "unauthenticated"


async def test_a_replica_that_takes_tokens_takes_the_same_token(
    auth: Client, make_replica: ResourceFactory
) -> None:
    user = await log_in_with_everything(auth)
    replica = await make_replica(auth_methods=(AuthMethod.JWT, AuthMethod.SHARED_SESSION))
    response = await replica.get("/api/me", headers={"Authorization": f"Bearer {user.token}"})
    assert response.status == 200, await response.text()
    assert (await response.json())["auth_method"] == "jwt"
