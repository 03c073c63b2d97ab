"""AccessTokenVerifier against real keys and hand-made hostile tokens (RFC 8725 / RFC 9068).

Tokens are signed here with pyjwt and keys from the auth service's own key
generator; time is a ManualClock that the tests move.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import get_default_algorithms

from tessera_auth.key_material import generate_private_key, public_jwk
from tessera_verify.access_tokens import MAX_TOKEN_LENGTH, AccessTokenClaims, AccessTokenVerifier
from tessera_verify.clock import ManualClock
from tessera_verify.errors import (
    AlgorithmNotAllowed,
    ExpiredToken,
    ImmatureToken,
    InvalidClaims,
    InvalidSignature,
    InvalidTokenError,
    MalformedToken,
    RevokedToken,
    UnknownKey,
)
from tessera_verify.jws_canonical import canonical_es256_token, to_low_s_es256
from tessera_verify.verification_keys import StaticKeySource, VerificationKey

ISSUER = "https://auth.tessera.test"
AUDIENCE = "tessera-api"
LEEWAY = 5.0
TTL = 300
ASYMMETRIC = ["ES256", "EdDSA", "RS256"]
HS256_SECRET = b"tessera-test-shared-secret-0123456789abcdef"
MISSING = object()


@dataclass(frozen=True)
class Signer:
    """A private key with the kid and alg the verifier knows it by."""

    alg: str
    kid: str
    private_key: Any

    def verification_key(self) -> VerificationKey:
        public = self.private_key if self.alg == "HS256" else self.private_key.public_key()
        return VerificationKey(kid=self.kid, alg=self.alg, key=public)

    def public_pem(self) -> bytes:
        return bytes(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        token = jwt.encode(
            claims,
            self.private_key,
            algorithm=self.alg,
            headers={"kid": self.kid, "typ": "at+jwt", **headers},
        )
        # As the auth service signs: ES256 in its one (low-s) spelling.
        return canonical_es256_token(token) if self.alg == "ES256" else token


@functools.cache
def _private_key(alg: str, name: str) -> PrivateKeyTypes:
    # RSA generation is slow; one key per (alg, role) for the whole module.
    return generate_private_key(alg)


def _signer(alg: str, name: str = "ours") -> Signer:
    private_key = _private_key(alg, name)
    return Signer(alg=alg, kid=public_jwk(alg, private_key)["kid"], private_key=private_key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _hs256_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand: pyjwt itself refuses PEM bytes as an HMAC secret."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _signed_with_header(header: dict[str, Any], claims: dict[str, Any], signer: Signer) -> str:
    """A token with exactly ``header``, correctly signed by ``signer``."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    algorithm = get_default_algorithms()[signer.alg]
    signature = algorithm.sign(signing_input.encode(), signer.private_key)
    if signer.alg == "ES256":
        signature = to_low_s_es256(signature)
    return f"{signing_input}.{_b64(signature)}"


def _claims(clock: ManualClock, **changes: Any) -> dict[str, Any]:
    now = int(clock.now())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-7f3a",
        "aud": AUDIENCE,
        "client_id": "tessera-web",
        "iat": now,
        "nbf": now,
        "exp": now + TTL,
        "jti": secrets.token_urlsafe(12),
        "sid": "link-1",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not MISSING}


MakeVerifier = Callable[..., AccessTokenVerifier]


@pytest.fixture
def make_verifier(clock: ManualClock) -> MakeVerifier:
    """A verifier over our three asymmetric keys; keyword arguments override the defaults."""

    def make(**overrides: Any) -> AccessTokenVerifier:
        options: dict[str, Any] = {
            "keys": StaticKeySource(_signer(alg).verification_key() for alg in ASYMMETRIC),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ASYMMETRIC,
            "clock": clock,
            "leeway": LEEWAY,
            **overrides,
        }
        keys = options.pop("keys")
        return AccessTokenVerifier(keys, **options)

    return make


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> AccessTokenVerifier:
    return make_verifier()


