"""Starting a session once a password is checked: what a browser's login does.

Fixation: whatever session the browser brought is destroyed, never upgraded,
and a new ID is made. The portal's login form and ``POST /auth/login`` (its
``session`` and ``both`` credentials) use this; both then count and audit the
login once with :func:`record_login`, whatever they issued.

A login checks the password, then issues. A password change (or the account being
disabled) may commit in between, and the revocation it makes is dated from before
the credentials exist: they would outlive it. So once a login has issued, it
reads the account again (:func:`issued_on_a_current_password`); if the password or
the account changed since the check, everything it issued is revoked and the login
answers 401. If the read still finds the old password, the change has not
committed yet, and the revocation that follows it is dated after these credentials
were made: it kills them.
"""

from __future__ import annotations

from aiohttp import web

from tessera_verify.cookies import cookie_value
from tessera_verify.errors import InvalidCredentials
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


async def issued_on_a_current_password(
    app: web.Application, user: User, *, session_link: str, ip: str
) -> None:
    """Raise :class:`InvalidCredentials` (401) after revoking every credential carrying
    ``session_link`` when ``user``'s password or standing changed since the login
    checked it (see the module's docstring). Call it once everything is issued."""
    current = await app[app_state.ACCOUNTS].users.by_id(user.id)
    # The time of the last password change, not the hash: a login may rehash the same
    # password with new parameters (Accounts.verify_password), which is no change.
    if (
        current is not None
        and not current.disabled
        and current.password_changed_at == user.password_changed_at
    ):
        return
    # Nobody was handed these credentials; the link stays revoked as long as any of them
    # (the session, the refresh family) could live.
    settings = app[app_state.SETTINGS]
    lifetime = max(settings.session_absolute_timeout, settings.refresh_token_ttl)
    await app[app_state.REVOKER].revoke_session_link(
        session_link, lives_until=app[app_state.CLOCK].now() + lifetime
    )
    app[app_state.METRICS].logins.labels("invalid_credentials").inc()
    app[app_state.AUDIT].record(
        "login", outcome="superseded", user_id=user.id, username=user.username, ip=ip
    )
    raise InvalidCredentials()
