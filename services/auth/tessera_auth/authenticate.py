"""Who is calling the auth service: a bearer access token or the session cookie."""

from __future__ import annotations

from aiohttp import web

from tessera_verify.authenticators import decision_outcome
from tessera_verify.cookies import cookie_value
from tessera_verify.errors import AuthenticationError, InvalidSession
from tessera_verify.principal import AuthMethod, Principal, bearer_token
from tessera_verify.sessions import INSECURE_SESSION_COOKIE, SESSION_COOKIE

from . import appkeys


def session_cookie_name(app: web.Application) -> str:
    return INSECURE_SESSION_COOKIE if app[appkeys.SETTINGS].cookie_insecure else SESSION_COOKIE


async def authenticate(request: web.Request) -> Principal:
    """The caller, from a bearer token first, then the session cookie; 401 otherwise."""
    app = request.app
    metrics = app[appkeys.METRICS]
    token = bearer_token(request)
    if token is not None:
        try:
            claims = await app[appkeys.VERIFIER].verify(token)
        except AuthenticationError as error:
            metrics.decided(AuthMethod.JWT.value, decision_outcome(error))
            raise
        metrics.decided(AuthMethod.JWT.value, "ok")
        return Principal(user_id=claims.subject, method=AuthMethod.JWT, token=claims)
    session_id = cookie_value(request, session_cookie_name(app))
    if session_id:
        session = await app[appkeys.SESSIONS].load(session_id)
        method = AuthMethod.SHARED_SESSION.value
        if session is None:
            metrics.decided(method, "unknown")
            raise InvalidSession()
        metrics.decided(method, "ok")
        record = session.record
        return Principal(
            user_id=record.user_id,
            username=record.username,
            method=AuthMethod.SHARED_SESSION,
            session=session,
        )
    raise AuthenticationError()
