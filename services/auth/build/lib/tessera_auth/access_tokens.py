"""Issuing RFC 9068 access tokens. Verification lives in ``tessera_verify``."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from tessera_verify.clock import Clock
from tessera_verify.jws_canonical import canonical_es256_token

from .keyring import KeyRing


@dataclass(frozen=True)
class IssuedAccessToken:
    token: str
    token_id: str
    expires_at: int
    expires_in: int


class AccessTokenIssuer:
    """Signs short-lived access tokens with the key ring's active key.

    The payload is readable by anyone, so it carries identifiers only: the user's
    opaque ID, a random token ID and the session's public link, never a name,
    an e-mail address or the session ID itself.
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        issuer: str,
        audience: str,
        client_id: str,
        ttl: int,
        clock: Clock,
    ) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._client_id = client_id
        self._ttl = ttl
        self._clock = clock

    def issue(
        self, *, subject: str, session_link: str, valid_after: float | None = None
    ) -> IssuedAccessToken:
        """A new token. ``valid_after`` is the user's last "revoke everything" time, and
        tokens with ``iat`` at or before it are refused; ``iat`` is whole seconds, so a
        token issued in that same second is dated one second later (within any leeway)."""
        now = int(self._clock.now())
        if valid_after is not None and now <= valid_after:
            now = math.floor(valid_after) + 1
        token_id = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "client_id": self._client_id,
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl,
            "jti": token_id,
            "sid": session_link,
        }
        key = self._keyring.active
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        if key.alg == "ES256":
            # ECDSA's s is random, and verifiers accept only the low one (jws_canonical).
            token = canonical_es256_token(token)
        return IssuedAccessToken(token, token_id, now + self._ttl, self._ttl)
