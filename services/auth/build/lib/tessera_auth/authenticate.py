"""Who is calling the auth service: the replicas' authentication stack, with the
credentials the auth service accepts (a bearer access token, then the session cookie)."""

from __future__ import annotations

from aiohttp import web

from tessera_verify.access_tokens import AccessTokenVerifier
from tessera_verify.authenticators import (
    Authentication,
    BearerTokenAuthenticator,
    DecisionRecorder,
    SessionCookieAuthenticator,
)
from tessera_verify.principal import AuthMethod, Principal
from tessera_verify.sessions import SessionManager
from tessera_verify.sessions import session_cookie_name as _cookie_name

from . import app_state


def session_cookie_name(app: web.Application) -> str:
    return _cookie_name(insecure=app[app_state.SETTINGS].cookie_insecure)


def build_authentication(
    verifier: AccessTokenVerifier,
    sessions: SessionManager,
    *,
    cookie_name: str,
    metrics: DecisionRecorder,
) -> Authentication:
    """The same :class:`Authentication` a replica builds for ``jwt,shared_session``."""
    return Authentication(
        (
            BearerTokenAuthenticator(verifier),
            SessionCookieAuthenticator(
                sessions, cookie_name=cookie_name, method=AuthMethod.SHARED_SESSION
            ),
        ),
        metrics,
    )


async def authenticate(request: web.Request) -> Principal:
    """The caller, from a bearer token first, then the session cookie; 401 otherwise."""
    return await request.app[app_state.AUTHENTICATION].require(request)
