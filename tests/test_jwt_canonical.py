"""Every tessera access token has exactly one spelling that verifies.

A compact JWS has other spellings that lenient verifiers accept for the same
token: base64url whose last character has its unused bits set (Python's
base64 decoder ignores them), and for ECDSA the signature (r, n - s) beside
(r, s), which pyjwt accepts. Caches and denylists
keyed by the token's text would see two tokens where there is one, so tessera
accepts only the canonical spelling (strict base64url, low-s ES256), and the
auth service signs only in it. pyjwt is the reference for "validly signed".
"""

from __future__ import annotations

import asyncio
import base64
import functools
import secrets
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera_auth.key_material import generate_private_key, public_jwk
from tessera_verify.access_tokens import AccessTokenVerifier
from tessera_verify.clock import ManualClock
from tessera_verify.errors import InvalidTokenError
from tessera_verify.verification_keys import StaticKeySource, VerificationKey

from .conftest import register_and_login

ISSUER = "https://auth.tessera.test"
AUDIENCE = "tessera-api"
ALGORITHMS = ("ES256", "EdDSA", "RS256")
NOW = 1_800_000_000
#: The order of P-256's group: an ES256 signature (r, s) also verifies as (r, n - s).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@functools.cache
def _key(alg: str) -> PrivateKeyTypes:
    return generate_private_key(alg)


