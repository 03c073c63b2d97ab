"""The refresh token's format, fuzzed against a reference written apart from the store.

A token is its family's ID, its generation and a MAC of both
(:mod:`tessera_auth.refresh_tokens`). The store accepts a string without asking
Redis only when it is exactly the token the reference makes for the family and
generation it names: no other spelling, no changed character, no other key.
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


def reference(family: str, generation: int, key: bytes = KEY) -> str:
    """The token of ``family``'s ``generation``, as the format's description says."""
    prefix = family + base64.urlsafe_b64encode(struct.pack(">I", generation)).decode()[:6]
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
def test_the_store_makes_the_reference_token_and_reads_it_back(
    store: RefreshTokenStore, family: str, generation: int
) -> None:
    token = store._token(family, generation)
    assert token == reference(family, generation)
    assert len(token) == 49
    assert parsed(store, token) == (family, generation)


@given(
    family=FAMILY,
    generation=GENERATION,
    position=st.integers(min_value=0, max_value=48),
    replacement=st.sampled_from(ALPHABET),
)
def test_a_token_with_any_character_changed_is_refused(
    store: RefreshTokenStore, family: str, generation: int, position: int, replacement: str
) -> None:
    genuine = reference(family, generation)
    changed = genuine[:position] + replacement + genuine[position + 1 :]
    expected = (family, generation) if changed == genuine else None
    assert parsed(store, changed) == expected


@given(candidate=st.text(ALPHABET + "=.+/ ", min_size=0, max_size=60))
def test_an_arbitrary_string_is_accepted_only_if_it_is_the_reference_token(
    store: RefreshTokenStore, candidate: str
) -> None:
    result = parsed(store, candidate)
    if result is None:
        return
    family, generation = result
    assert candidate == reference(family, generation)


@given(family=FAMILY, generation=GENERATION)
def test_a_token_made_with_another_key_is_refused(
    store: RefreshTokenStore, family: str, generation: int
) -> None:
    assert parsed(store, reference(family, generation, key=b"x" * 32)) is None


def test_another_spelling_of_the_same_generation_is_refused(store: RefreshTokenStore) -> None:
    """Six base64 characters carry 36 bits for a 4-byte number: the last one's low bits
    are padding a lenient decoder ignores. A token spelled with them set, even with
    the MAC of the canonical spelling, is not the token."""
    genuine = reference("f" * 16, 0)
    assert genuine[16:22] == "AAAAAA"
    respelled = genuine[:21] + "B" + genuine[22:]
    assert base64.urlsafe_b64decode(respelled[16:22] + "==") == b"\0\0\0\0"
    assert parsed(store, genuine) == ("f" * 16, 0)
    assert parsed(store, respelled) is None
