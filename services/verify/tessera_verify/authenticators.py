"""Request authentication for any service: one authenticator per credential kind,
tried in order by one :class:`Authentication`, which the replicas' middleware, the
auth service's handlers and the ASGI middleware all use. Authenticators read a
:class:`~tessera_verify.request_view.RequestView` (headers and peer address), so an
aiohttp request and an ASGI scope are checked by the same code.

An authenticator returns a :class:`Principal` when the request carries its kind
of credential and that credential is valid, ``None`` when the request does not
carry it at all, and raises an :class:`AuthenticationError` when the credential
is present but bad (expired, revoked, forged): a bad credential is never
silently ignored in favour of another one.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Protocol

from .access_tokens import AccessTokenVerifier
from .client_ip import Network, is_trusted
from .cookies import cookie_value
from .errors import (
    AuthenticationError,
    CredentialNotAccepted,
    ExpiredToken,
    InvalidSession,
    RevokedToken,
)
from .principal import AuthMethod, Principal, bearer_token
from .request_view import RequestView
from .sessions import SessionManager

FORWARD_USER_ID_HEADER = "X-Tessera-User-Id"
FORWARD_USERNAME_HEADER = "X-Tessera-Username"
FORWARD_SECRET_HEADER = "X-Tessera-Forward-Secret"  # noqa: S105 - a header name
FORWARD_METHOD_HEADER = "X-Tessera-Auth-Method"


def decision_outcome(error: AuthenticationError) -> str:
    """The ``outcome`` label of ``tessera_auth_decisions_total`` for a refusal."""
    if isinstance(error, ExpiredToken):
        return "expired"
    if isinstance(error, RevokedToken):
        return "revoked"
    if isinstance(error, InvalidSession):
        return "unknown"  # no such session (never issued, expired or logged out)
    return "invalid"


class Authenticator(Protocol):
    method: AuthMethod

    async def authenticate(self, request: RequestView) -> Principal | None: ...


class DecisionRecorder(Protocol):
    """Where decisions are counted (``tessera_auth_decisions_total``: ServiceMetrics)."""

    def decided(self, method: str, outcome: str) -> None: ...


class Authentication:
    """The credentials a service accepts, tried in order; each decision counted once.

    The first authenticator that finds its kind of credential decides: a valid
    one is the caller, a bad one is refused (never passed over for the next).
    """

    def __init__(
        self, authenticators: Sequence[Authenticator], metrics: DecisionRecorder | None = None
    ) -> None:
        self.authenticators = tuple(authenticators)
        self._metrics = metrics

    async def identify(self, request: RequestView) -> Principal | None:
        """The caller, or None when the request carries no credential at all;
        :class:`AuthenticationError` when it carries a bad one, or only one of a kind
        this service does not accept (:class:`CredentialNotAccepted`)."""
        for authenticator in self.authenticators:
            try:
                principal = await authenticator.authenticate(request)
            except AuthenticationError as error:
                self._decided(authenticator.method, decision_outcome(error))
                raise
            if principal is not None:
                self._decided(authenticator.method, "ok")
                return principal
        if bearer_token(request) is not None and not self.accepts(AuthMethod.JWT):
            # Not anonymous: the caller sent a token this service cannot read. Say so,
            # and what it takes instead, rather than challenge for a bearer token.
            accepted = [authenticator.method.value for authenticator in self.authenticators]
            raise CredentialNotAccepted(
                "this service does not accept bearer tokens; it accepts "
                + (", ".join(accepted) or "no credential"),
                accepted_methods=accepted,
            )
        return None

    def accepts(self, method: AuthMethod) -> bool:
        """Whether one of the authenticators takes ``method``'s credentials."""
        return any(authenticator.method is method for authenticator in self.authenticators)

    async def require(self, request: RequestView) -> Principal:
        """The caller; :class:`AuthenticationError` (401) when there is none."""
        principal = await self.identify(request)
        if principal is None:
            raise AuthenticationError()
        return principal

    def _decided(self, method: AuthMethod, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.decided(method.value, outcome)


class BearerTokenAuthenticator:
    """``Authorization: Bearer <access token>``, verified locally (JWKS + denylist)."""

    method = AuthMethod.JWT

    def __init__(self, verifier: AccessTokenVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, request: RequestView) -> Principal | None:
        token = bearer_token(request)
        if token is None:
            return None
        claims = await self._verifier.verify(token)
        return Principal(user_id=claims.subject, method=self.method, token=claims)


class SessionCookieAuthenticator:
    """A session cookie looked up in a session store (shared Redis or this process)."""

    def __init__(self, manager: SessionManager, *, cookie_name: str, method: AuthMethod) -> None:
        self._manager = manager
        self.cookie_name = cookie_name
        self.method = method

    async def authenticate(self, request: RequestView) -> Principal | None:
        session_id = cookie_value(request, self.cookie_name)
        if not session_id:
            return None
        session = await self._manager.load(session_id)
        if session is None:
            raise InvalidSession()
        return Principal(
            user_id=session.record.user_id,
            username=session.record.username,
            method=self.method,
            session=session,
        )


class ForwardedIdentityAuthenticator:
    """Identity headers set by nginx after an ``auth_request`` to the auth service.

    Believed only when the direct peer is a configured proxy *and* the request
    carries the shared forward secret, so a client that reaches a replica
    directly cannot claim to be anyone.
    """

    method = AuthMethod.FORWARD

    def __init__(self, *, secret: bytes, trusted_proxies: Sequence[Network]) -> None:
        if len(secret) < 16:
            raise ValueError("the forward-auth secret must be at least 16 bytes")
        self._secret = secret
        self._proxies = trusted_proxies

    async def authenticate(self, request: RequestView) -> Principal | None:
        user_id = request.headers.get(FORWARD_USER_ID_HEADER)
        if not user_id:
            return None
        presented = request.headers.get(FORWARD_SECRET_HEADER, "").encode()
        if not is_trusted(request.remote or "", self._proxies) or not hmac.compare_digest(
            presented, self._secret
        ):
            raise AuthenticationError("forwarded identity from an untrusted source")
        return Principal(
            user_id=user_id,
            username=request.headers.get(FORWARD_USERNAME_HEADER) or None,
            method=self.method,
        )
