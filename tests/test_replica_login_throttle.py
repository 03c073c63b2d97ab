"""A replica's in-process login passes the auth service's throttling on as it is.

The auth service answers 429 ``too_many_attempts`` with ``Retry-After`` when an
account or address has failed too often; the replica, which only asks it,
must tell the client the same (429, same wait), not 503 "try again" at once.
The auth service here is a stand-in on a real loopback socket that answers
exactly what the real one does when it throttles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tessera_verify.errors import problem

from .conftest import ResourceFactory

ServerFactory = Callable[..., Awaitable[TestServer]]
CREDENTIALS = {"username": "alice", "password": "correct horse battery staple"}


async def _throttling_auth(aiohttp_server: ServerFactory, headers: dict[str, str]) -> str:
    async def password_check(request: web.Request) -> web.Response:
        return web.json_response(
            problem(
                429,
                "too_many_attempts",
                "too many failed attempts; try again later",
                retry_after=37,
            ),
            status=429,
            headers=headers,
        )

    app = web.Application()
    app.router.add_post("/auth/password-check", password_check)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"Retry-After": "37"}, "37"),
        ({}, "37"),  # none in the header: the body's details say it
        ({"Retry-After": "soon"}, "37"),
    ],
)
async def test_auths_429_reaches_the_client_as_429_with_its_retry_after(
    aiohttp_server: ServerFactory,
    make_replica: ResourceFactory,
    headers: dict[str, str],
    retry_after: str,
) -> None:
    replica = await make_replica(auth_url=await _throttling_auth(aiohttp_server, headers))
    response = await replica.post("/api/login", json=CREDENTIALS)
    body: dict[str, Any] = await response.json()
    assert response.status == 429, body
    assert body["error"] == "too_many_attempts"
    assert response.headers["Retry-After"] == retry_after
    assert response.headers["X-Served-By"] == "r1"
