"""Who made a request, and how they proved it; kept on the request, never on the app."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiohttp import web

from .access_tokens import AccessTokenClaims
from .errors import AuthenticationError
from .request_view import RequestView
from .sessions import Session


class AuthMethod(enum.StrEnum):
    JWT = "jwt"
    SHARED_SESSION = "shared_session"
    LOCAL_SESSION = "local_session"
    FORWARD = "forward"


@dataclass(frozen=True)
class Principal:
    user_id: str
    method: AuthMethod
    username: str | None = None
    session: Session | None = None
    token: AccessTokenClaims | None = None


PRINCIPAL = web.RequestKey("tessera_principal", Principal)


def set_principal(request: web.Request, principal: Principal) -> None:
    request[PRINCIPAL] = principal


def get_principal(request: web.Request) -> Principal:
    """The authenticated caller; raises 401 when the request carries none."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise AuthenticationError()
    return principal


def bearer_token(request: RequestView) -> str | None:
    """The RFC 6750 bearer token of the ``Authorization`` header, if any."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
