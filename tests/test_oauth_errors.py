"""The OAuth endpoints (token, introspection, revocation) answer errors in RFC 6749
§5.2's shape, with the RFCs' codes, and refuse a parameter sent twice (§3.2).

Everything else tessera serves answers RFC 9457 problem details; these three are
what OAuth clients talk to, and OAuth client libraries read ``error`` and
``error_description`` from an ``application/json`` body. Against the real auth
app on real PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tessera_verify.clock import ManualClock
from tessera_verify.errors import (
    BadRequest,
    InvalidRequest,
    MalformedJSON,
    NotFound,
    PayloadTooLarge,
    ServerBusy,
    ServiceUnavailable,
    TesseraError,
    TooManyAttempts,
    UnsupportedMediaType,
)

from .conftest import AuthClientFactory, register_and_login

Client = TestClient[Any, Any]
FORM = "application/x-www-form-urlencoded"
CLIENT_ID, CLIENT_SECRET = "resource-api", "introspection-secret-0123"
OAUTH_PATHS = ("/auth/token", "/auth/introspect", "/auth/revoke")


def _basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture
async def oauth(make_auth_client: AuthClientFactory) -> Client:
    return await make_auth_client(introspection_clients=((CLIENT_ID, CLIENT_SECRET.encode()),))


async def _oauth_error(response: ClientResponse, status: int, code: str) -> str:
    """Assert ``response`` is RFC 6749 §5.2's error ``code``; return its description."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    body = json.loads(text)
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == code, body
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    description: str = body["error_description"]
    assert description
    return description


async def _post(
    client: Client, path: str, raw: bytes | str, content_type: str = FORM, **headers: str
) -> ClientResponse:
    data = raw.encode() if isinstance(raw, str) else raw
    if path == "/auth/introspect":
        headers = {**_basic(), **headers}
    return await client.post(path, data=data, headers={"Content-Type": content_type, **headers})


# --- the token endpoint's own errors ------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
@pytest.mark.parametrize(
    ("body", "status", "code", "names"),
    [
        ({"refresh_token": "x"}, 400, "invalid_request", "grant_type"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request", "refresh_token"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", "refresh_token"),
        ({"grant_type": "refresh_token", "refresh_token": "A" * 65}, 400, "invalid_grant", ""),
    ],
    ids=["no-grant-type", "no-refresh-token", "password-grant", "unknown-refresh-token"],
)
async def test_the_token_endpoint_answers_rfc6749_errors(
    oauth: Client, body: dict[str, str], status: int, code: str, names: str, as_json: bool
) -> None:
    if as_json:
        response = await oauth.post("/auth/token", json=body)
    else:
        response = await oauth.post("/auth/token", data=body)
    description = await _oauth_error(response, status, code)
    assert names in description


@pytest.mark.parametrize("value", [7, None, ["x"], {"a": 1}, "x" * 300])
async def test_a_refresh_token_that_is_not_a_short_string_is_invalid_request(
    oauth: Client, value: Any
) -> None:
    body = {"grant_type": "refresh_token", "refresh_token": value}
    response = await oauth.post("/auth/token", json=body)
    assert "'refresh_token'" in await _oauth_error(response, 400, "invalid_request")


async def test_a_refresh_token_used_twice_is_invalid_grant_in_rfc6749_shape(
    oauth: Client, clock: ManualClock
) -> None:
    login = await register_and_login(oauth, credential="token")
    grant = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    assert (await oauth.post("/auth/token", data=grant)).status == 200
    clock.advance(11)  # past the grace window for concurrent refreshes
    description = await _oauth_error(
        await oauth.post("/auth/token", data=grant), 400, "invalid_grant"
    )
    assert "reuse" in description


# --- client authentication ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _basic(secret="wrong-secret-0000000"),
        _basic("other-client"),
        {"Authorization": "Basic !"},
    ],
    ids=["none", "wrong-secret", "unknown-client", "not-base64"],
)
async def test_introspection_without_good_client_credentials_is_401_invalid_client(
    oauth: Client, headers: dict[str, str]
) -> None:
    response = await oauth.post("/auth/introspect", data={"token": "x"}, headers=headers)
    await _oauth_error(response, 401, "invalid_client")
    assert response.headers.getall("WWW-Authenticate") == ['Basic realm="tessera"']


async def test_revocation_with_bad_client_credentials_is_401_invalid_client(oauth: Client) -> None:
    response = await oauth.post("/auth/revoke", data={"token": "x"}, headers=_basic(secret="nope"))
    await _oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="tessera"'


