"""What a new password must be: NIST SP 800-63B-4 §3.1.1.2 and OWASP ASVS V2.1.

Length is the only strength rule that is measured; there are no composition
rules (no "one digit, one symbol"), which NIST forbids because they make
passwords predictable, not strong. Instead a password is refused when it is
known: on a list of common and breached passwords, built from the username or
the service's name, or made of a handful of repeated characters.

Every password is normalised to Unicode NFKC before it is measured, compared
or hashed, and again before it is verified, so the same password typed as NFC
on one keyboard and as NFD on another is one password, and a length is a
number of code points a person would count. :data:`MAX_INPUT_LENGTH` bounds
the raw request field before that work; :attr:`PasswordPolicy.max_length`
bounds what is hashed.
"""

from __future__ import annotations

import gzip
import unicodedata
from dataclasses import dataclass, field
from importlib import resources

from tessera_verify.errors import WeakPassword

#: NIST's floor for any password; a shorter minimum is refused in the settings.
MIN_LENGTH_FLOOR = 8
#: SP 800-63B-4: a password that is the only factor SHALL be at least 15 long.
DEFAULT_MIN_LENGTH = 15
#: Bounds the Argon2 input; NIST asks to allow at least 64.
MAX_LENGTH = 128
#: Raw characters a request may carry in a password field. Above MAX_LENGTH so that
#: NFKC may shrink a long spelling, and so accounts made when the limit was 1024 can
#: still log in; NFKC expands a code point at most 18 times, so its work stays bounded.
MAX_INPUT_LENGTH = 1024
#: Fewer distinct characters than this is a repetition ("aaaa…", "abab…"), not a password.
MIN_DISTINCT = 5
#: The service's own name, a context word NIST names beside the username.
SERVICE_NAME = "tessera"

BLOCKLIST_RESOURCE = "data/common-passwords.txt.gz"  # provenance: data/README.md


def normalize_password(raw: str) -> str:
    """The form that is measured, hashed and verified."""
    return unicodedata.normalize("NFKC", raw)


def load_blocklist() -> frozenset[str]:
    """The shipped list of common passwords, case-folded (19,640 entries)."""
    packed = resources.files("tessera_auth").joinpath(BLOCKLIST_RESOURCE).read_bytes()
    lines = gzip.decompress(packed).decode("utf-8").splitlines()
    return frozenset(_fold(line) for line in lines if line.strip())


def _fold(password: str) -> str:
    return normalize_password(password).casefold().strip()


@dataclass(frozen=True)
class PasswordPolicy:
    """Checks a new password; :meth:`check` returns the form to hash."""

    min_length: int = DEFAULT_MIN_LENGTH
    max_length: int = MAX_LENGTH
    blocklist: frozenset[str] = field(default_factory=load_blocklist, repr=False)

    def check(self, password: str, *, username: str, field_name: str = "password") -> str:
        """``password`` in NFKC, or :class:`WeakPassword` naming the first rule it breaks.

        ``username`` is the normalised username the password is for.
        """
        secret = normalize_password(password)
        length = len(secret)
        if length < self.min_length:
            raise _weak(
                field_name,
                "too_short",
                f"password must be at least {self.min_length} characters "
                f"(counted after Unicode NFKC normalisation; got {length})",
                min_length=self.min_length,
            )
        if length > self.max_length:
            raise _weak(
                field_name,
                "too_long",
                f"password must be at most {self.max_length} characters",
                max_length=self.max_length,
            )
        folded = _fold(secret)
        if folded in self.blocklist or "".join(folded.split()) in self.blocklist:
            raise _weak(
                field_name, "common", "password is on a list of common or breached passwords"
            )
        if len(set(folded)) < MIN_DISTINCT:
            raise _weak(
                field_name,
                "repetitive",
                f"password must use at least {MIN_DISTINCT} different characters",
            )
        for word, rule in ((username, "username"), (SERVICE_NAME, "service_name")):
            if _built_from(folded, _fold(word)):
                raise _weak(
                    field_name,
                    rule,
                    f"password must not be the {rule.replace('_', ' ')}, contain it "
                    "with little else, or be part of it",
                )
        return secret


def _built_from(folded: str, word: str) -> bool:
    """The password is ``word``, part of it, or ``word`` plus fewer than 8 other characters.

    "alice2024!" is built from "alice"; "alice's long garden path" is not: what is
    left would be a password of its own.
    """
    if not word:
        return False
    if folded in word:
        return True
    return word in folded and len(folded.replace(word, "")) < MIN_LENGTH_FLOOR


def _weak(field_name: str, rule: str, message: str, **limits: int) -> WeakPassword:
    return WeakPassword(message, details={"field": field_name, "rule": rule, **limits})
