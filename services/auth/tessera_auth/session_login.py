"""Starting a session once a password is checked: what a browser's login does.

Fixation: whatever session the browser brought is destroyed, never upgraded,
and a new ID is made. The portal's login form uses this; ``POST /auth/login``
does the same steps for its ``session`` credential.
"""

from __future__ import annotations

from aiohttp import web

from tessera_verify.cookies import cookie_value
from tessera_verify.sessions import Session

from . import app_state
from .authenticate import session_cookie_name
from .users import User


async def start_session(request: web.Request, user: User, *, ip: str) -> tuple[str, Session]:
    """A new session for ``user`` (its ID, for the cookie, and the session), counted
    and audited as a login; the session ``request`` carried is destroyed first."""
    app = request.app
    sessions, metrics = app[app_state.SESSIONS], app[app_state.METRICS]
    previous = cookie_value(request, session_cookie_name(app))
    if previous:
        await sessions.destroy(previous)
    session_id, session = await sessions.create(
        user_id=user.id,
        username=user.username,
        ip=ip,
        user_agent=request.headers.get("User-Agent", ""),
    )
    metrics.tokens_issued.labels("session").inc()
    metrics.logins.labels("success").inc()
    app[app_state.AUDIT].record(
        "login", user_id=user.id, username=user.username, ip=ip, credential="session"
    )
    return session_id, session
