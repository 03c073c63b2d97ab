"""Signing keys: generated once, stored encrypted in PostgreSQL, shared by every auth replica.

A key is ``published`` (in JWKS, not signing), ``active`` (signing; one per
algorithm) or ``retired``. Every non-retired key is in the JWKS so that tokens
signed with a key stay verifiable while it is being replaced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tessera_verify.keys import StaticKeySource, VerificationKey, shared_secret_kid

from .settings import Settings

log = logging.getLogger(__name__)

_KEY_GENERATION_LOCK_ID = 0x7E55E7B
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any  # a cryptography private key, or the HMAC secret (bytes)


def generate_private_key(alg: str) -> PrivateKeyTypes:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"cannot generate a key for {alg}")


def public_jwk(alg: str, private_key: PrivateKeyTypes) -> dict[str, Any]:
    """The public JWK with ``kid`` = its RFC 7638 thumbprint."""
    public = private_key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        raise ValueError(f"unsupported key type for {alg}")
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    kid = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return {**members, "kid": kid, "alg": alg, "use": "sig"}


def _verification_key(jwk: dict[str, Any], private_key: PrivateKeyTypes) -> VerificationKey:
    return VerificationKey(kid=jwk["kid"], alg=jwk["alg"], key=private_key.public_key())


class KeyRing:
    """The keys this service signs with and publishes; reload() picks up other replicas' changes."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._alg = settings.jwt_algorithm
        self._passphrase = settings.key_encryption_key
        self.verification_keys = StaticKeySource()
        self._active: SigningKey | None = None
        self._jwks: dict[str, Any] = {"keys": []}

    @property
    def algorithm(self) -> str:
        return self._alg

    @property
    def active(self) -> SigningKey:
        if self._active is None:
            raise RuntimeError("the key ring has not been loaded")
        return self._active

    @property
    def ready(self) -> bool:
        return self._active is not None

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    async def load(self, *, now: float) -> None:
        """Load keys, generating the first one for the configured algorithm if none exists."""
        if self._alg == "HS256":
            self._load_shared_secret()
            return
        if await self._active_row() is None:
            await self._create_first_key(now)
        await self.reload()

    async def reload(self) -> None:
        if self._alg == "HS256":
            return
        rows = await self._pool.fetch(
            "SELECT kid, algorithm, private_key, public_jwk, state FROM signing_keys "
            "WHERE state <> 'retired' ORDER BY created_at"
        )
        verification: list[VerificationKey] = []
        published: list[dict[str, Any]] = []
        active: SigningKey | None = None
        for row in rows:
            jwk = _jwk_from_row(row["public_jwk"])
            private_key = serialization.load_pem_private_key(row["private_key"], self._passphrase)
            verification.append(_verification_key(jwk, private_key))
            published.append(jwk)
            if row["state"] == "active" and row["algorithm"] == self._alg:
                active = SigningKey(kid=row["kid"], alg=row["algorithm"], private_key=private_key)
        if active is None:
            raise RuntimeError(f"no active {self._alg} signing key")
        self.verification_keys.replace(verification)
        self._jwks = {"keys": published}
        self._active = active

    async def _active_row(self) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            "SELECT kid FROM signing_keys WHERE state = 'active' AND algorithm = $1", self._alg
        )

    async def _create_first_key(self, now: float) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            # Several replicas may start at once: one generates, the others wait and reuse it.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _KEY_GENERATION_LOCK_ID)
            exists = await connection.fetchval(
                "SELECT 1 FROM signing_keys WHERE state = 'active' AND algorithm = $1", self._alg
            )
            if exists:
                return
            await insert_key(connection, self._alg, self._passphrase, state="active", now=now)

    def _load_shared_secret(self) -> None:
        secret = self._settings.hs256_secret
        assert secret is not None
        kid = shared_secret_kid(secret)
        self._active = SigningKey(kid=kid, alg="HS256", private_key=secret)
        self.verification_keys.replace([VerificationKey(kid=kid, alg="HS256", key=secret)])
        self._jwks = {"keys": []}  # a shared secret is never published


async def insert_key(
    connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    alg: str,
    passphrase: bytes,
    *,
    state: str,
    now: float,
) -> str:
    """Generate and store a new key in ``state``; returns its kid."""
    private_key = generate_private_key(alg)
    jwk = public_jwk(alg, private_key)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    when = datetime.fromtimestamp(now, tz=UTC)
    await connection.execute(
        """INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk, state,
                                     created_at, activated_at)
           VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)""",
        jwk["kid"],
        alg,
        pem,
        json.dumps(jwk),
        state,
        when,
        when if state == "active" else None,
    )
    log.info("generated %s signing key %s (%s)", alg, jwk["kid"], state)
    return str(jwk["kid"])


def _jwk_from_row(value: Any) -> dict[str, Any]:
    data = json.loads(value) if isinstance(value, str) else value
    assert isinstance(data, dict)
    return data
