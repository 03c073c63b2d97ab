"""Access-token (RFC 9068 JWT) verification with pinned algorithms and required claims.

Follows RFC 8725: the algorithm comes from our configuration and the key, never
from the token; ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are ignored, the
``kid`` is only ever a dictionary key, and ``typ`` must say ``at+jwt``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from .clock import Clock
from .errors import (
    AlgorithmNotAllowed,
    ExpiredToken,
    ImmatureToken,
    InvalidClaims,
    InvalidSignature,
    InvalidTokenError,
    MalformedToken,
    RevokedToken,
)
from .keys import MAX_KID_LENGTH, SUPPORTED_ALGORITHMS, KeySource
from .ttl_cache import TTLCache

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti")
MAX_TOKEN_LENGTH = 8192
_MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z

_DECODE_OPTIONS: Any = {
    # Signature only: every claim below is checked here, against the injected clock.
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class RevocationChecker(Protocol):
    """The revocation plane as a verifier sees it (Redis directly, or a local cache)."""

    async def is_token_revoked(self, claims: AccessTokenClaims) -> bool: ...


@dataclass(frozen=True)
class AccessTokenClaims:
    """The verified content of an access token."""

    subject: str
    token_id: str
    issued_at: float
    expires_at: float
    session_link: str | None
    client_id: str | None
    claims: Mapping[str, Any] = field(repr=False)


class AccessTokenVerifier:
    """Verifies tessera access tokens; safe to share between requests."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        algorithms: Collection[str],
        clock: Clock,
        leeway: float = 5.0,
        revocations: RevocationChecker | None = None,
        cache: TTLCache[str, AccessTokenClaims] | None = None,
    ) -> None:
        unknown = set(algorithms) - SUPPORTED_ALGORITHMS
        if unknown or not algorithms:
            raise ValueError(f"unsupported algorithms: {sorted(unknown) or 'none given'}")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._clock = clock
        self._leeway = leeway
        self._revocations = revocations
        self._cache = cache

    async def verify(self, token: str) -> AccessTokenClaims:
        """Verify ``token`` completely, or raise an :class:`InvalidTokenError` subclass.

        With a cache, a token seen before skips the signature check (the costly
        part) until it expires; revocation is checked on every call.
        """
        claims = None
        if self._cache is not None:
            claims = self._cache.get(token, self._clock.now())
        if claims is None:
            claims = await self.verify_signature_and_claims(token)
            if self._cache is not None:
                self._cache.put(token, claims, claims.expires_at + self._leeway)
        if self._revocations is not None and await self._revocations.is_token_revoked(claims):
            raise RevokedToken()
        return claims

    async def verify_signature_and_claims(self, token: str) -> AccessTokenClaims:
        """Everything but revocation: what a cache of verified tokens may remember."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise MalformedToken()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise MalformedToken() from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AlgorithmNotAllowed()
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidClaims("the token is not an access token (typ must be at+jwt)")
        if "crit" in header:
            raise MalformedToken("the token has critical header parameters we do not support")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise MalformedToken("the token has no usable kid")
        key = await self._keys.get(kid)
        if key.alg != alg:
            # The key fixes the algorithm; a token may not pick another one for it.
            raise AlgorithmNotAllowed()
        try:
            payload = jwt.decode(token, key.key, algorithms=[key.alg], options=_DECODE_OPTIONS)
        except jwt.InvalidSignatureError as exc:
            raise InvalidSignature() from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AlgorithmNotAllowed() from exc
        except jwt.DecodeError as exc:
            raise MalformedToken() from exc
        except jwt.PyJWTError as exc:
            raise InvalidTokenError() from exc
        return self._check_claims(payload)

    def _check_claims(self, payload: Mapping[str, Any]) -> AccessTokenClaims:
        missing = [name for name in REQUIRED_CLAIMS if name not in payload]
        if missing:
            raise InvalidClaims(f"the token lacks required claims: {', '.join(missing)}")
        exp, iat, nbf = payload["exp"], payload["iat"], payload.get("nbf", payload["iat"])
        for name, value in (("exp", exp), ("iat", iat), ("nbf", nbf)):
            # Python's JSON parser accepts NaN and Infinity (JSON has neither): a NaN exp
            # compares false with every time and would never expire, and a huge integer
            # overflows the float arithmetic below. Only plausible dates pass.
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= _MAX_NUMERIC_DATE
            ):
                raise InvalidClaims(f"'{name}' must be a number")
        sub, jti = payload["sub"], payload["jti"]
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
            raise InvalidClaims("'sub' and 'jti' must be non-empty strings")
        if payload["iss"] != self._issuer:
            raise InvalidClaims("the token was issued by someone else")
        aud = payload["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise InvalidClaims("the token is not meant for this audience")
        now = self._clock.now()
        if now >= exp + self._leeway:
            raise ExpiredToken()
        if now + self._leeway < nbf or now + self._leeway < iat:
            raise ImmatureToken()
        sid = payload.get("sid")
        client_id = payload.get("client_id")
        return AccessTokenClaims(
            subject=sub,
            token_id=jti,
            issued_at=float(iat),
            expires_at=float(exp),
            session_link=sid if isinstance(sid, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            claims=dict(payload),
        )
