"""Starting a session once a password is checked: what a browser's login does.

Fixation: whatever session the browser brought is destroyed, never upgraded,
and a new ID is made. The portal's login form and ``POST /auth/login`` (its
``session`` and ``both`` credentials) use this; both then count and audit the
login once with :func:`record_login`, whatever they issued.
"""

from __future__ import annotations

from aiohttp import web

from tessera_verify.cookies import cookie_value
from tessera_verify.sessions import Session

from . import app_state
from .authenticate import session_cookie_name
from .users import User


async def start_session(request: web.Request, user: User, *, ip: str) -> tuple[str, Session]:
    """A new session for ``user`` (its ID, for the cookie, and the session); the session
    ``request`` carried is destroyed first."""
    app = request.app
    sessions = app[app_state.SESSIONS]
    previous = cookie_value(request, session_cookie_name(app))
    if previous:
        await sessions.destroy(previous)
    session_id, session = await sessions.create(
        user_id=user.id,
        username=user.username,
        ip=ip,
        user_agent=request.headers.get("User-Agent", ""),
    )
    app[app_state.METRICS].tokens_issued.labels("session").inc()
    return session_id, session


def record_login(app: web.Application, user: User, *, ip: str, credential: str) -> None:
    """Count and audit one successful login that issued ``credential``."""
    app[app_state.METRICS].logins.labels("success").inc()
    app[app_state.AUDIT].record(
        "login", user_id=user.id, username=user.username, ip=ip, credential=credential
    )
