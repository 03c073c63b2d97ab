"""Register, log in, log out, who am I."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from tessera_platform.csrf import check_same_origin
from tessera_platform.jsonbody import get_str, read_body, require_str
from tessera_verify.authenticators import (
    FORWARD_METHOD_HEADER,
    FORWARD_USER_ID_HEADER,
    FORWARD_USERNAME_HEADER,
)
from tessera_verify.client_ip import client_ip
from tessera_verify.cookies import cookie_value
from tessera_verify.errors import (
    AuthenticationError,
    InvalidRequest,
    InvalidTokenError,
    RegistrationDisabled,
    TesseraError,
)
from tessera_verify.principal import Principal, bearer_token
from tessera_verify.sessions import clear_session_cookie, set_session_cookie

from . import app_state
from .authenticate import authenticate, session_cookie_name
from .password_policy import MAX_INPUT_LENGTH
from .session_login import issued_on_a_current_password, record_login, start_session
from .session_views import session_json
from .users import User

routes = web.RouteTableDef()

CREDENTIAL_KINDS = ("session", "token", "both")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username}


async def _username(app: web.Application, principal: Principal) -> str:
    """The caller's name: from the session, or (tokens carry none) from the user row,
    which also refuses a token whose user was deleted or disabled since."""
    if principal.username is not None:
        return principal.username
    user = await app[app_state.ACCOUNTS].users.by_id(principal.user_id)
    if user is None or user.disabled:
        raise AuthenticationError("the token's user no longer exists or is disabled")
    return user.username


@routes.post("/auth/register")
async def register(request: web.Request) -> web.Response:
    app = request.app
    if not app[app_state.SETTINGS].registration_enabled:
        raise RegistrationDisabled()
    # Each registration costs an Argon2 hash: counted per address before anything else.
    rank = await app[app_state.REGULATOR].reserve_registration(
        client_ip(request, app[app_state.SETTINGS].trusted_proxies)
    )
    body = await read_body(request, fields=("username", "password"))
    username = require_str(body, "username", max_length=256)
    password = require_str(body, "password", max_length=MAX_INPUT_LENGTH)
    user = await request.app[app_state.ACCOUNTS].register(username, password, rank=rank)
    return web.json_response({"user": _user_json(user)}, status=201, headers=NO_STORE)


@routes.post("/auth/login")
async def login(request: web.Request) -> web.Response:
    app = request.app
    settings = app[app_state.SETTINGS]
    check_same_origin(request)  # login CSRF: another site must not log you in as someone else
    body = await read_body(request, fields=("username", "password", "credential"))
    username = require_str(body, "username", max_length=256)
    password = require_str(body, "password", max_length=MAX_INPUT_LENGTH)
    kind = get_str(body, "credential", required=False, default="session", max_length=16)
    if kind not in CREDENTIAL_KINDS:
        raise InvalidRequest(
            f"'credential' must be one of {', '.join(CREDENTIAL_KINDS)}",
            details={"field": "credential"},
        )
    ip = client_ip(request, settings.trusted_proxies)
    user = await app[app_state.PASSWORD_CHECK].check(username, password, ip=ip, event="login")
    payload: dict[str, Any] = {"user": _user_json(user)}
    session_link = secrets.token_urlsafe(12)
    new_session_id: str | None = None
    session_key: str | None = None
    if kind in ("session", "both"):
        new_session_id, session = await start_session(request, user, ip=ip)
        session_link, session_key = session.record.public_id, session.storage_key
        payload["session"] = session_json(session)
    if kind in ("token", "both"):
        payload.update(
            await app[app_state.TOKEN_PAIRS].issue(
                user_id=user.id, session_link=session_link, session_key=session_key
            )
        )
    await issued_on_a_current_password(app, user, session_link=session_link, ip=ip)
    record_login(app, user, ip=ip, credential=kind)

    response = web.json_response(payload, headers=NO_STORE)
    if new_session_id is not None:
        set_session_cookie(
            response, session_cookie_name(app), new_session_id, secure=not settings.cookie_insecure
        )
    return response


@routes.post("/auth/password-check")
async def password_check(request: web.Request) -> web.Response:
    """Whether a password is right, issuing nothing: for replicas that keep their own
    sessions (demo rows 1-3). Throttled, counted and audited exactly like login."""
    app = request.app
    body = await read_body(request, fields=("username", "password"))
    username = require_str(body, "username", max_length=256)
    password = require_str(body, "password", max_length=MAX_INPUT_LENGTH)
    ip = client_ip(request, app[app_state.SETTINGS].trusted_proxies)
    # Before the account is read: a password change committing after the read is
    # dated (its revocation) after this, so it ends what the replica starts from here.
    checked_at = app[app_state.CLOCK].now()
    user = await app[app_state.PASSWORD_CHECK].check(
        username, password, ip=ip, event="password.check"
    )
    app[app_state.METRICS].logins.labels("password_checked").inc()
    app[app_state.AUDIT].record("password.check", user_id=user.id, username=user.username, ip=ip)
    return web.json_response({"user": _user_json(user), "checked_at": checked_at}, headers=NO_STORE)


@routes.post("/auth/logout")
async def logout(request: web.Request) -> web.Response:
    """Revoke what the caller presents: session cookie, bearer token, refresh token."""
    app = request.app
    revoked: list[str] = []
    refresh_token: str | None = None
    # A body it cannot use (an unknown member, a parameter sent twice) is answered 400,
    # but only after the cookie and the bearer token are revoked: a logout never
    # fails open because of its body.
    body_error: TesseraError | None = None
    if request.body_exists:
        try:
            body = await read_body(request, fields=("refresh_token",), allow_form=True)
            refresh_token = get_str(body, "refresh_token", required=False, max_length=256)
        except TesseraError as exc:
            if exc.status >= 500:
                raise
            body_error = exc

    revoker = app[app_state.REVOKER]
    cookie_name = session_cookie_name(app)
    session_id = cookie_value(request, cookie_name)
    if session_id:
        check_same_origin(request)
        session = await app[app_state.SESSIONS].load(session_id)
        if session is not None:
            await revoker.revoke_session(session)
            revoked.append("session")

    token = bearer_token(request)
    if token is not None:
        try:
            claims = await app[app_state.VERIFIER].verify(token)
        except InvalidTokenError:
            claims = None  # expired, already revoked or forged: nothing left to revoke
        if claims is not None:
            await revoker.revoke_access_token(claims.token_id, claims.expires_at)
            revoked.append("access_token")

    if refresh_token is not None:
        family = await app[app_state.REFRESH_TOKENS].family_of(refresh_token)
        if family is not None:
            await revoker.revoke_family(family, reason="logout")
            revoked.append("refresh_token")

    if revoked:
        app[app_state.AUDIT].record(
            "logout",
            ip=client_ip(request, app[app_state.SETTINGS].trusted_proxies),
            revoked=revoked,
        )
    if body_error is not None:
        raise body_error
    if not session_id and token is None and refresh_token is None:
        raise AuthenticationError("present a session cookie, a bearer token or a refresh token")
    response = web.json_response({"revoked": revoked}, headers=NO_STORE)
    if session_id:
        clear_session_cookie(
            response, cookie_name, secure=not app[app_state.SETTINGS].cookie_insecure
        )
    return response


@routes.get("/auth/forward")
async def forward(request: web.Request) -> web.Response:
    """nginx ``auth_request``: 200 with identity headers, 401, 400 or 503.

    nginx copies the identity headers onto the proxied request; the body is
    never looked at, and nginx sends none (``proxy_pass_request_body off``).
    nginx sees only the status of a refusal and renders the body itself
    (``nginx/policies/forward_auth.conf``): a 400 from here means a session
    cookie sent twice (:class:`~tessera_verify.errors.DuplicateCookie`), so no
    other 400 may come from here.
    """
    principal = await authenticate(request)
    username = await _username(request.app, principal)
    return web.Response(
        status=200,
        headers={
            FORWARD_USER_ID_HEADER: principal.user_id,
            FORWARD_USERNAME_HEADER: username,
            FORWARD_METHOD_HEADER: principal.method.value,
            "Cache-Control": "no-store",
        },
    )


@routes.get("/auth/me")
async def me(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    payload: dict[str, Any] = {"user_id": principal.user_id, "method": principal.method.value}
    if principal.session is not None:
        payload["username"] = principal.session.record.username
        payload["session"] = session_json(principal.session)
    else:
        payload["username"] = await _username(request.app, principal)
    if principal.token is not None:
        payload["token"] = {
            "jti": principal.token.token_id,
            "expires_at": principal.token.expires_at,
            "session_link": principal.token.session_link,
        }
    return web.json_response(payload, headers=NO_STORE)
