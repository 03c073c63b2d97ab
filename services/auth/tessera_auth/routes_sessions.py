"""A user's own sessions: list them, revoke one, log out everywhere, change the password."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tessera_platform.csrf import check_same_origin
from tessera_platform.jsonbody import read_body, require_str
from tessera_verify.client_ip import client_ip
from tessera_verify.errors import NotFound
from tessera_verify.principal import AuthMethod, Principal

from . import app_state
from .authenticate import authenticate
from .password_change import password_change
from .password_policy import MAX_INPUT_LENGTH
from .session_views import session_details

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store"}


async def _caller(request: web.Request) -> Principal:
    principal = await authenticate(request)
    if request.method != "GET" and principal.method is not AuthMethod.JWT:
        check_same_origin(request)
    return principal


def _current_link(principal: Principal) -> str | None:
    if principal.session is not None:
        return principal.session.record.public_id
    if principal.token is not None:
        return principal.token.session_link
    return None


@routes.get("/auth/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """The caller's live sessions, newest first; the one making this request is marked."""
    principal = await _caller(request)
    current = _current_link(principal)
    sessions = await request.app[app_state.SESSIONS].list_for_user(principal.user_id)
    listed: list[dict[str, Any]] = [
        {**session_details(s), "current": s.record.public_id == current}
        for s in sorted(sessions, key=lambda s: s.record.created_at, reverse=True)
    ]
    return web.json_response({"sessions": listed}, headers=NO_STORE)


@routes.delete("/auth/sessions/{session_id}")
async def revoke_session(request: web.Request) -> web.Response:
    principal = await _caller(request)
    wanted = request.match_info["session_id"]
    app = request.app
    for session in await app[app_state.SESSIONS].list_for_user(principal.user_id):
        if session.record.public_id == wanted:
            await app[app_state.REVOKER].revoke_session(session)
            return web.json_response({"revoked": ["session"]}, headers=NO_STORE)
    raise NotFound("no such session")


@routes.post("/auth/logout-all")
async def logout_everywhere(request: web.Request) -> web.Response:
    """Every session, refresh token and access token of the caller, on every device."""
    principal = await _caller(request)
    summary = await request.app[app_state.REVOKER].revoke_everything(
        principal.user_id, reason="logout everywhere"
    )
    return web.json_response({"revoked": summary.to_json()}, headers=NO_STORE)


@routes.post("/auth/password")
async def change_password(request: web.Request) -> web.Response:
    """Change the password; everything issued before is revoked, this device included."""
    principal = await _caller(request)
    body = await read_body(request, fields=("current_password", "new_password"))
    current = require_str(body, "current_password", max_length=MAX_INPUT_LENGTH)
    new = require_str(body, "new_password", max_length=MAX_INPUT_LENGTH)
    app = request.app
    ip = client_ip(request, app[app_state.SETTINGS].trusted_proxies)
    summary = await password_change(app).change(principal.user_id, current, new, ip=ip)
    return web.json_response({"revoked": summary.to_json()}, headers=NO_STORE)
