"""Only the auth service can create a credential: what a replica holds mints nothing.

A replica is configured with the session hash key, the forward-auth secret and
Redis access. These tests forge with exactly that, the way a compromised
replica would, and show the auth service refuses the result.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tessera_auth.settings import Settings
from tessera_verify import redis_layout

from .conftest import register_and_login

Client = TestClient[Any, Any]


async def test_a_refresh_record_forged_with_a_replicas_secrets_is_refused(
    auth_client: Client, redis: Redis, settings: Settings
) -> None:
    body = await register_and_login(auth_client, credential="token")
    user_id = body["user"]["id"]
    # A genuine token tells the forger the record layout; the family ID is its prefix.
    family = body["refresh_token"][:16]
    forged = family + secrets.token_urlsafe(20)[: 43 - len(family)]
    assert len(forged) == 43
    digest = hmac.new(
        settings.session_hash_key, b"refresh-token:" + forged.encode(), hashlib.sha256
    ).hexdigest()
    key = redis_layout.refresh_token(family, digest)
    now = time.time()
    await redis.hset(
        key,
        mapping={
            "user_id": user_id,
            "family_id": family,
            "session_link": "forged",
            "issued_at": repr(now),
            "expires_at": repr(now + 3600),
            "used_at": "",
            "successor": "",
        },
    )
    response = await auth_client.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": forged}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_grant"
    # The genuine token still works: the record layout was right, the key was not.
    genuine = await auth_client.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    assert genuine.status == 200
