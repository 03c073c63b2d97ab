"""Accounts and credentials for the benchmark: logins over HTTP, and tokens minted in bulk.

Logins go through the real endpoints (``/auth/login`` for shared sessions
and tokens, a replica's ``/api/login`` for sessions in its memory). A
first-seen-token run needs more distinct access tokens than the replica's
verified-token cache holds; logging in that many times would measure
Argon2, so :func:`mint_access_tokens` signs them with the auth service's own
issuer and active key (read from PostgreSQL with the stack's secrets), for
a real user and session link. The replica cannot tell them from issued ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import jwt

from tessera_auth.access_tokens import AccessTokenIssuer
from tessera_auth.keyring import KeyRing
from tessera_auth.settings import Settings, load_settings
from tessera_demo.users import PASSWORD
from tessera_verify.clock import SystemClock
from tessera_verify.integration import LOCAL_SESSION_COOKIE
from tessera_verify.sessions import SESSION_COOKIE

__all__ = [
    "LOCAL_SESSION_COOKIE",
    "PASSWORD",
    "SESSION_COOKIE",
    "TokenPair",
    "auth_settings",
    "login_local",
    "login_session",
    "login_tokens",
    "mint_access_tokens",
    "refresh",
    "register",
]


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str

    def claims(self) -> dict[str, Any]:
        """The access token's claims, unverified (to mint more like it)."""
        claims: dict[str, Any] = jwt.decode(self.access_token, options={"verify_signature": False})
        return claims


async def register(http: aiohttp.ClientSession, auth_url: str, username: str) -> None:
    """Create ``username`` (an existing one is fine: same fixed password)."""
    async with http.post(
        f"{auth_url}/auth/register", json={"username": username, "password": PASSWORD}
    ) as response:
        if response.status not in (201, 409):
            raise RuntimeError(f"register {username}: {response.status} {await response.text()}")


async def _login(
    http: aiohttp.ClientSession, url: str, username: str, credential: str | None
) -> tuple[dict[str, Any], Mapping[str, str]]:
    body: dict[str, Any] = {"username": username, "password": PASSWORD}
    if credential is not None:
        body["credential"] = credential
    async with http.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"login {username} at {url}: {response.status}")
        payload = await response.json()
        cookies = {name: morsel.value for name, morsel in response.cookies.items()}
    return payload, cookies


async def login_session(http: aiohttp.ClientSession, auth_url: str, username: str) -> str:
    """A shared session: the value of the session cookie ``/auth/login`` sets."""
    _, cookies = await _login(http, f"{auth_url}/auth/login", username, "session")
    return cookies[SESSION_COOKIE]


async def login_tokens(http: aiohttp.ClientSession, auth_url: str, username: str) -> TokenPair:
    payload, _ = await _login(http, f"{auth_url}/auth/login", username, "token")
    return TokenPair(str(payload["access_token"]), str(payload["refresh_token"]))


async def login_local(http: aiohttp.ClientSession, replica_url: str, username: str) -> str:
    """A session in ``replica_url``'s own memory: the cookie its ``/api/login`` sets."""
    _, cookies = await _login(http, f"{replica_url}/api/login", username, None)
    return cookies[LOCAL_SESSION_COOKIE]


async def refresh(http: aiohttp.ClientSession, auth_url: str, refresh_token: str) -> TokenPair:
    """Spend ``refresh_token`` for a new pair (``POST /auth/token``)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    async with http.post(f"{auth_url}/auth/token", data=form) as response:
        if response.status != 200:
            raise RuntimeError(f"refresh: {response.status} {await response.text()}")
        payload = await response.json()
    return TokenPair(str(payload["access_token"]), str(payload["refresh_token"]))


def auth_settings(environment: Mapping[str, str]) -> Settings:
    """The auth service's settings, read from its environment as the service reads them."""
    return load_settings(environment)


async def mint_access_tokens(
    environment: Mapping[str, str],
    *,
    subject: str,
    session_link: str,
    count: int,
    ttl: int,
) -> list[str]:
    """``count`` distinct access tokens for ``subject``, signed like ``/auth/login`` signs."""
    settings = auth_settings(environment)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        keyring = KeyRing(pool, settings)
        await keyring.load(now=time.time())
        issuer = AccessTokenIssuer(
            keyring,
            issuer=settings.issuer,
            audience=settings.audience,
            client_id=settings.client_id,
            ttl=ttl,
            clock=SystemClock(),
        )
        return [
            issuer.issue(subject=subject, session_link=session_link).token for _ in range(count)
        ]
    finally:
        await pool.close()