# --- valid tokens ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_valid_token_is_accepted_for_each_pinned_algorithm(
    verifier: AccessTokenVerifier, clock: ManualClock, alg: str
) -> None:
    claims = _claims(clock)

    verified = await verifier.verify(_signer(alg).sign(claims))

    assert verified.subject == "user-7f3a"
    assert verified.token_id == claims["jti"]
    assert verified.issued_at == claims["iat"]
    assert verified.expires_at == claims["exp"]
    assert verified.session_link == "link-1"
    assert verified.client_id == "tessera-web"
    assert verified.claims["iss"] == ISSUER


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
async def test_access_token_media_type_is_matched_case_insensitively(
    verifier: AccessTokenVerifier, clock: ManualClock, typ: str
) -> None:
    token = _signer("ES256").sign(_claims(clock), typ=typ)

    assert (await verifier.verify(token)).subject == "user-7f3a"


def test_verifier_refuses_to_pin_unsupported_or_no_algorithms(clock: ManualClock) -> None:
    for algorithms in (["none"], ["ES256", "HS512"], []):
        with pytest.raises(ValueError, match="unsupported algorithms"):
            AccessTokenVerifier(
                StaticKeySource(),
                issuer=ISSUER,
                audience=AUDIENCE,
                algorithms=algorithms,
                clock=clock,
            )


# --- algorithm attacks -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_unsigned_alg_none_token_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, alg: str
) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": _signer("ES256").kid}
    token = f"{_segment(header)}.{_segment(_claims(clock))}."

    with pytest.raises(AlgorithmNotAllowed):
        await verifier.verify(token)


async def test_token_with_an_algorithm_outside_the_pinned_list_is_refused(
    make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    verifier = make_verifier(algorithms=["EdDSA"])

    with pytest.raises(AlgorithmNotAllowed):
        await verifier.verify(_signer("ES256").sign(_claims(clock)))


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_hs256_token_keyed_with_the_public_key_pem_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, alg: str
) -> None:
    victim = _signer(alg)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": victim.kid}
    token = _hs256_token(header, _claims(clock), victim.public_pem())

    with pytest.raises(AlgorithmNotAllowed):
        await verifier.verify(token)


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_hs256_confusion_is_refused_even_when_hs256_is_pinned(
    make_verifier: MakeVerifier, clock: ManualClock, alg: str
) -> None:
    # The key's own algorithm wins over the verifier's list and the token's header.
    verifier = make_verifier(algorithms=[*ASYMMETRIC, "HS256"])
    victim = _signer(alg)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": victim.kid}
    token = _hs256_token(header, _claims(clock), victim.public_pem())

    with pytest.raises(AlgorithmNotAllowed):
        await verifier.verify(token)


async def test_token_naming_another_asymmetric_algorithm_for_a_key_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    # Signed with our RSA key but claiming the ES256 key's kid.
    token = _signer("RS256").sign(_claims(clock), kid=_signer("ES256").kid)

    with pytest.raises(AlgorithmNotAllowed):
        await verifier.verify(token)


# --- time ------------------------------------------------------------------------------


