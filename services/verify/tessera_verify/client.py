"""Asking the auth service instead of verifying locally: token introspection (RFC 7662)
and forward auth (the endpoint nginx's ``auth_request`` calls).

Local verification (:mod:`tessera_verify.integration`) needs the shared Redis and
answers without a network call; these cost a round trip to the auth service each,
and suit a service that cannot reach Redis or checks credentials rarely::

    async with aiohttp.ClientSession() as http:
        auth = AuthServiceClient(http, "https://auth.example", client_id="billing",
                                 client_secret=secret)
        answer = await auth.introspect(token)
        if answer.active: ...
        caller = await auth.forward(request)   # the incoming request's credentials

The auth service's refusals come back as the same errors local verification raises
(401 :class:`~tessera_verify.errors.AuthenticationError`, 503
:class:`~tessera_verify.errors.ServiceUnavailable` when the auth service cannot be
reached or fails), so the error middleware answers them alike. A client the auth
service does not accept is a configuration error, not the caller's: it raises
:class:`AuthServiceRefusedClient`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs

from .authenticators import (
    FORWARD_METHOD_HEADER,
    FORWARD_USER_ID_HEADER,
    FORWARD_USERNAME_HEADER,
)
from .errors import (
    AuthenticationError,
    BadRequest,
    DuplicateCookie,
    InvalidSession,
    InvalidTokenError,
    ServiceUnavailable,
    TesseraError,
)
from .principal import AuthMethod, Principal
from .request_view import RequestView

__all__ = ["AuthServiceClient", "AuthServiceRefusedClient", "Introspection"]

log = logging.getLogger(__name__)

INTROSPECTION_PATH = "/auth/introspect"
FORWARD_PATH = "/auth/forward"


class AuthServiceRefusedClient(RuntimeError):
    """The auth service refused this client's own credentials (a wrong or unknown
    introspection client): a deployment to fix, never a caller's fault."""


@dataclass(frozen=True)
class Introspection:
    """RFC 7662's answer. Only ``active`` is certain; the rest is there when active."""

    active: bool
    #: ``access_token``, ``refresh_token`` or ``session``.
    token_type: str | None = None
    subject: str | None = None
    username: str | None = None
    client_id: str | None = None
    expires_at: int | None = None
    issued_at: int | None = None
    token_id: str | None = None
    session_id: str | None = None
    #: Every member the auth service sent, the ones above included.
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Introspection:
        def text(name: str) -> str | None:
            value = body.get(name)
            return value if isinstance(value, str) else None

        def number(name: str) -> int | None:
            value = body.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            active=body.get("active") is True,
            token_type=text("token_type"),
            subject=text("sub"),
            username=text("username"),
            client_id=text("client_id"),
            expires_at=number("exp"),
            issued_at=number("iat"),
            token_id=text("jti"),
            session_id=text("sid"),
            claims=dict(body),
        )


class AuthServiceClient:
    """The auth service's introspection and forward-auth endpoints, over ``session``
    (which the caller opens and closes: one per app, in its ``cleanup_ctx``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._session = session
        self._auth_url = auth_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        #: The introspection client's ``Authorization: Basic`` header, when there is one.
        self._client: dict[str, str] | None = None
        if client_id is not None and client_secret is not None:
            # RFC 6749 §2.3.1: both are form-encoded before they go into Basic.
            pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
            basic = base64.b64encode(pair.encode()).decode()
            self._client = {hdrs.AUTHORIZATION: f"Basic {basic}"}

    async def introspect(self, token: str, *, token_type_hint: str | None = None) -> Introspection:
        """Whether ``token`` (an access token, a refresh token or a session ID) is live,
        and whose it is. Needs an introspection client (``client_id``/``client_secret``,
        configured on the auth service in ``TESSERA_INTROSPECTION_CLIENTS``)."""
        if self._client is None:
            raise AuthServiceRefusedClient("introspection needs client_id and client_secret")
        form = {"token": token}
        if token_type_hint is not None:
            form["token_type_hint"] = token_type_hint
        status, _, body = await self._call(
            hdrs.METH_POST, INTROSPECTION_PATH, data=form, headers=self._client
        )
        if status == 401:
            raise AuthServiceRefusedClient("the auth service refused this introspection client")
        if status != 200 or not isinstance(body, dict):
            raise _refusal(status, body)
        return Introspection.from_json(body)

    async def forward(self, request: RequestView) -> Principal:
        """The caller of ``request``, as the auth service sees its bearer token or session
        cookie (what nginx's ``auth_request`` asks). Raises
        :class:`~tessera_verify.errors.AuthenticationError` when it has none or a bad one."""
        headers = [
            (name, value)
            for name in (hdrs.AUTHORIZATION, hdrs.COOKIE)
            for value in request.headers.getall(name, ())
        ]
        status, answer, body = await self._call(hdrs.METH_GET, FORWARD_PATH, headers=headers)
        if status != 200:
            raise _refusal(status, body)
        try:
            return Principal(
                user_id=answer[FORWARD_USER_ID_HEADER],
                username=answer.get(FORWARD_USERNAME_HEADER) or None,
                method=AuthMethod(answer[FORWARD_METHOD_HEADER]),
            )
        except (KeyError, ValueError):
            raise ServiceUnavailable("the auth service's answer has no identity") from None

    async def _call(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Mapping[str, str], Any]:
        """Status, headers and JSON body (None when there is none) of one request;
        :class:`~tessera_verify.errors.ServiceUnavailable` when it cannot be made."""
        try:
            async with self._session.request(
                method, self._auth_url + path, timeout=self._timeout, **kwargs
            ) as response:
                raw = await response.read()
                body = json.loads(raw) if raw and response.content_type.endswith("json") else None
                return response.status, response.headers, body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("%s %s%s failed: %r", method, self._auth_url, path, exc)
            raise ServiceUnavailable("the auth service cannot be reached") from exc


#: The refusals the auth service's ``error`` code names, kept as they are.
_REFUSALS: dict[str, type[TesseraError]] = {
    error.code: error
    for error in (
        AuthenticationError,
        InvalidTokenError,
        InvalidSession,
        BadRequest,
        DuplicateCookie,
    )
}


def _refusal(status: int, body: Any) -> TesseraError:
    """The error an answer other than 200 stands for: a 401 or 400 as the auth service
    named it (its ``detail`` kept), anything else 503 (the auth service failed)."""
    if status not in (400, 401):
        return ServiceUnavailable(f"the auth service answered {status}")
    problem = body if isinstance(body, dict) else {}
    detail = problem.get("detail") or problem.get("error_description")
    error = _REFUSALS.get(str(problem.get("error")))
    if error is None or error.status != status:
        error = AuthenticationError if status == 401 else BadRequest
    return error(detail if isinstance(detail, str) else None)
