"""The one error hierarchy of tessera.

Handlers raise these; :func:`tessera_verify.error_middleware.error_middleware` turns
them into RFC 9457 problem details (``application/problem+json``)::

    {"type": "about:blank", "title": "Unauthorized", "status": 401,
     "detail": "invalid username or password", "error": "invalid_credentials"}

plus ``WWW-Authenticate`` where RFC 6750 asks for it. ``error`` (an extension
member) is the stable code, meant for programs; ``detail`` is for people and
may change; what else an error knows (``retry_after``, the ``field`` at fault,
the password ``rule`` broken) are further extension members. The OAuth
endpoints answer in RFC 6749 §5.2's shape instead (:meth:`TesseraError.oauth_body`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

REALM = "tessera"
PROBLEM_JSON = "application/problem+json"
#: The members RFC 9457 defines, and ours: an error's details never overwrite them.
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "error"})


class TesseraError(Exception):
    """Base of every error tessera reports to a client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal error"
    #: The RFC 6749 / 7009 / 7662 error code this error is, where one applies
    #: (:meth:`oauth_body`); None: ``server_error`` for a 5xx, else :attr:`code`.
    oauth_code: ClassVar[str | None] = None

    def __init__(self, message: str | None = None, *, details: Mapping[str, Any] | None = None):
        self.message = message or self.default_message
        self.details = dict(details or {})
        if clash := PROBLEM_MEMBERS & self.details.keys():
            raise ValueError(f"details may not redefine {sorted(clash)}")
        super().__init__(self.message)

    def www_authenticate(self) -> str | None:
        return None

    def extra_headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        """The RFC 9457 problem details of this error."""
        return problem(self.status, self.code, self.message, **self.details)

    def oauth_body(self) -> dict[str, Any]:
        """RFC 6749 §5.2's error response (the token, introspection and revocation
        endpoints): ``error`` and ``error_description``.

        ``error`` is the OAuth code where the RFCs have one (a bad body is
        ``invalid_request`` whatever tessera calls it; an outage is RFC 6749
        §4.1.2.1's ``temporarily_unavailable``), tessera's own code otherwise."""
        code = self.oauth_code or ("server_error" if self.status >= 500 else self.code)
        return {"error": code, "error_description": self.message}


def problem(status: int, code: str, detail: str, **extensions: Any) -> dict[str, Any]:
    """An RFC 9457 problem: ``about:blank`` with the status phrase as its title (every
    tessera problem is told apart by ``error``, the stable code)."""
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "error": code,
        **extensions,
    }


# --- 4xx: the request itself is wrong -------------------------------------------------


class BadRequest(TesseraError):
    status = 400
    code = "bad_request"
    default_message = "bad request"
    oauth_code = "invalid_request"


class MalformedJSON(BadRequest):
    code = "malformed_json"
    default_message = "request body is not valid JSON"


class InvalidRequest(BadRequest):
    """A well-formed body whose fields are missing or invalid."""

    code = "invalid_request"
    default_message = "request fields are missing or invalid"


class DuplicateCookie(BadRequest):
    """A credential cookie sent more than once: which copy is meant cannot be known."""

    code = "duplicate_cookie"
    default_message = "a cookie was sent more than once"


class WeakPassword(InvalidRequest):
    """A new password breaks the password policy; ``details["rule"]`` names the rule."""

    code = "weak_password"
    default_message = "the password does not meet the password policy"


class UnsupportedMediaType(TesseraError):
    status = 415
    code = "unsupported_media_type"
    default_message = "unsupported content type"
    oauth_code = "invalid_request"


class PayloadTooLarge(TesseraError):
    status = 413
    code = "payload_too_large"
    default_message = "request body is too large"
    oauth_code = "invalid_request"


class NotFound(TesseraError):
    status = 404
    code = "not_found"
    default_message = "not found"
    oauth_code = "invalid_request"


class MethodNotAllowed(TesseraError):
    status = 405
    code = "method_not_allowed"
    default_message = "method not allowed"
    oauth_code = "invalid_request"


class Forbidden(TesseraError):
    status = 403
    code = "forbidden"
    default_message = "forbidden"


class WrongCurrentPassword(Forbidden):
    """A signed-in caller got the current password wrong: 403, not 401 (still signed in)."""

    code = "wrong_current_password"
    default_message = "the current password is wrong"


