"""The refresh token's format, fuzzed against a reference written apart from the store.

A token is its family's ID, its generation, 96 random bits and a MAC of the three
(:mod:`tessera_auth.refresh_tokens`). The store takes a string for genuine, without
asking Redis, only when it is exactly the token the reference makes for the family,
generation and random part it names: no other spelling, no changed character, no
other key. (Whether a genuine token is the family's current one is Redis's part.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_verify.clock import ManualClock
from tessera_verify.errors import InvalidGrant

KEY = b"k" * 32
ALPHABET = string.ascii_letters + string.digits + "-_"
FAMILY = st.text(ALPHABET, min_size=16, max_size=16)
GENERATION = st.integers(min_value=0, max_value=2**32 - 1)
NONCE = st.binary(min_size=12, max_size=12)


def reference(family: str, generation: int, nonce: bytes, key: bytes = KEY) -> str:
    """The token of ``family``'s ``generation`` with random part ``nonce``, as the
    format's description says."""
    prefix = (
        family
        + base64.urlsafe_b64encode(struct.pack(">I", generation)).decode()[:6]
        + base64.urlsafe_b64encode(nonce).decode()
    )
    mac = hmac.new(key, b"refresh-token-mac:" + prefix.encode(), hashlib.sha256).digest()
    return prefix + base64.urlsafe_b64encode(mac[:20]).decode().rstrip("=")


@pytest.fixture(scope="module")
def store() -> RefreshTokenStore:
    # Parsing never reaches Redis: the client is made, never connected.
    return RefreshTokenStore(Redis(), hash_key=KEY, ttl=3600, clock=ManualClock(0.0))


def parsed(store: RefreshTokenStore, token: str) -> tuple[str, int] | None:
    try:
        return store._parse(token)
    except InvalidGrant:
        return None


@given(family=FAMILY, generation=GENERATION)
def test_the_store_makes_tokens_of_the_format_and_reads_them_back(
    store: RefreshTokenStore, family: str, generation: int
) -> None:
    token = store._token(family, generation)
    nonce = base64.urlsafe_b64decode(token[22:38])
    assert token == reference(family, generation, nonce)
    assert len(token) == 65
    assert parsed(store, token) == (family, generation)
    assert store._token(family, generation) != token  # a new random part each time


@given(family=FAMILY, generation=GENERATION, nonce=NONCE)
def test_the_store_reads_back_every_reference_token(
    store: RefreshTokenStore, family: str, generation: int, nonce: bytes
) -> None:
    assert parsed(store, reference(family, generation, nonce)) == (family, generation)


@given(
    family=FAMILY,
    generation=GENERATION,
    nonce=NONCE,
    position=st.integers(min_value=0, max_value=64),
    replacement=st.sampled_from(ALPHABET),
)
def test_a_token_with_any_character_changed_is_refused(
    store: RefreshTokenStore,
    family: str,
    generation: int,
    nonce: bytes,
    position: int,
    replacement: str,
) -> None:
    genuine = reference(family, generation, nonce)
    changed = genuine[:position] + replacement + genuine[position + 1 :]
    expected = (family, generation) if changed == genuine else None
    assert parsed(store, changed) == expected


@given(candidate=st.text(ALPHABET + "=.+/ \n", min_size=0, max_size=80))
def test_an_arbitrary_string_is_accepted_only_if_it_is_a_reference_token(
    store: RefreshTokenStore, candidate: str
) -> None:
    result = parsed(store, candidate)
    if result is None:
        return
    family, generation = result
    assert candidate == reference(family, generation, base64.urlsafe_b64decode(candidate[22:38]))


@given(family=FAMILY, generation=GENERATION, nonce=NONCE)
def test_a_token_made_with_another_key_is_refused(
    store: RefreshTokenStore, family: str, generation: int, nonce: bytes
) -> None:
    assert parsed(store, reference(family, generation, nonce, key=b"x" * 32)) is None


def test_another_spelling_of_the_same_generation_is_refused(store: RefreshTokenStore) -> None:
    """Six base64 characters carry 36 bits for a 4-byte number: the last one's low bits
    are padding a lenient decoder ignores. A token spelled with them set, even with
    the MAC of the canonical spelling, is not the token."""
    genuine = reference("f" * 16, 0, b"\0" * 12)
    assert genuine[16:22] == "AAAAAA"
    respelled = genuine[:21] + "B" + genuine[22:]
    assert base64.urlsafe_b64decode(respelled[16:22] + "==") == b"\0\0\0\0"
    assert parsed(store, genuine) == ("f" * 16, 0)
    assert parsed(store, respelled) is None
    assert parsed(store, genuine + "\n") is None  # a regex's $ would let it through
