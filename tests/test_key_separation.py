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

from tessera_auth.settings import Settings
from tessera_verify import redis_layout

from .conftest import register_and_login

Client = TestClient[Any, Any]


async def test_a_refresh_record_forged_with_a_replicas_secrets_is_refused(
    auth_client: Client, redis: Redis, settings: Settings
) -> None:
    body = await register_and_login(auth_client, credential="token")
    user_id = body["user"]["id"]
    # A genuine token tells the forger the layout: the family ID, then the
    # generation, then a MAC of both. The forger makes a family of its own and
    # MACs its first token with the key it holds.
    genuine_token = body["refresh_token"]
    family = secrets.token_urlsafe(12)
    prefix = family + genuine_token[16:22]  # generation 0, as the genuine token's
    mac = hmac.digest(
        settings.session_hash_key, b"refresh-token-mac:" + prefix.encode(), hashlib.sha256
    )
    forged = prefix + base64.urlsafe_b64encode(mac[:20]).rstrip(b"=").decode()
    assert len(forged) == len(genuine_token)
    now = time.time()
    await redis.hset(
        redis_layout.refresh_family(family),
        mapping={
            "user_id": user_id,
            "session_link": "forged",
            "session_key": "",
            "created_at": repr(now),
            "expires_at": repr(now + 3600),
            "generation": "0",
            "issued_at": repr(now),
            "revoked": "0",
        },
    )
    response = await auth_client.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": forged}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_grant"
    # The genuine token still works: the record layout was right, the key was not.
    genuine = await auth_client.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": genuine_token}
    )
    assert genuine.status == 200
