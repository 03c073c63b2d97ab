"""Row 6 (forward auth) with nginx reusing the auth service's answers (opt-in:
``TESSERA_FORWARD_AUTH_CACHE_SECONDS=1``), against the real stack: nginx, the auth
service, a replica, Redis and PostgreSQL.

nginx keeps the auth service's 200 for one credential within one clock second
(``nginx/policies/forward_auth.conf``). What must still hold: a logout reaches
nginx within that second plus the revocation propagation bound, and no user is
ever answered with another user's identity, however many requests are in flight.
The rendering and the rules of what is kept are in
``tests/test_forward_auth_cache_config.py``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tessera_demo.stack_control import StackControl
from tessera_demo.users import PASSWORD
from tessera_stack.nginx_conf import (
    CACHE_VARIABLE,
    FORWARD_AUTH_CACHE_SECONDS,
    REVOCATION_PROPAGATION_SECONDS,
)
from tessera_verify.sessions import SESSION_COOKIE

from .private_stack import private_stack

pytestmark = pytest.mark.slow

#: What the machine may add to the bound (a loaded CI runner); a bound, not a speed.
SLACK_SECONDS = 3.0


@pytest.fixture(scope="module")
def row_6(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str
) -> Iterator[StackControl]:
    """The stack at row 6 with the cache on (the launcher renders nginx at ``row``)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CACHE_VARIABLE, str(FORWARD_AUTH_CACHE_SECONDS))
        run_dir = tmp_path_factory.mktemp("stack")
        with private_stack(run_dir, database_url, redis_url, redis_db=10, name="fwdcache") as stack:
            asyncio.run(stack.switch_row(6))
            entry = stack.layout.nginx_conf / "nginx.conf"
            assert "proxy_cache tessera_forward_auth;" in entry.read_text(encoding="utf-8")
            yield stack


@dataclass(frozen=True)
class User:
    name: str
    user_id: str
    cookie: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}


@pytest.fixture
async def client(row_6: StackControl) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(row_6.ca_cert))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=0),
        # Every request says which credential it carries; nothing is remembered.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


async def _logged_in(client: aiohttp.ClientSession, base_url: str) -> User:
    name = f"fwd-{uuid.uuid4().hex[:10]}"
    credentials = {"username": name, "password": PASSWORD}
    async with client.post(f"{base_url}/auth/register", json=credentials) as response:
        assert response.status == 201, await response.text()
    async with client.post(
        f"{base_url}/auth/login", json={**credentials, "credential": "session"}
    ) as response:
        assert response.status == 200, await response.text()
        cookie = response.cookies[SESSION_COOKIE].value
    async with client.get(
        f"{base_url}/api/me", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
    ) as response:
        assert response.status == 200, await response.text()
        user_id = (await response.json())["user_id"]
    return User(name, user_id, cookie)


async def _me(
    client: aiohttp.ClientSession, base_url: str, user: User
) -> tuple[int, dict[str, Any]]:
    async with client.get(f"{base_url}/api/me", headers=user.headers) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        return response.status, body


async def test_logout_reaches_nginx_within_the_cache_second_and_the_propagation_bound(
    row_6: StackControl, client: aiohttp.ClientSession
) -> None:
    base_url = row_6.base_url
    user = await _logged_in(client, base_url)
    # Accepted (and answers kept) right up to the logout.
    for _ in range(20):
        status, body = await _me(client, base_url, user)
        assert (status, body["user_id"]) == (200, user.user_id)
    async with client.post(
        f"{base_url}/auth/logout", headers={**user.headers, "Origin": base_url}
    ) as response:
        assert response.status == 200, await response.text()
    bound = FORWARD_AUTH_CACHE_SECONDS + REVOCATION_PROPAGATION_SECONDS + SLACK_SECONDS
    deadline = time.monotonic() + bound
    while (await _me(client, base_url, user))[0] == 200:
        assert time.monotonic() < deadline, f"still accepted {bound:g} s after the logout"
    # And refused from then on, whichever nginx worker answers.
    for _ in range(20):
        status, _ = await _me(client, base_url, user)
        assert status == 401


async def test_two_users_never_get_each_others_identity_under_concurrency(
    row_6: StackControl, client: aiohttp.ClientSession
) -> None:
    base_url = row_6.base_url
    alice, bob = await _logged_in(client, base_url), await _logged_in(client, base_url)
    users = [alice, bob] * 20
    for _ in range(5):
        answers = await asyncio.gather(*(_me(client, base_url, user) for user in users))
        for user, (status, body) in zip(users, answers, strict=True):
            assert status == 200
            assert (body["user_id"], body["username"]) == (user.user_id, user.name)
