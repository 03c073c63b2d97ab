"""Public verification keys: a static set, or a JWKS endpoint behind an async cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt

from .clock import Clock
from .errors import ServiceUnavailable, UnknownKey

log = logging.getLogger(__name__)

#: Every algorithm tessera can sign with. A verifier pins a subset of these.
SUPPORTED_ALGORITHMS = frozenset({"ES256", "EdDSA", "RS256", "HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "EdDSA", "RS256"})
MAX_KID_LENGTH = 128


def shared_secret_kid(secret: bytes) -> str:
    """The ``kid`` of the HS256 shared-secret mode: derived, so both sides agree without a JWKS."""
    return "hs256-" + hashlib.sha256(b"tessera-kid:" + secret).hexdigest()[:16]


@dataclass(frozen=True)
class VerificationKey:
    """One key a token may name by ``kid``: its algorithm is fixed with the key."""

    kid: str
    alg: str
    key: Any  # a cryptography public key, or the HMAC secret in shared-secret mode


class KeySource(Protocol):
    """Where a verifier finds the key a token's ``kid`` names."""

    async def get(self, kid: str) -> VerificationKey:
        """The key for ``kid``; raises :class:`UnknownKey` when there is none."""
        ...


class StaticKeySource:
    """A fixed set of keys (the auth service's own ring, or the shared HS256 secret)."""

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._keys = {key.kid: key for key in keys}

    def replace(self, keys: Iterable[VerificationKey]) -> None:
        self._keys = {key.kid: key for key in keys}

    async def get(self, kid: str) -> VerificationKey:
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey() from None


def parse_jwks(document: Mapping[str, Any]) -> dict[str, VerificationKey]:
    """The usable public signing keys of a JWKS document, by ``kid``.

    Keys without ``kid`` or ``alg``, symmetric keys, keys that carry private
    parts and keys not meant for signatures are skipped: a JWKS fetched over
    the network may only ever add public asymmetric keys.
    """
    keys: dict[str, VerificationKey] = {}
    # The document comes off the network: anything that is not an object of the
    # expected shape must fail as ValueError, which the cache treats as a failed fetch.
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("JWKS document has no 'keys' list")
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            continue
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            continue  # (an unhashable alg would make the set lookup raise TypeError)
        if entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct" or "d" in entry:
            continue
        try:
            parsed = jwt.PyJWK(entry, algorithm=alg)
        except jwt.PyJWTError as exc:
            log.warning("skipping unusable JWK %s: %s", kid, exc)
            continue
        keys[kid] = VerificationKey(kid=kid, alg=alg, key=parsed.key)
    return keys


class JWKSCache:
    """An async JWKS client with a cache.

    Keys are refetched when the cache is older than ``max_age``, and once on an
    unknown ``kid`` (single-flight under a lock, at most once per
    ``min_refetch_interval``, so a flood of tokens with random ``kid`` values
    cannot turn into a flood of fetches). When a refetch fails, the keys
    already known keep working.
    """

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        clock: Clock,
        max_age: float = 300.0,
        min_refetch_interval: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._session = session
        self._clock = clock
        self._max_age = max_age
        self._min_interval = min_refetch_interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    async def get(self, kid: str) -> VerificationKey:
        key = self._keys.get(kid)
        if key is not None and not self._stale():
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is not None and not self._stale():
                return key
            if self._may_fetch():
                await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            if self._fetched_at is None:
                raise ServiceUnavailable("the key set cannot be fetched")
            raise UnknownKey()
        return key

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock.now() - self._fetched_at > self._max_age

    def _may_fetch(self) -> bool:
        if self._attempted_at is None:
            return True
        return self._clock.now() - self._attempted_at >= self._min_interval

    async def _refresh(self) -> None:
        self._attempted_at = self._clock.now()
        self.fetch_count += 1
        try:
            async with self._session.get(self._url, timeout=self._timeout) as response:
                response.raise_for_status()
                document = json.loads(await response.read())
            keys = parse_jwks(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %r", self._url, exc)
            return
        self._keys = keys
        self._fetched_at = self._clock.now()