async def test_token_is_still_accepted_just_inside_the_expiry_leeway(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256").sign(_claims(clock))
    clock.advance(TTL + LEEWAY - 0.001)

    assert (await verifier.verify(token)).subject == "user-7f3a"


async def test_token_is_refused_once_the_clock_passes_exp_plus_leeway(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256").sign(_claims(clock))
    clock.advance(TTL + LEEWAY)

    with pytest.raises(ExpiredToken):
        await verifier.verify(token)


async def test_token_whose_nbf_is_beyond_the_leeway_is_not_yet_valid(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    now = int(clock.now())
    token = _signer("ES256").sign(_claims(clock, nbf=now + 60))

    with pytest.raises(ImmatureToken):
        await verifier.verify(token)

    clock.advance(60 - LEEWAY)
    assert (await verifier.verify(token)).subject == "user-7f3a"


async def test_token_issued_in_the_future_is_not_yet_valid(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    now = int(clock.now())
    token = _signer("ES256").sign(_claims(clock, iat=now + 60, nbf=now))

    with pytest.raises(ImmatureToken):
        await verifier.verify(token)


async def test_small_clock_skew_on_iat_is_tolerated(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    now = int(clock.now())
    token = _signer("ES256").sign(_claims(clock, iat=now + int(LEEWAY), nbf=MISSING))

    assert (await verifier.verify(token)).subject == "user-7f3a"


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize(
    "value",
    [
        "1800000300",
        None,
        True,
        [1800000300],
        {"t": 1800000300},
        float("nan"),
        float("inf"),
        float("-inf"),
        10**400,
        -1,
    ],
    ids=[
        "string",
        "null",
        "bool",
        "list",
        "object",
        "nan",
        "infinity",
        "minus-infinity",
        "huge",
        "negative",
    ],
)
async def test_time_claim_that_is_not_a_finite_number_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, claim: str, value: Any
) -> None:
    token = _signer("ES256").sign(_claims(clock, **{claim: value}))

    with pytest.raises(InvalidClaims):
        await verifier.verify(token)


# --- audience and issuer ---------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "other-api",
        "",
        ["other-api", "billing-api"],
        [],
        "tessera-api ",
        {"tessera-api": True},
        42,
    ],
    ids=["other", "empty", "list-without-ours", "empty-list", "near-miss", "object", "number"],
)
async def test_token_not_meant_for_our_audience_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, aud: Any
) -> None:
    token = _signer("ES256").sign(_claims(clock, aud=aud))

    with pytest.raises(InvalidClaims):
        await verifier.verify(token)


async def test_audience_list_that_contains_ours_is_accepted(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256").sign(_claims(clock, aud=["billing-api", AUDIENCE]))

    assert (await verifier.verify(token)).subject == "user-7f3a"


@pytest.mark.parametrize("iss", ["https://evil.test", ISSUER + "/", ISSUER.upper(), [ISSUER], None])
async def test_token_from_another_issuer_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, iss: Any
) -> None:
    # Signed by hand: pyjwt refuses to encode a non-string iss.
    signer = _signer("ES256")
    header = {"alg": "ES256", "typ": "at+jwt", "kid": signer.kid}
    token = _signed_with_header(header, _claims(clock, iss=iss), signer)

    with pytest.raises(InvalidClaims):
        await verifier.verify(token)


# --- integrity -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_token_with_a_changed_claim_and_the_original_signature_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, alg: str
) -> None:
    header, _, signature = _signer(alg).sign(_claims(clock)).split(".")
    forged = f"{header}.{_segment(_claims(clock, sub='admin'))}.{signature}"

    with pytest.raises(InvalidSignature):
        await verifier.verify(forged)


@pytest.mark.parametrize("alg", ASYMMETRIC)
async def test_token_with_a_flipped_signature_byte_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, alg: str
) -> None:
    header, payload, signature = _signer(alg).sign(_claims(clock)).split(".")
    raw = bytearray(_unb64(signature))
    raw[len(raw) // 2] ^= 0x01
    forged = f"{header}.{payload}.{_b64(bytes(raw))}"

    with pytest.raises(InvalidSignature):
        await verifier.verify(forged)


async def test_token_with_a_truncated_signature_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    header, payload, signature = _signer("ES256").sign(_claims(clock)).split(".")
    forged = f"{header}.{payload}.{_b64(_unb64(signature)[:32])}"

    with pytest.raises(InvalidSignature):
        await verifier.verify(forged)


async def test_token_signed_by_a_key_we_do_not_hold_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256", "attacker").sign(_claims(clock), kid=_signer("ES256").kid)

    with pytest.raises(InvalidSignature):
        await verifier.verify(token)


# --- claims ----------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "jti"])
async def test_token_missing_a_required_claim_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, claim: str
) -> None:
    token = _signer("ES256").sign(_claims(clock, **{claim: MISSING}))

    with pytest.raises(InvalidClaims, match=claim):
        await verifier.verify(token)


