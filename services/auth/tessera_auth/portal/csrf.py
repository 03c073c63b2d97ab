"""The portal's CSRF defence: a synchronizer token in every form, on top of the
same-origin check every cookie-authenticated write of tessera gets.

:func:`tessera_platform.csrf.check_same_origin` (``Origin``, ``Sec-Fetch-Site``) and
SameSite cookies stop a cross-site post in current browsers; the token stops it
where those are missing or wrong (an old browser, a proxy that strips ``Origin``),
and stops login CSRF, where no session exists yet to be SameSite about.

A token is an HMAC, so the server keeps no state for it. It is bound to the browser:

- before login, to a random value in the ``__Host-tessera_csrf`` cookie, set with
  the login form (HttpOnly, SameSite=Strict: another site can neither read nor
  send it);
- once logged in, to the session ID, so it dies with the session and a new login
  makes new ones.

The key is derived from the auth service's key-encryption key, which only the auth
service holds: a replica holds the session hash key, and must not be able to make
tokens for the auth service's forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera_verify.cookies import cookie_value
from tessera_verify.errors import CSRFRejected

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "INSECURE_CSRF_COOKIE",
    "FormTokens",
    "browser_secret",
    "csrf_cookie_name",
    "new_browser_secret",
    "set_browser_secret",
]

CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "__Host-tessera_csrf"
#: Only for plain-HTTP loopback development, where browsers refuse ``__Host-`` cookies.
INSECURE_CSRF_COOKIE = "tessera_csrf"

_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


def csrf_cookie_name(*, insecure: bool) -> str:
    return INSECURE_CSRF_COOKIE if insecure else CSRF_COOKIE


def browser_secret(request: web.Request, name: str) -> str | None:
    """The browser's CSRF cookie value if it has a well-formed one (a cookie sent twice
    is a 400, as for every credential cookie)."""
    value = cookie_value(request, name)
    return value if value is not None and _SECRET.fullmatch(value) else None


def new_browser_secret() -> str:
    return secrets.token_urlsafe(32)


def set_browser_secret(
    response: web.StreamResponse, name: str, secret: str, *, secure: bool
) -> None:
    """The CSRF cookie: a browser-session cookie no other site can read or send."""
    response.set_cookie(name, secret, path="/", secure=secure, httponly=True, samesite="Strict")


def _derive(key_encryption_key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"tessera portal csrf tokens"
    ).derive(key_encryption_key)


@dataclass(frozen=True)
class FormTokens:
    """Makes and checks the token every portal form carries in :data:`CSRF_FIELD`."""

    key: bytes = field(repr=False)

    @classmethod
    def from_key_encryption_key(cls, key_encryption_key: bytes) -> FormTokens:
        return cls(_derive(key_encryption_key))

    def for_browser(self, secret: str) -> str:
        """The token of the login form, bound to the browser's CSRF cookie."""
        return self._mac(b"browser\x00" + secret.encode())

    def for_session(self, session_id: str) -> str:
        """The token of a signed-in page's forms, bound to its session."""
        return self._mac(b"session\x00" + session_id.encode())

    @staticmethod
    def check(expected: str, sent: str | None) -> None:
        """Raise :class:`CSRFRejected` (403) unless ``sent`` is the ``expected`` token."""
        if sent is None or not hmac.compare_digest(expected.encode(), sent.encode()):
            raise CSRFRejected("the form's CSRF token is missing or wrong")

    def _mac(self, message: bytes) -> str:
        digest = hmac.digest(self.key, message, hashlib.sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
