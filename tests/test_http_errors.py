"""Every error is JSON with a stable ``error`` code, and bad input never earns a 5xx.

Against the real auth app on real PostgreSQL and Redis: malformed and odd
bodies, wrong content types, oversized bodies, unknown routes, missing
credentials, and registration failures that must leave nothing half-written.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tessera_auth.settings import Settings
from tests.conftest import extensions

from .conftest import AuthClientFactory, register_and_login

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"
JSON_HEADERS = {"Content-Type": "application/json"}


async def _error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert ``response`` is the JSON error ``code`` with ``status``; return its body."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/problem+json", text
    body: dict[str, Any] = json.loads(text)
    assert body["error"] == code, body
    assert body["status"] == status and body["type"] == "about:blank", body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def _post_raw(client: Client, path: str, raw: bytes | str, **headers: str) -> ClientResponse:
    data = raw.encode() if isinstance(raw, str) else raw
    return await client.post(path, data=data, headers={**JSON_HEADERS, **headers})


async def _register(client: Client, username: str, password: str = PASSWORD) -> ClientResponse:
    return await client.post("/auth/register", json={"username": username, "password": password})


async def _user_count(settings: Settings) -> int:
    connection = await asyncpg.connect(settings.database_url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM users")
    finally:
        await connection.close()
    return count


# --- bodies that are not JSON objects ------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ['{"username": "alice",', "{username: 'alice'}", "not json at all", "", b"\xff\xfe{}"],
    ids=["truncated", "single-quoted", "prose", "empty", "not-utf8"],
)
async def test_malformed_json_is_400_malformed_json(auth_client: Client, raw: str | bytes) -> None:
    response = await _post_raw(auth_client, "/auth/login", raw)
    await _error(response, 400, "malformed_json")


@pytest.mark.parametrize("raw", ["[]", '["alice", "pw"]', "42", '"alice"', "null", "true"])
async def test_a_json_value_that_is_not_an_object_is_400_invalid_request(
    auth_client: Client, raw: str
) -> None:
    response = await _post_raw(auth_client, "/auth/register", raw)
    await _error(response, 400, "invalid_request")


async def test_json_nested_deeper_than_the_parser_recursion_limit_is_400_not_500(
    auth_client: Client,
) -> None:
    raw = "[" * 2000 + "]" * 2000  # fits in max_body_bytes, far deeper than Python recurses
    response = await _post_raw(auth_client, "/auth/login", raw)
    await _error(response, 400, "malformed_json")


async def test_an_integer_longer_than_python_converts_is_400_not_500(
    make_auth_client: AuthClientFactory,
) -> None:
    client = await make_auth_client(max_body_bytes=16 * 1024)  # the production default
    raw = '{"username": ' + "9" * 5000 + ', "password": "x"}'
    response = await _post_raw(client, "/auth/login", raw)
    await _error(response, 400, "malformed_json")


# --- fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/auth/register", {"password": PASSWORD}, "username"),
        ("/auth/register", {"username": "alice"}, "password"),
        ("/auth/register", {"username": 42, "password": PASSWORD}, "username"),
        ("/auth/register", {"username": "alice", "password": ["x"]}, "password"),
        ("/auth/login", {"username": None, "password": PASSWORD}, "username"),
        ("/auth/login", {"username": "alice", "password": {"a": 1}}, "password"),
        ("/auth/login", {"username": "alice", "password": PASSWORD, "credential": 1}, "credential"),
        (
            "/auth/login",
            {"username": "alice", "password": PASSWORD, "credential": "cookie"},
            "credential",
        ),
        ("/auth/logout", {"refresh_token": True}, "refresh_token"),
        # The token endpoint's are in OAuth's shape (tests/test_oauth_errors.py).
    ],
)
async def test_missing_or_wrong_typed_field_is_400_invalid_request_naming_the_field(
    auth_client: Client, path: str, body: dict[str, Any], field: str
) -> None:
    response = await auth_client.post(path, json=body)
    error = await _error(response, 400, "invalid_request")
    assert error["field"] == field
    assert field in error["detail"]


async def test_a_string_with_a_lone_surrogate_is_400_not_500(auth_client: Client) -> None:
    # JSON can spell a lone surrogate ("\ud800"); it is not encodable as UTF-8.
    for path in ("/auth/register", "/auth/login"):
        raw = '{"username": "alice", "password": "abcdefgh\\ud800"}'
        error = await _error(await _post_raw(auth_client, path, raw), 400, "invalid_request")
        assert error["field"] == "password"


# --- content type and size --------------------------------------------------------------


async def test_text_plain_body_is_415(auth_client: Client) -> None:
    response = await auth_client.post(
        "/auth/login",
        data=json.dumps({"username": "alice", "password": PASSWORD}),
        headers={"Content-Type": "text/plain"},
    )
    await _error(response, 415, "unsupported_media_type")


async def test_body_without_content_type_is_415(auth_client: Client) -> None:
    response = await auth_client.post(
        "/auth/register",
        data=json.dumps({"username": "alice", "password": PASSWORD}).encode(),
        skip_auto_headers={"Content-Type"},
    )
    assert "Content-Type" not in response.request_info.headers
    await _error(response, 415, "unsupported_media_type")


async def test_form_body_is_415_where_only_json_is_accepted(auth_client: Client) -> None:
    response = await auth_client.post("/auth/login", data={"username": "a", "password": "b"})
    await _error(response, 415, "unsupported_media_type")


async def test_body_over_max_body_bytes_with_content_length_is_413(
    auth_client: Client, settings: Settings
) -> None:
    raw = json.dumps({"username": "alice", "password": "x" * settings.process.max_body_bytes})
    response = await _post_raw(auth_client, "/auth/login", raw)
    assert response.request_info.headers["Content-Length"] == str(len(raw))
    await _error(response, 413, "payload_too_large")


async def test_body_over_max_body_bytes_with_chunked_encoding_is_413(
    auth_client: Client, settings: Settings
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "alice", "password": "'
        for _ in range(4):
            yield b"x" * (settings.process.max_body_bytes // 2)
        yield b'"}'

    response = await auth_client.post("/auth/login", data=chunks(), headers=JSON_HEADERS)
    assert response.request_info.headers["Transfer-Encoding"] == "chunked"
    await _error(response, 413, "payload_too_large")


async def test_body_just_under_max_body_bytes_is_read(
    auth_client: Client, settings: Settings
) -> None:
    # Padded with whitespace: an unknown member would be refused (test_unknown_fields.py).
    prefix = '{"username": "alice", "password": "wrong password"'
    raw = prefix + " " * (settings.process.max_body_bytes - len(prefix) - 1) + "}"
    assert len(raw) == settings.process.max_body_bytes
    await _error(await _post_raw(auth_client, "/auth/login", raw), 401, "invalid_credentials")


# --- routing ----------------------------------------------------------------------------


async def test_unknown_path_is_404_json(auth_client: Client) -> None:
    await _error(await auth_client.get("/auth/nope"), 404, "not_found")
    await _error(await auth_client.post("/no/such/thing", json={}), 404, "not_found")


async def test_wrong_method_is_405_json_with_allow_header(auth_client: Client) -> None:
    response = await auth_client.get("/auth/login")
    await _error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    response = await auth_client.delete("/auth/me")
    await _error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


# --- 401 --------------------------------------------------------------------------------


async def test_me_without_credentials_is_401_with_a_bearer_challenge(auth_client: Client) -> None:
    response = await auth_client.get("/auth/me")
    await _error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tessera"'
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 5000 + ".y.z"],
    ids=["word", "three-dots", "alg-none", "huge"],
)
async def test_me_with_a_garbage_bearer_token_is_401_invalid_token(
    auth_client: Client, token: str
) -> None:
    response = await auth_client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    await _error(response, 401, "invalid_token")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tessera"')
    assert 'error="invalid_token"' in challenge


async def test_unknown_user_and_wrong_password_get_byte_identical_401s(
    auth_client: Client,
) -> None:
    await register_and_login(auth_client, username="alice")
    wrong_password = await auth_client.post(
        "/auth/login", json={"username": "alice", "password": "not the password"}
    )
    unknown_user = await auth_client.post(
        "/auth/login", json={"username": "mallory", "password": "not the password"}
    )
    assert wrong_password.status == unknown_user.status == 401
    assert await wrong_password.read() == await unknown_user.read()
    assert wrong_password.headers["WWW-Authenticate"] == unknown_user.headers["WWW-Authenticate"]
    await _error(unknown_user, 401, "invalid_credentials")


async def test_a_username_that_could_never_register_gets_the_same_401_at_login(
    auth_client: Client,
) -> None:
    invalid = await auth_client.post("/auth/login", json={"username": "!", "password": "x" * 8})
    unknown = await auth_client.post("/auth/login", json={"username": "bob", "password": "x" * 8})
    assert await invalid.read() == await unknown.read()
    await _error(invalid, 401, "invalid_credentials")


# --- registration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    ["", "ab", "a b", "bad!name", "alice@example.com", "-alice", ".alice", "x" * 65, "al\x00ice"],
    ids=["empty", "short", "space", "bang", "email", "dash", "dot", "long", "nul"],
)
async def test_register_with_an_invalid_username_is_400_naming_username(
    auth_client: Client, settings: Settings, username: str
) -> None:
    error = await _error(await _register(auth_client, username), 400, "invalid_request")
    assert error["field"] == "username"
    assert await _user_count(settings) == 0


async def test_register_with_a_short_password_is_400_and_writes_no_user(
    auth_client: Client, settings: Settings
) -> None:
    error = await _error(await _register(auth_client, "alice", "short"), 400, "weak_password")
    assert extensions(error) == {"field": "password", "rule": "too_short", "min_length": 15}
    assert await _user_count(settings) == 0
    # The name is still free: nothing half-written blocks a correct retry.
    assert (await _register(auth_client, "alice")).status == 201
    assert await _user_count(settings) == 1


@pytest.mark.parametrize("again", ["alice", "ALICE", "Alice", "ａｌｉｃｅ", " alice "])
async def test_a_username_registered_again_in_any_case_or_width_is_409(
    auth_client: Client, settings: Settings, again: str
) -> None:
    assert (await _register(auth_client, "alice")).status == 201
    await _error(await _register(auth_client, again, "another password"), 409, "username_taken")
    assert await _user_count(settings) == 1


async def test_registration_disabled_is_403_and_writes_no_user(
    make_auth_client: AuthClientFactory, settings: Settings
) -> None:
    client = await make_auth_client(registration_enabled=False)
    await _error(await _register(client, "alice"), 403, "registration_disabled")
    assert await _user_count(settings) == 0


# --- fuzz -------------------------------------------------------------------------------

_ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    10**300,
    1e308,
    -0.0,
    "",
    " ",
    "\x00",
    "é" * 300,
    "𝔞𝔩𝔦𝔠𝔢",
    "\u202e" + "ecila",
    "x" * 2000,
    "abcdefgh\ud800",
    [],
    ["alice"],
    {},
    {"$ne": None},
    {"nested": {"deeper": [1, {"x": None}]}},
]
#: Each POST endpoint and a plausible body of the fields it reads (anything else in a
#: JSON body is refused before a value is looked at).
_PLAUSIBLE: dict[str, dict[str, Any]] = {
    "/auth/register": {"username": "alice", "password": PASSWORD},
    "/auth/login": {"username": "alice", "password": PASSWORD, "credential": "session"},
    "/auth/token": {"grant_type": "refresh_token", "refresh_token": "A" * 65},
    "/auth/logout": {"refresh_token": "A" * 65},
}


def _odd_bodies(plausible: dict[str, Any]) -> list[str]:
    bodies: list[str] = []
    for field in plausible:
        for value in _ODD_VALUES:
            bodies.append(json.dumps({**plausible, field: value}))
    bodies += [
        "{}",
        '{"username": NaN, "password": Infinity}',
        '{"username": 1e999}',
        '{"username": "alice", "username": {"dup": 1}}',
        '{"password": "' + "\\u0000" * 10 + '"}',
        '{"refresh_token": "' + "A" * 65 + '", "grant_type": "refresh_token"}',
        '{"a": ' * 500 + "1" + "}" * 500,
        '{"username": ' + "[" * 1500 + "]" * 1500 + "}",
        '{"username": "\\ud800alice", "password": "\\udfff\\ud800xxxxxxxx"}',
        json.dumps({"username": "alice", "password": PASSWORD, "extra": list(range(200))}),
    ]
    return bodies


async def test_odd_bodies_on_every_post_endpoint_get_a_json_answer_below_500(
    auth_client: Client, settings: Settings
) -> None:
    await register_and_login(auth_client, username="alice")
    for path, plausible in _PLAUSIBLE.items():
        bodies = _odd_bodies(plausible)
        assert len(bodies) >= 30
        for raw in bodies:
            response = await _post_raw(auth_client, path, raw)
            text = await response.text()
            assert response.status < 500, (path, raw[:200], text)
            assert response.content_type.endswith("json"), (path, raw[:200], text)
            body = json.loads(text)
            if response.status >= 400:
                assert isinstance(body["error"], str), body
    # "alice" was already taken and every other register body was invalid.
    assert await _user_count(settings) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"grant_type=refresh_token",
        b"grant_type=refresh_token&refresh_token=%FF%FE",
        b"grant_type=refresh_token&refresh_token=%ZZ",
        b"refresh_token=" + b"A" * 65,
        b"grant_type=password&username=alice&password=x",
        b"grant_type=refresh_token&grant_type=refresh_token&refresh_token=a&refresh_token=b",
        b"\xff\xfe\x00=\x00",
        b"=&=&&==",
    ],
)
async def test_odd_form_bodies_on_the_form_endpoints_get_a_json_answer_below_500(
    auth_client: Client, raw: bytes
) -> None:
    for path in ("/auth/token", "/auth/logout"):
        response = await _post_raw(
            auth_client, path, raw, **{"Content-Type": "application/x-www-form-urlencoded"}
        )
        text = await response.text()
        assert response.status < 500, (path, text)
        assert response.content_type.endswith("json"), (path, text)
