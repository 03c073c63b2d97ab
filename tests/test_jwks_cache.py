"""parse_jwks and JWKSCache against a real HTTP server serving a JWKS the test controls.

The server counts the requests it receives; time is a ManualClock that the tests
move, so refetch intervals and cache ages are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm

from tessera_auth.key_material import generate_private_key, public_jwk
from tessera_verify.access_tokens import AccessTokenVerifier
from tessera_verify.clock import ManualClock
from tessera_verify.errors import ServiceUnavailable, UnknownKey
from tessera_verify.jws_canonical import canonical_es256_token
from tessera_verify.verification_keys import JWKSCache, parse_jwks

MAX_AGE = 300.0
MIN_REFETCH_INTERVAL = 5.0
ISSUER = "https://auth.tessera.test"
AUDIENCE = "tessera-api"


@functools.cache
def _private_key(alg: str, name: str) -> PrivateKeyTypes:
    # RSA generation is slow; one key per (alg, name) for the whole module.
    return generate_private_key(alg)


def _jwk(alg: str, name: str = "current") -> dict[str, Any]:
    return public_jwk(alg, _private_key(alg, name))


class JWKSEndpoint:
    """The handler behind the test server: serves ``document`` (or ``status``) and counts."""

    def __init__(self) -> None:
        self.document: Any = {"keys": [_jwk("ES256"), _jwk("EdDSA"), _jwk("RS256")]}
        self.status = 200
        self.raw_body: bytes | None = None
        self.requests = 0
        # When set, a request waits for ``release`` after announcing itself on ``arrived``.
        self.hold = False
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.hold:
            self.arrived.set()
            await self.release.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="upstream trouble")
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, content_type="application/json")
        return web.json_response(self.document)

    def publish(self, jwk: dict[str, Any]) -> None:
        self.document = {"keys": [*self.document["keys"], jwk]}

    def withdraw(self, kid: str) -> None:
        self.document = {"keys": [k for k in self.document["keys"] if k["kid"] != kid]}


@pytest.fixture
def endpoint() -> JWKSEndpoint:
    return JWKSEndpoint()


@pytest.fixture
async def jwks_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]], endpoint: JWKSEndpoint
) -> TestServer:
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", endpoint.handle)
    return await aiohttp_server(app)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


MakeCache = Callable[..., JWKSCache]


@pytest.fixture
def make_cache(
    jwks_server: TestServer, http: aiohttp.ClientSession, clock: ManualClock
) -> MakeCache:
    def make(**options: Any) -> JWKSCache:
        return JWKSCache(
            str(jwks_server.make_url("/.well-known/jwks.json")),
            http,
            clock=clock,
            **{"max_age": MAX_AGE, "min_refetch_interval": MIN_REFETCH_INTERVAL, **options},
        )

    return make


@pytest.fixture
def cache(make_cache: MakeCache) -> JWKSCache:
    return make_cache()


# --- parse_jwks ------------------------------------------------------------------------


def test_parse_jwks_keeps_public_signing_keys_of_every_supported_algorithm() -> None:
    document = {"keys": [_jwk("ES256"), _jwk("EdDSA"), _jwk("RS256")]}

    keys = parse_jwks(document)

    assert {kid: key.alg for kid, key in keys.items()} == {
        _jwk(alg)["kid"]: alg for alg in ("ES256", "EdDSA", "RS256")
    }
    es256 = keys[_jwk("ES256")["kid"]]
    assert (
        es256.key.public_numbers() == _private_key("ES256", "current").public_key().public_numbers()
    )


def _without(jwk: dict[str, Any], member: str) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name != member}


def _private_es256_jwk() -> dict[str, Any]:
    private = ECAlgorithm.to_jwk(_private_key("ES256", "other"), as_dict=True)
    return {**private, "kid": "has-private-part", "alg": "ES256", "use": "sig"}


_UNUSABLE_ENTRIES: dict[str, Any] = {
    "oct-hs256": {
        "kty": "oct",
        "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
        "kid": "sym",
        "alg": "HS256",
    },
    "oct-claiming-es256": {"kty": "oct", "k": "c2VjcmV0", "kid": "sym", "alg": "ES256"},
    "private-part": _private_es256_jwk(),
    "no-kid": _without(_jwk("ES256", "other"), "kid"),
    "empty-kid": {**_jwk("ES256", "other"), "kid": ""},
    "numeric-kid": {**_jwk("ES256", "other"), "kid": 7},
    "long-kid": {**_jwk("ES256", "other"), "kid": "k" * 129},
    "no-alg": _without(_jwk("ES256", "other"), "alg"),
    "alg-none": {**_jwk("ES256", "other"), "alg": "none"},
    "alg-unsupported": {**_jwk("ES256", "other"), "alg": "ES512"},
    "alg-list": {**_jwk("ES256", "other"), "alg": ["ES256"]},
    "use-enc": {**_jwk("RS256", "other"), "use": "enc"},
    "alg-does-not-fit-kty": {**_jwk("RS256", "other"), "alg": "ES256"},
    "broken-coordinates": {**_jwk("ES256", "other"), "x": "AAAA"},
    "not-an-object": "ES256",
}


@pytest.mark.parametrize("entry", list(_UNUSABLE_ENTRIES.values()), ids=list(_UNUSABLE_ENTRIES))
def test_parse_jwks_skips_entries_that_are_not_public_signing_keys(entry: Any) -> None:
    good = _jwk("EdDSA")

    keys = parse_jwks({"keys": [entry, good]})

    assert list(keys) == [good["kid"]]


@pytest.mark.parametrize("document", [{}, {"keys": {}}, {"keys": "none"}, [], "keys", 3], ids=str)
def test_parse_jwks_refuses_a_document_without_a_keys_list(document: Any) -> None:
    with pytest.raises(ValueError, match="keys"):
        parse_jwks(document)


# --- caching ---------------------------------------------------------------------------


async def test_keys_are_fetched_once_and_then_served_from_the_cache(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    for _ in range(3):
        for alg in ("ES256", "EdDSA", "RS256"):
            key = await cache.get(_jwk(alg)["kid"])
            assert key.alg == alg
        clock.advance(MIN_REFETCH_INTERVAL)

    assert endpoint.requests == 1


async def test_concurrent_lookups_on_a_cold_cache_share_one_fetch(
    cache: JWKSCache, endpoint: JWKSEndpoint
) -> None:
    kid = _jwk("ES256")["kid"]

    keys = await asyncio.gather(*(cache.get(kid) for _ in range(50)))

    assert {key.kid for key in keys} == {kid}
    assert endpoint.requests == 1


async def test_fifty_concurrent_lookups_of_an_unknown_kid_cause_a_single_refetch(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    await cache.get(_jwk("ES256")["kid"])
    clock.advance(MIN_REFETCH_INTERVAL)
    # Hold the refetch open until every lookup is queued behind it.
    endpoint.hold = True
    lookups = asyncio.gather(*(cache.get("random-kid") for _ in range(50)), return_exceptions=True)
    try:
        await endpoint.arrived.wait()
    finally:
        endpoint.release.set()
    results = await lookups

    assert all(isinstance(result, UnknownKey) for result in results)
    assert endpoint.requests == 2


async def test_unknown_kids_refetch_at_most_once_per_min_refetch_interval(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    await cache.get(_jwk("ES256")["kid"])
    clock.advance(MIN_REFETCH_INTERVAL)

    with pytest.raises(UnknownKey):
        await cache.get("unknown-1")
    assert endpoint.requests == 2

    clock.advance(MIN_REFETCH_INTERVAL - 0.001)
    with pytest.raises(UnknownKey):
        await cache.get("unknown-2")
    assert endpoint.requests == 2

    clock.advance(0.001)
    with pytest.raises(UnknownKey):
        await cache.get("unknown-3")
    assert endpoint.requests == 3


async def test_unknown_kid_right_after_the_first_fetch_does_not_refetch(
    cache: JWKSCache, endpoint: JWKSEndpoint
) -> None:
    await cache.get(_jwk("ES256")["kid"])

    with pytest.raises(UnknownKey):
        await cache.get("unknown")

    assert endpoint.requests == 1


async def test_rotated_in_key_is_found_by_the_unknown_kid_refetch(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    await cache.get(_jwk("ES256")["kid"])
    new = _jwk("ES256", "next")
    endpoint.publish(new)
    clock.advance(MIN_REFETCH_INTERVAL)

    key = await cache.get(new["kid"])

    assert key.alg == "ES256"
    assert endpoint.requests == 2
    assert (await cache.get(_jwk("ES256")["kid"])).alg == "ES256"
    assert endpoint.requests == 2


async def test_cache_older_than_max_age_is_refetched(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    kid = _jwk("ES256")["kid"]
    await cache.get(kid)

    clock.advance(MAX_AGE)
    await cache.get(kid)
    assert endpoint.requests == 1

    clock.advance(0.001)
    await cache.get(kid)
    assert endpoint.requests == 2


async def test_key_withdrawn_from_the_jwks_is_forgotten_once_the_cache_is_stale(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    kid = _jwk("ES256")["kid"]
    await cache.get(kid)
    endpoint.withdraw(kid)

    clock.advance(MAX_AGE + 1)

    with pytest.raises(UnknownKey):
        await cache.get(kid)
    assert endpoint.requests == 2


# --- failures --------------------------------------------------------------------------


async def test_known_keys_keep_working_when_the_endpoint_answers_500(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    kid = _jwk("ES256")["kid"]
    await cache.get(kid)
    endpoint.status = 500

    clock.advance(MIN_REFETCH_INTERVAL)
    with pytest.raises(UnknownKey):
        await cache.get("unknown")
    assert (await cache.get(kid)).kid == kid

    clock.advance(MAX_AGE + 1)  # stale: the refetch fails, the old keys stay
    assert (await cache.get(kid)).kid == kid
    assert endpoint.requests == 3


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": "none"}', b"NaN", b"\xff\xfe"],
    ids=["not-json", "array", "keys-not-a-list", "nan", "not-utf8"],
)
async def test_known_keys_keep_working_when_the_endpoint_serves_a_broken_document(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock, body: bytes
) -> None:
    kid = _jwk("ES256")["kid"]
    await cache.get(kid)
    endpoint.raw_body = body

    clock.advance(MAX_AGE + 1)

    assert (await cache.get(kid)).kid == kid
    with pytest.raises(UnknownKey):
        await cache.get("unknown")
    assert endpoint.requests == 2


async def test_known_keys_keep_working_when_the_endpoint_is_down(
    cache: JWKSCache, endpoint: JWKSEndpoint, jwks_server: TestServer, clock: ManualClock
) -> None:
    kid = _jwk("EdDSA")["kid"]
    await cache.get(kid)
    await jwks_server.close()

    clock.advance(MAX_AGE + 1)
    assert (await cache.get(kid)).kid == kid
    clock.advance(MIN_REFETCH_INTERVAL)
    with pytest.raises(UnknownKey):
        await cache.get("unknown")
    assert (await cache.get(kid)).kid == kid
    assert endpoint.requests == 1


async def test_lookups_fail_as_unavailable_while_no_fetch_has_ever_succeeded(
    cache: JWKSCache, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    kid = _jwk("ES256")["kid"]
    endpoint.status = 500

    with pytest.raises(ServiceUnavailable):
        await cache.get(kid)
    with pytest.raises(ServiceUnavailable):
        await cache.get(kid)  # within the interval: no new fetch
    assert endpoint.requests == 1

    endpoint.status = 200
    clock.advance(MIN_REFETCH_INTERVAL)
    assert (await cache.get(kid)).kid == kid
    assert endpoint.requests == 2


async def test_lookups_fail_as_unavailable_when_the_endpoint_was_never_reachable(
    cache: JWKSCache, jwks_server: TestServer
) -> None:
    await jwks_server.close()

    with pytest.raises(ServiceUnavailable):
        await cache.get(_jwk("ES256")["kid"])


# --- end to end ------------------------------------------------------------------------


def _claims(clock: ManualClock) -> dict[str, Any]:
    now = int(clock.now())
    return {
        "iss": ISSUER,
        "sub": "user-7f3a",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(12),
    }


def _token(clock: ManualClock, alg: str, name: str, kid: str | None = None) -> str:
    token = jwt.encode(
        _claims(clock),
        _private_key(alg, name),
        algorithm=alg,
        headers={"kid": kid or _jwk(alg, name)["kid"], "typ": "at+jwt"},
    )
    # As the auth service signs: ES256 in its one (low-s) spelling.
    return canonical_es256_token(token) if alg == "ES256" else token


@pytest.fixture
def jwks_verifier(cache: JWKSCache, clock: ManualClock) -> AccessTokenVerifier:
    return AccessTokenVerifier(
        cache,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["ES256", "EdDSA", "RS256", "HS256"],
        clock=clock,
    )


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
async def test_verifier_accepts_a_token_signed_by_a_key_published_in_the_jwks(
    jwks_verifier: AccessTokenVerifier, clock: ManualClock, alg: str
) -> None:
    claims = await jwks_verifier.verify(_token(clock, alg, "current"))

    assert claims.subject == "user-7f3a"


async def test_verifier_accepts_a_token_from_a_key_rotated_in_after_startup(
    jwks_verifier: AccessTokenVerifier,
    endpoint: JWKSEndpoint,
    clock: ManualClock,
) -> None:
    await jwks_verifier.verify(_token(clock, "ES256", "current"))
    endpoint.publish(_jwk("ES256", "next"))
    clock.advance(MIN_REFETCH_INTERVAL)

    claims = await jwks_verifier.verify(_token(clock, "ES256", "next"))

    assert claims.subject == "user-7f3a"
    assert endpoint.requests == 2


async def test_verifier_refuses_a_token_signed_by_an_unpublished_key(
    jwks_verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    with pytest.raises(UnknownKey):
        await jwks_verifier.verify(_token(clock, "ES256", "attacker"))


async def test_verifier_ignores_a_symmetric_key_slipped_into_the_jwks(
    jwks_verifier: AccessTokenVerifier, endpoint: JWKSEndpoint, clock: ManualClock
) -> None:
    # Even with HS256 pinned, a secret published in the JWKS must never verify tokens.
    secret = secrets.token_bytes(32)
    endpoint.publish(
        {
            "kty": "oct",
            "k": jwt.utils.base64url_encode(secret).decode(),
            "kid": "sym",
            "alg": "HS256",
        }
    )
    token = jwt.encode(
        _claims(clock), secret, algorithm="HS256", headers={"kid": "sym", "typ": "at+jwt"}
    )

    with pytest.raises(UnknownKey):
        await jwks_verifier.verify(token)
