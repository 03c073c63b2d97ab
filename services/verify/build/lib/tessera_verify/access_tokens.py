"""Access-token (RFC 9068 JWT) verification with pinned algorithms and required claims.

Follows RFC 8725: the algorithm comes from our configuration and the key, never
from the token; ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are ignored, the
``kid`` is only ever a dictionary key, and ``typ`` must say ``at+jwt``.
"""

from __future__ import annotations

import json
import re
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
    MalformedToken,
    RevokedToken,
)
from .jws_canonical import b64url_decode_canonical, is_low_s_es256
from .revocation import MAX_LEEWAY
from .ttl_cache import TTLCache
from .verification_keys import MAX_KID_LENGTH, SUPPORTED_ALGORITHMS, KeySource

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti")
MAX_TOKEN_LENGTH = 8192
_MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_ALGORITHMS = {name: jwt.get_algorithm_by_name(name) for name in SUPPORTED_ALGORITHMS}


def _b64decode(segment: str) -> bytes:
    data = b64url_decode_canonical(segment)
    if data is None:
        raise MalformedToken()
    return data


def _json_segment(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, RecursionError) as exc:
        raise MalformedToken() from exc
    if not isinstance(value, dict):
        raise MalformedToken("a JWT header and payload must be JSON objects")
    return value


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
        if not 0 <= leeway <= MAX_LEEWAY:
            # A denylisted jti is remembered MAX_LEEWAY past exp: more leeway would reopen it.
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY:g} seconds")
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
        """Everything but revocation: what a cache of verified tokens may remember.

        The compact JWS is split and decoded here (each segment checked against the
        strict base64url alphabet first, then decoded only if they re-encode to
        themselves, and ES256 signatures must have low s: no token has two spellings), and only the
        signature check is left to pyjwt's algorithm for the key: parsing once is a
        third of the cost of a first-seen token.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise MalformedToken()
        segments = token.split(".")
        if len(segments) != 3 or not all(_BASE64URL.match(part) for part in segments):
            raise MalformedToken()
        header_b64, payload_b64, signature_b64 = segments
        if not header_b64 or not payload_b64:
            raise MalformedToken()
        header = _json_segment(header_b64)
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
        algorithm = _ALGORITHMS[key.alg]
        signature = _b64decode(signature_b64)
        if key.alg == "ES256" and not is_low_s_es256(signature):
            raise InvalidSignature()  # (r, n - s): the other spelling of a signature
        try:
            # prepare_key refuses, for HMAC, anything that looks like a public key.
            prepared = algorithm.prepare_key(key.key)
            valid = algorithm.verify(
                f"{header_b64}.{payload_b64}".encode("ascii"), prepared, signature
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidSignature() from exc
        if not valid:
            raise InvalidSignature()
        return self._check_claims(_json_segment(payload_b64))

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