# --- bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", OAUTH_PATHS)
@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        ("token=x", "text/plain", 415),
        ("token=x", "multipart/form-data; boundary=x", 415),
        ("token=x", f"{FORM}; charset=latin-1", 415),
        ('{"token": ', "application/json", 400),
        ("[]", "application/json", 400),
        ('{"token": 7}', "application/json", 400),
        ("token=" + "x" * 5000, FORM, 413),
    ],
    ids=["text", "multipart", "latin-1", "bad-json", "json-array", "token-not-a-string", "huge"],
)
async def test_a_body_that_is_not_a_form_or_a_json_object_is_invalid_request(
    oauth: Client, path: str, raw: str, content_type: str, status: int
) -> None:
    await _oauth_error(await _post(oauth, path, raw, content_type), status, "invalid_request")


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/auth/token", "grant_type=refresh_token&grant_type=refresh_token&refresh_token=x"),
        ("/auth/token", "grant_type=refresh_token&refresh_token=a&refresh_token=b"),
        ("/auth/token", "grant_type=refresh_token&refresh_token=x&client_id=a&client_id=a"),
        ("/auth/introspect", "token=a&token=b"),
        ("/auth/introspect", "token=a&token_type_hint=session&token_type_hint=session"),
        ("/auth/revoke", "token=a&token=a"),
        ("/auth/revoke", "token=&token=a"),
    ],
)
async def test_a_parameter_sent_twice_is_invalid_request(
    oauth: Client, path: str, raw: str
) -> None:
    """RFC 6749 §3.2: parameters MUST NOT be included more than once."""
    description = await _oauth_error(await _post(oauth, path, raw), 400, "invalid_request")
    assert "more than once" in description


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/auth/token", '{"grant_type": "refresh_token", "grant_type": "password"}'),
        ("/auth/introspect", '{"token": "a", "token": "b"}'),
        ("/auth/revoke", '{"token": "a", "token": "a"}'),
    ],
)
async def test_a_json_member_given_twice_is_invalid_request(
    oauth: Client, path: str, raw: str
) -> None:
    response = await _post(oauth, path, raw, "application/json")
    assert "more than once" in await _oauth_error(response, 400, "invalid_request")


async def test_a_revoked_token_stays_revoked_whatever_the_parameters_around_it(
    oauth: Client,
) -> None:
    """Unknown form parameters are ignored and empty ones are as if omitted (§3.2), so a
    client sending ``client_id`` or an empty hint is served; a typo in JSON is not."""
    login = await register_and_login(oauth, credential="token")
    token = login["refresh_token"]
    raw = f"token={token}&client_id=some-app&token_type_hint="
    assert (await _post(oauth, "/auth/revoke", raw)).status == 200
    answer = await _post(oauth, "/auth/introspect", f"token={token}&resource=x")
    assert await answer.json() == {"active": False}
    empty = await _post(oauth, "/auth/revoke", "token=")
    assert "'token' is required" in await _oauth_error(empty, 400, "invalid_request")
    typo = await oauth.post("/auth/revoke", json={"tokn": token})
    assert "'tokn'" in await _oauth_error(typo, 400, "invalid_request")


async def test_the_token_endpoint_ignores_a_client_id_in_a_form(oauth: Client) -> None:
    login = await register_and_login(oauth, credential="token")
    grant = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    response = await oauth.post("/auth/token", data={**grant, "client_id": "some-app"})
    assert response.status == 200, await response.text()


# --- where the RFCs have a code, it is used -------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest(), "invalid_request"),
        (InvalidRequest(), "invalid_request"),
        (MalformedJSON(), "invalid_request"),
        (UnsupportedMediaType(), "invalid_request"),
        (PayloadTooLarge(), "invalid_request"),
        (NotFound(), "invalid_request"),
        (ServiceUnavailable(), "temporarily_unavailable"),
        (ServerBusy(), "temporarily_unavailable"),
        (TesseraError(), "server_error"),
        (TooManyAttempts(3), "too_many_attempts"),  # no OAuth code: tessera's own
    ],
)
def test_tessera_errors_take_the_oauth_code_that_applies(error: TesseraError, code: str) -> None:
    assert error.oauth_body() == {"error": code, "error_description": error.message}


async def test_other_endpoints_still_answer_problem_details(oauth: Client) -> None:
    response = await oauth.post(
        "/auth/logout", data="refresh_token=a&refresh_token=b", headers={"Content-Type": FORM}
    )
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body["error"] == "invalid_request" and body["field"] == "refresh_token"