def _kid(alg: str) -> str:
    return str(public_jwk(alg, _key(alg))["kid"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _s(token: str) -> int:
    return int.from_bytes(_unb64(token.rsplit(".", 1)[1])[32:], "big")


def _flip_s(token: str) -> str:
    """The same ES256 token with (r, n - s): the other valid ECDSA signature."""
    head, signature = token.rsplit(".", 1)
    raw = _unb64(signature)
    s = int.from_bytes(raw[32:], "big")
    return f"{head}.{_b64(raw[:32] + (P256_N - s).to_bytes(32, 'big'))}"


def _canonical_sign(alg: str, claims: dict[str, Any]) -> str:
    """What tessera's signer must produce: pyjwt's token, ES256 brought to low s."""
    token = jwt.encode(
        claims, _key(alg), algorithm=alg, headers={"kid": _kid(alg), "typ": "at+jwt"}
    )
    if alg == "ES256" and _s(token) > P256_N // 2:
        token = _flip_s(token)
    return token


def _trailing_bit_spellings(segment: str) -> list[str]:
    """Other spellings of ``segment`` that decode to the same bytes (unused low bits set)."""
    unused = {2: 4, 3: 2}.get(len(segment) % 4, 0)
    if not unused:
        return []
    index = B64URL.index(segment[-1])
    base = index & ~((1 << unused) - 1)
    return [segment[:-1] + B64URL[base | low] for low in range(1, 1 << unused)]


def _claims(sub: str, jti: str) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "sub": sub,
        "aud": AUDIENCE,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "jti": jti,
    }


def _verifier() -> AccessTokenVerifier:
    keys = StaticKeySource(
        VerificationKey(kid=_kid(alg), alg=alg, key=_key(alg).public_key())  # type: ignore[union-attr]
        for alg in ALGORITHMS
    )
    return AccessTokenVerifier(
        keys,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        clock=ManualClock(start=NOW + 10),
    )


def _pyjwt_decode(token: str, alg: str) -> dict[str, Any]:
    """pyjwt's reading of ``token`` (times not checked); raises what pyjwt raises."""
    claims: dict[str, Any] = jwt.decode(
        token,
        _key(alg).public_key(),  # type: ignore[union-attr]
        algorithms=[alg],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims


def _pyjwt_accepts(token: str, alg: str) -> bool:
    try:
        _pyjwt_decode(token, alg)
    except jwt.PyJWTError:
        return False
    return True


async def _tessera_accepts(verifier: AccessTokenVerifier, token: str) -> bool:
    try:
        await verifier.verify(token)
    except InvalidTokenError:
        return False
    return True


def _variants(token: str, alg: str) -> set[str]:
    """Every other spelling of ``token`` we know, valid or not for pyjwt."""
    header, payload, signature = token.split(".")
    out = {f"{header}.{payload}.{sig}" for sig in _trailing_bit_spellings(signature)}
    out |= {f"{h}.{payload}.{signature}" for h in _trailing_bit_spellings(header)}
    out |= {f"{header}.{p}.{signature}" for p in _trailing_bit_spellings(payload)}
    if alg == "ES256":
        flipped = _flip_s(token)
        out.add(flipped)
        head, sig = flipped.rsplit(".", 1)
        out |= {f"{head}.{other}" for other in _trailing_bit_spellings(sig)}
    out.discard(token)
    return out


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_a_signature_with_unused_base64_bits_set_is_refused(alg: str) -> None:
    token = _canonical_sign(alg, _claims("user-1", secrets.token_urlsafe(12)))
    verifier = _verifier()
    assert await _tessera_accepts(verifier, token)
    header, payload, signature = token.split(".")
    others = _trailing_bit_spellings(signature)
    assert others
    for other in others:
        spelt = f"{header}.{payload}.{other}"
        assert _unb64(other) == _unb64(signature)  # the same signature bytes
        assert not await _tessera_accepts(verifier, spelt), spelt


async def test_an_es256_signature_with_high_s_is_refused() -> None:
    token = _canonical_sign("ES256", _claims("user-1", secrets.token_urlsafe(12)))
    assert _s(token) <= P256_N // 2
    high = _flip_s(token)
    assert _pyjwt_accepts(high, "ES256"), "(r, n - s) is a valid ECDSA signature"
    assert not await _tessera_accepts(_verifier(), high)


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    alg=st.sampled_from(ALGORITHMS),
    sub=st.text(min_size=1, max_size=40),
    jti=st.text(alphabet=B64URL, min_size=1, max_size=40),
)
def test_of_every_spelling_of_a_valid_token_tessera_accepts_only_the_canonical_one(
    alg: str, sub: str, jti: str
) -> None:
    async def check() -> None:
        verifier = _verifier()
        token = _canonical_sign(alg, _claims(sub, jti))
        assert _pyjwt_accepts(token, alg)
        assert await _tessera_accepts(verifier, token)
        for variant in _variants(token, alg):
            # pyjwt accepts some of them (high s), refuses others (its base64 is strict
            # too); tessera accepts none, and never one that pyjwt refuses.
            assert not await _tessera_accepts(verifier, variant), variant

    asyncio.run(check())


async def test_the_auth_service_signs_es256_with_low_s(auth_client: Any) -> None:
    for _ in range(16):  # a random s is high half the time: 16 lows by chance is 1 in 65536
        login = await register_and_login(auth_client, credential="token")
        token = login["access_token"]
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        assert _s(token) <= P256_N // 2


_edits = st.lists(
    st.tuples(
        st.sampled_from(["replace", "insert", "delete"]),
        st.integers(min_value=0, max_value=10_000),
        st.sampled_from(B64URL + ".=+/ \x00{}\"'"),
    ),
    min_size=1,
    max_size=4,
)


def _edit(token: str, edits: list[tuple[str, int, str]]) -> str:
    for op, at, char in edits:
        at %= len(token) + 1
        if op == "insert":
            token = token[:at] + char + token[at:]
        elif op == "delete":
            token = token[:at] + token[at + 1 :]
        else:
            token = token[:at] + char + token[at + 1 :]
    return token


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(alg=st.sampled_from(ALGORITHMS), edits=_edits)
def test_whatever_tessera_accepts_pyjwt_accepts_with_the_same_claims(
    alg: str, edits: list[tuple[str, int, str]]
) -> None:
    """Differential: random edits of a valid token; tessera never accepts more than pyjwt."""

    async def check() -> None:
        claims = _claims("user-1", secrets.token_urlsafe(8))
        token = _edit(_canonical_sign(alg, claims), edits)
        try:
            accepted = await _verifier().verify(token)
        except InvalidTokenError:
            return
        assert _pyjwt_accepts(token, alg), token
        decoded = _pyjwt_decode(token, alg)
        assert (accepted.subject, accepted.token_id, accepted.expires_at) == (
            decoded["sub"],
            decoded["jti"],
            decoded["exp"],
        )

    asyncio.run(check())
