"""A body in a charset tessera does not read is refused (415, JSON error), never a 500.

JSON is UTF-8 (RFC 8259 §8.1) and tessera's forms are too; a ``charset``
parameter naming anything else, or nothing Python knows, used to reach the form
parser's codec lookup and end in a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from .conftest import ResourceFactory

Client = TestClient[Any, Any]
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
BAD_CHARSETS = ("no-such-charset", "utf-16", "latin-1", "x" * 300, "utf-9")


async def _refused(response: ClientResponse) -> None:
    text = await response.text()
    assert response.status == 415, text
    assert response.content_type == "application/problem+json", text
    assert json.loads(text)["error"] == "unsupported_media_type"


def _headers(media_type: str, charset: str) -> dict[str, str]:
    return {"Content-Type": f"{media_type}; charset={charset}"}


@pytest.mark.parametrize("charset", BAD_CHARSETS)
async def test_a_form_in_a_charset_we_do_not_read_is_415_on_every_form_endpoint(
    auth_client: Client, charset: str
) -> None:
    response = await auth_client.post(
        "/auth/logout", data=b"refresh_token=x", headers=_headers(FORM, charset)
    )
    await _refused(response)
    response = await auth_client.post(
        "/auth/token",
        data=b"grant_type=refresh_token&refresh_token=x",
        headers=_headers(FORM, charset),
    )
    # The token endpoint answers in OAuth's shape: RFC 6749 §5.2's invalid_request.
    text = await response.text()
    assert response.status == 415, text
    assert response.content_type == "application/json", text
    assert json.loads(text)["error"] == "invalid_request"


@pytest.mark.parametrize("charset", BAD_CHARSETS)
async def test_json_in_a_charset_we_do_not_read_is_415(
    auth: Client, make_replica: ResourceFactory, charset: str
) -> None:
    body = b'{"username": "alice", "password": "correct horse battery staple"}'
    await _refused(await auth.post("/auth/login", data=body, headers=_headers(JSON, charset)))
    replica = await make_replica()
    await _refused(await replica.post("/api/login", data=body, headers=_headers(JSON, charset)))


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", '"utf-8"', "utf8"])
async def test_utf8_spelt_any_usual_way_is_read(auth_client: Client, charset: str) -> None:
    response = await auth_client.post(
        "/auth/token",
        data=b"grant_type=refresh_token&refresh_token=x",
        headers=_headers(FORM, charset),
    )
    text = await response.text()
    assert response.status == 400, text
    assert json.loads(text)["error"] == "invalid_grant", text
