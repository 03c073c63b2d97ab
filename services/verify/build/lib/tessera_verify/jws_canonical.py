"""The one spelling of a compact JWS that tessera signs and accepts.

A token has other spellings that lenient verifiers take for the same token:
base64url whose last character has its unused low bits set (Python's decoder
ignores them), and, for ECDSA, the signature ``(r, n - s)`` beside ``(r, s)``
(both verify). Anything keyed by a token's text (the verified-token cache, logs,
denylists built by others) would count one token twice, so the auth service
signs only the canonical form and verifiers accept nothing else: strict
base64url that re-encodes to itself, and low-s ES256 signatures (``s <= n/2``,
as Bitcoin's BIP 62 and libsecp256k1 require).
"""

from __future__ import annotations

import base64
import binascii

#: The order n of the P-256 group (SEC 2, secp256r1).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ES256_SIGNATURE_LENGTH = 64  # r || s, 32 bytes each (RFC 7518 §3.4)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_canonical(segment: str) -> bytes | None:
    """The bytes of an unpadded base64url ``segment``, or None unless it is their only spelling."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if b64url_encode(data) == segment else None


def is_low_s_es256(signature: bytes) -> bool:
    """Whether an ES256 signature ``r || s`` has ``0 < s <= n/2``."""
    if len(signature) != _ES256_SIGNATURE_LENGTH:
        return False
    s = int.from_bytes(signature[32:], "big")
    return 0 < s <= P256_ORDER // 2


def to_low_s_es256(signature: bytes) -> bytes:
    """The low-s twin of an ES256 signature (itself when already low)."""
    if len(signature) != _ES256_SIGNATURE_LENGTH:
        raise ValueError("an ES256 signature is 64 bytes")
    s = int.from_bytes(signature[32:], "big")
    if s <= P256_ORDER // 2:
        return signature
    return signature[:32] + (P256_ORDER - s).to_bytes(32, "big")


def canonical_es256_token(token: str) -> str:
    """``token`` (a compact JWS signed with ES256) with its signature brought to low s."""
    head, _, signature_b64 = token.rpartition(".")
    signature = b64url_decode_canonical(signature_b64)
    if not head or signature is None:
        raise ValueError("not a compact JWS")
    return f"{head}.{b64url_encode(to_low_s_es256(signature))}"