class RegistrationDisabled(Forbidden):
    code = "registration_disabled"
    default_message = "registration is disabled on this server"


class CSRFRejected(Forbidden):
    code = "csrf_rejected"
    default_message = "cross-site request refused"


class Conflict(TesseraError):
    status = 409
    code = "conflict"
    default_message = "conflict"


class UsernameTaken(Conflict):
    code = "username_taken"
    default_message = "that username is already registered"


class InvalidGrant(BadRequest):
    """RFC 6749 §5.2: the refresh token is invalid, expired, revoked or already used."""

    code = "invalid_grant"
    default_message = "the refresh token is invalid, expired or already used"
    oauth_code = code


class UnsupportedGrantType(BadRequest):
    code = "unsupported_grant_type"
    default_message = "unsupported grant_type"
    oauth_code = code


class TooManyAttempts(TesseraError):
    """Login throttling: too many recent failures for this account or address."""

    status = 429
    code = "too_many_attempts"
    default_message = "too many failed attempts; try again later"

    def __init__(self, retry_after: int) -> None:
        super().__init__(details={"retry_after": retry_after})
        self.retry_after = retry_after

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


# --- 401: who are you? -----------------------------------------------------------------


class AuthenticationError(TesseraError):
    status = 401
    code = "unauthenticated"
    default_message = "authentication required"

    def www_authenticate(self) -> str | None:
        return f'Bearer realm="{REALM}"'


class InvalidCredentials(AuthenticationError):
    """Unknown user and wrong password alike: one answer for both."""

    code = "invalid_credentials"
    default_message = "invalid username or password"


class InvalidSession(AuthenticationError):
    code = "invalid_session"
    default_message = "the session is unknown or has expired"


class CredentialNotAccepted(AuthenticationError):
    """A credential of a kind this service does not take, and nothing it does take: a
    bearer token sent where only sessions are accepted. ``details["accepted_methods"]``
    lists the kinds it takes (``AuthMethod`` values)."""

    code = "credential_not_accepted"
    default_message = "this service does not accept this kind of credential"

    def __init__(self, message: str, *, accepted_methods: Sequence[str]) -> None:
        super().__init__(message, details={"accepted_methods": list(accepted_methods)})

    def www_authenticate(self) -> str | None:
        # A 401 must carry a challenge (RFC 9110 §11.6.1), and a Bearer one would ask
        # for the very token refused. No registered scheme names a session cookie;
        # "Cookie" (draft-broyer-http-cookie-auth) says what is expected instead.
        return f'Cookie realm="{REALM}"'


class InvalidTokenError(AuthenticationError):
    """Base of every reason an access token is refused (the pyjwt model)."""

    code = "invalid_token"
    default_message = "the access token is invalid"

    def www_authenticate(self) -> str | None:
        description = self.message.replace('"', "'")
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'


class MalformedToken(InvalidTokenError):
    default_message = "the access token is malformed"


class AlgorithmNotAllowed(InvalidTokenError):
    default_message = "the token's algorithm is not accepted"


class UnknownKey(InvalidTokenError):
    default_message = "the token's signing key is unknown"


class InvalidSignature(InvalidTokenError):
    default_message = "the token's signature is invalid"


class ExpiredToken(InvalidTokenError):
    default_message = "the access token has expired"


class ImmatureToken(InvalidTokenError):
    default_message = "the access token is not yet valid"


class InvalidClaims(InvalidTokenError):
    default_message = "the access token's claims are invalid"


class RevokedToken(InvalidTokenError):
    default_message = "the access token has been revoked"


# --- 5xx: our side ----------------------------------------------------------------------


class ServiceUnavailable(TesseraError):
    """A dependency (Redis, PostgreSQL, the JWKS endpoint) cannot be reached: fail closed."""

    status = 503
    code = "dependency_unavailable"
    default_message = "a dependency is unavailable; try again later"
    oauth_code = "temporarily_unavailable"

    #: Seconds a client should wait: dependencies come back, and the verify side
    #: re-proves its revocation state, within about a second (README, "When Redis fails").
    retry_after = 1

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServerBusy(ServiceUnavailable):
    """This process has as much password hashing queued as it may hold: shed, never pile up."""

    code = "server_busy"
    default_message = "the server is busy; try again shortly"
