"""Only the auth service can create a credential: what a replica holds mints nothing.

A replica is configured with the session hash key, the forward-auth secret and
Redis access. These tests forge with exactly that, the way a compromised
replica would, and show the auth service refuses the result.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tessera_auth.refresh_tokens import refresh_token_key
from tessera_auth.settings import Settings
from tessera_verify import redis_layout

from .conftest import register_and_login

Client = TestClient[Any, Any]


def _forged_token(family: str, key: bytes) -> str:
    """Generation 0 of ``family``, laid out as the genuine ones, MACed with ``key``."""
    prefix = family + "AAAAAA" + secrets.token_urlsafe(12)
    mac = hmac.digest(key, b"refresh-token-mac:" + prefix.encode(), hashlib.sha256)
    return prefix + base64.urlsafe_b64encode(mac[:20]).rstrip(b"=").decode()


async def _refreshes(auth_client: Client, token: str) -> bool:
    response = await auth_client.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": token}
    )
    if response.status == 200:
        return True
    assert (response.status, (await response.json())["error"]) == (400, "invalid_grant")
    return False


async def test_a_refresh_record_forged_with_a_replicas_secrets_is_refused(
    auth_client: Client, redis: Redis, settings: Settings
) -> None:
    body = await register_and_login(auth_client, credential="token")
    # A genuine token tells the forger the layout: family ID, generation, random part,
    # MAC. The forger writes a family of its own and MACs its token with a key it holds.
    genuine = body["refresh_token"]
    family = secrets.token_urlsafe(12)
    forged = _forged_token(family, settings.session_hash_key)
    assert len(forged) == len(genuine)
    now = time.time()
    await redis.hset(
        redis_layout.refresh_family(family),
        mapping={
            "user_id": body["user"]["id"],
            "session_link": "forged",
            "session_key": "",
            "created_at": repr(now),
            "expires_at": repr(now + 3600),
            "generation": "0",
            "current": hashlib.sha256(forged.encode()).hexdigest(),
            "issued_at": repr(now),
            "revoked": "0",
        },
    )
    assert not await _refreshes(auth_client, forged)
    # The genuine token still works: the record layout was right, the key was not.
    assert await _refreshes(auth_client, genuine)


async def test_the_refresh_key_with_a_redis_dump_mints_no_refresh_token(
    auth_client: Client, redis: Redis, settings: Settings
) -> None:
    """Worse than a replica: the refresh key itself, and everything Redis holds (read
    only). The current token's random part is kept only as its fingerprint, so a
    token made for the family's current generation is not the current token."""
    body = await register_and_login(auth_client, credential="token")
    genuine = body["refresh_token"]
    family = genuine[:16]
    assert (await redis.hgetall(redis_layout.refresh_family(family)))[b"generation"] == b"0"
    forged = _forged_token(family, refresh_token_key(settings.key_encryption_key))
    assert not await _refreshes(auth_client, forged)
    assert await _refreshes(auth_client, genuine)
