"""The protected API: who am I, the forum, and in-process login for the local-session rows."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tessera_platform.csrf import check_same_origin
from tessera_platform.jsonbody import read_body, require_str
from tessera_verify.client_ip import client_ip
from tessera_verify.cookies import cookie_value
from tessera_verify.errors import InvalidRequest, NotFound
from tessera_verify.integration import tessera_verify
from tessera_verify.principal import AuthMethod, Principal, get_principal
from tessera_verify.sessions import clear_session_cookie, set_session_cookie

from . import app_state
from .comments import MAX_COMMENT_LENGTH

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store"}
COMMENTS_PAGE = 50


def _authenticated_write(request: web.Request) -> Principal:
    """The caller of a state-changing request; cookie-borne credentials get a CSRF check."""
    principal = get_principal(request)
    if principal.method is not AuthMethod.JWT:
        check_same_origin(request)
    return principal


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    principal = get_principal(request)
    payload: dict[str, Any] = {
        "user_id": principal.user_id,
        "username": principal.username,
        "auth_method": principal.method.value,
        "served_by": request.app[app_state.SETTINGS].replica_id,
    }
    if principal.token is not None:
        payload["token_expires_at"] = principal.token.expires_at
    return web.json_response(payload, headers=NO_STORE)


@routes.get("/api/comments")
async def list_comments(request: web.Request) -> web.Response:
    get_principal(request)
    comments = await request.app[app_state.COMMENTS].latest(COMMENTS_PAGE)
    return web.json_response({"comments": [c.to_json() for c in comments]}, headers=NO_STORE)


@routes.post("/api/comments")
async def add_comment(request: web.Request) -> web.Response:
    principal = _authenticated_write(request)
    body = await read_body(request, fields=("body",))
    text = require_str(body, "body", max_length=MAX_COMMENT_LENGTH).strip()
    if not text:
        raise InvalidRequest("'body' must not be empty", details={"field": "body"})
    if "\x00" in text:  # PostgreSQL's text cannot hold it: refused here, not a 500 there
        raise InvalidRequest("'body' must not contain NUL characters", details={"field": "body"})
    app = request.app
    comment = await app[app_state.COMMENTS].add(
        user_id=principal.user_id,
        username=principal.username,
        body=text,
        served_by=app[app_state.SETTINGS].replica_id,
        now=app[app_state.CLOCK].now(),
    )
    return web.json_response({"comment": comment.to_json()}, status=201)


@routes.post("/api/login")
async def local_login(request: web.Request) -> web.Response:
    """In-process sessions (demo rows 1-3): this replica alone will know the session."""
    app = request.app
    settings = app[app_state.SETTINGS]
    if AuthMethod.LOCAL_SESSION not in settings.verify.auth_methods:
        raise NotFound("this replica does not keep local sessions; log in at /auth/login")
    check_same_origin(request)
    body = await read_body(request, fields=("username", "password"))
    ip = client_ip(request, settings.verify.trusted_proxies)
    user = await app[app_state.PASSWORDS].check(
        require_str(body, "username", max_length=256),
        require_str(body, "password", max_length=1024),
        client_ip=ip,
    )
    verify = tessera_verify(app)
    sessions = verify.local_sessions
    assert sessions is not None  # the local_session method is on (checked above)
    previous = cookie_value(request, verify.local_session_cookie)
    if previous:
        await sessions.destroy(previous)  # fixation: never keep a session the client brought
    session_id, session = await sessions.create(
        user_id=user.user_id,
        username=user.username,
        ip=ip,
        user_agent=request.headers.get("User-Agent", ""),
        authenticated_at=user.checked_at,
    )
    response = web.json_response(
        {
            "user": {"id": user.user_id, "username": user.username},
            "session": {"id": session.record.public_id, "expires_at": session.record.expires_at},
            "served_by": settings.replica_id,
        },
        headers=NO_STORE,
    )
    set_session_cookie(
        response,
        verify.local_session_cookie,
        session_id,
        secure=not settings.verify.cookie_insecure,
    )
    return response


@routes.post("/api/logout")
async def local_logout(request: web.Request) -> web.Response:
    principal = _authenticated_write(request)
    if principal.method is not AuthMethod.LOCAL_SESSION or principal.session is None:
        raise InvalidRequest("only local sessions log out here; use /auth/logout")
    app = request.app
    sessions = tessera_verify(app).local_sessions
    assert sessions is not None  # a local-session principal exists only with the method on
    await sessions.destroy_by_key(principal.session.storage_key)
    response = web.json_response({"revoked": ["session"]}, headers=NO_STORE)
    clear_session_cookie(
        response,
        tessera_verify(app).local_session_cookie,
        secure=not app[app_state.SETTINGS].verify.cookie_insecure,
    )
    return response