@pytest.mark.parametrize("claim", ["sub", "jti"])
@pytest.mark.parametrize("value", ["", 123, None], ids=["empty", "number", "null"])
async def test_subject_and_token_id_must_be_non_empty_strings(
    verifier: AccessTokenVerifier, clock: ManualClock, claim: str, value: Any
) -> None:
    token = _signer("ES256").sign(_claims(clock, **{claim: value}))

    with pytest.raises(InvalidClaims):
        await verifier.verify(token)


async def test_nbf_is_optional(verifier: AccessTokenVerifier, clock: ManualClock) -> None:
    token = _signer("EdDSA").sign(_claims(clock, nbf=MISSING))

    assert (await verifier.verify(token)).subject == "user-7f3a"


# --- header ----------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", None, "jwt", "at+jwt ", "dpop+jwt", 1], ids=str)
async def test_token_that_is_not_typed_as_an_access_token_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, typ: Any
) -> None:
    # pyjwt drops a None typ from the header, so None means "no typ at all".
    token = _signer("ES256").sign(_claims(clock), typ=typ)
    if typ is None:
        assert "typ" not in jwt.get_unverified_header(token)

    with pytest.raises(InvalidClaims, match="typ"):
        await verifier.verify(token)


async def test_token_naming_an_unknown_kid_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256").sign(_claims(clock), kid="no-such-key")

    with pytest.raises(UnknownKey):
        await verifier.verify(token)


@pytest.mark.parametrize(
    "kid", [MISSING, "", None, 7, "k" * 129], ids=["missing", "empty", "null", "number", "long"]
)
async def test_token_without_a_usable_kid_is_malformed(
    verifier: AccessTokenVerifier, clock: ManualClock, kid: Any
) -> None:
    header: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt"}
    if kid is not MISSING:
        header["kid"] = kid
    # Signed by hand: pyjwt would refuse some of these kids while encoding.
    token = _signed_with_header(header, _claims(clock), _signer("ES256"))

    with pytest.raises(MalformedToken):
        await verifier.verify(token)


@pytest.mark.parametrize("parameter", ["jku", "x5u", "jwk"])
async def test_key_location_headers_never_choose_the_verification_key(
    verifier: AccessTokenVerifier, clock: ManualClock, parameter: str
) -> None:
    attacker = _signer("ES256", "attacker")
    pointer: Any = {
        "jku": "https://evil.test/jwks.json",
        "x5u": "https://evil.test/cert.pem",
        "jwk": public_jwk("ES256", attacker.private_key),
    }[parameter]
    token = attacker.sign(_claims(clock), kid=_signer("ES256").kid, **{parameter: pointer})

    with pytest.raises(InvalidSignature):
        await verifier.verify(token)


async def test_jku_header_with_the_attackers_own_kid_finds_no_key(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    attacker = _signer("ES256", "attacker")
    token = attacker.sign(_claims(clock), jku="https://evil.test/jwks.json")

    with pytest.raises(UnknownKey):
        await verifier.verify(token)


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["urn:example:unknown"]], ids=str)
async def test_token_with_critical_header_parameters_is_refused(
    verifier: AccessTokenVerifier, clock: ManualClock, crit: list[str]
) -> None:
    token = _signer("ES256").sign(_claims(clock), crit=crit)

    with pytest.raises(MalformedToken):
        await verifier.verify(token)


# --- malformed input -------------------------------------------------------------------


async def test_oversize_token_is_refused_before_it_is_parsed(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256").sign(_claims(clock, padding="x" * MAX_TOKEN_LENGTH))
    assert len(token) > MAX_TOKEN_LENGTH

    with pytest.raises(MalformedToken):
        await verifier.verify(token)


_GARBAGE = {
    "empty": "",
    "word": "garbage",
    "two-segments": "abc.def",
    "four-segments": "a.b.c.d",
    "dots": "...",
    "bad-base64": "a.b.c",
    "header-not-json": f"{_b64(b'not json')}.e30.",
    "header-json-array": f"{_b64(b'[]')}.e30.",
    "header-not-utf8": f"{_b64(bytes([0xFF, 0xFE, 0xFD]))}.e30.",
    "non-ascii": "ñ.ñ.ñ",
    "bearer-prefix": "Bearer abc.def.ghi",
}


@pytest.mark.parametrize("token", list(_GARBAGE.values()), ids=list(_GARBAGE))
async def test_garbage_is_malformed(verifier: AccessTokenVerifier, token: str) -> None:
    with pytest.raises(MalformedToken):
        await verifier.verify(token)


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1, 2]", b'"a string"'], ids=["text", "array", "string"]
)
async def test_correctly_signed_payload_that_is_not_a_json_object_is_malformed(
    verifier: AccessTokenVerifier, payload: bytes
) -> None:
    signer = _signer("ES256")
    token = canonical_es256_token(
        jwt.api_jws.encode(
            payload,
            signer.private_key,
            algorithm="ES256",
            headers={"kid": signer.kid, "typ": "at+jwt"},
        )
    )

    with pytest.raises(MalformedToken):
        await verifier.verify(token)


async def test_every_refusal_is_an_invalid_token_error(
    verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    # The middleware maps the base class to 401; no refusal may escape it.
    for token in ["", "a.b.c", _signer("ES256").sign(_claims(clock), kid="nope")]:
        with pytest.raises(InvalidTokenError):
            await verifier.verify(token)


# --- revocation ------------------------------------------------------------------------


async def test_revoked_token_id_is_refused_by_verify_but_not_by_the_cacheable_check(
    make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    class RevokedIds(set[str]):
        """A checker on a set: this test is about the verifier, not the plane."""

        async def is_token_revoked(self, token: AccessTokenClaims) -> bool:
            return token.token_id in self

    revoked = RevokedIds()
    verifier = make_verifier(revocations=revoked)
    claims = _claims(clock)
    token = _signer("ES256").sign(claims)
    other = _signer("ES256").sign(_claims(clock))

    revoked.add(claims["jti"])

    with pytest.raises(RevokedToken):
        await verifier.verify(token)
    assert (await verifier.verify_signature_and_claims(token)).token_id == claims["jti"]
    assert (await verifier.verify(other)).subject == "user-7f3a"


# --- shared-secret mode ----------------------------------------------------------------


@pytest.fixture
def hs256_verifier(make_verifier: MakeVerifier) -> AccessTokenVerifier:
    return make_verifier(
        keys=StaticKeySource([VerificationKey(kid="hs256-main", alg="HS256", key=HS256_SECRET)]),
        algorithms=["HS256"],
    )


def _hs256_signer() -> Signer:
    return Signer(alg="HS256", kid="hs256-main", private_key=HS256_SECRET)


async def test_shared_secret_verifier_accepts_an_hs256_token(
    hs256_verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _hs256_signer().sign(_claims(clock))

    assert (await hs256_verifier.verify(token)).subject == "user-7f3a"


async def test_shared_secret_verifier_refuses_an_es256_token(
    hs256_verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    token = _signer("ES256").sign(_claims(clock), kid="hs256-main")

    with pytest.raises(AlgorithmNotAllowed):
        await hs256_verifier.verify(token)


async def test_shared_secret_key_refuses_an_es256_token_even_when_es256_is_pinned(
    make_verifier: MakeVerifier, clock: ManualClock
) -> None:
    verifier = make_verifier(
        keys=StaticKeySource([VerificationKey(kid="hs256-main", alg="HS256", key=HS256_SECRET)]),
        algorithms=["HS256", "ES256"],
    )
    token = _signer("ES256").sign(_claims(clock), kid="hs256-main")

    with pytest.raises(AlgorithmNotAllowed):
        await verifier.verify(token)


async def test_shared_secret_verifier_refuses_a_token_made_with_another_secret(
    hs256_verifier: AccessTokenVerifier, clock: ManualClock
) -> None:
    other = Signer(alg="HS256", kid="hs256-main", private_key=secrets.token_bytes(32))
    token = other.sign(_claims(clock))

    with pytest.raises(InvalidSignature):
        await hs256_verifier.verify(token)
