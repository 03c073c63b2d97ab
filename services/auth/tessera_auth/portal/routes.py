"""The portal's pages and forms: log in, log out, the account page, and where nginx
sends a browser whose ``auth_request`` failed.

Handlers parse and answer; what they do is the service's own use cases: the
regulated password check (:mod:`tessera_auth.password_check`), starting a session
(:mod:`tessera_auth.session_login`), the revoker, the password change
(:mod:`tessera_auth.password_change`). Every post is checked for its origin and
its CSRF token before anything else (:mod:`.csrf`), and every redirect target
is a checked return URL (:mod:`.return_url`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tessera_platform.csrf import check_same_origin
from tessera_platform.jsonbody import get_str
from tessera_verify.client_ip import client_ip
from tessera_verify.cookies import cookie_value
from tessera_verify.errors import (
    CSRFRejected,
    InvalidCredentials,
    TooManyAttempts,
    WeakPassword,
    WrongCurrentPassword,
)
from tessera_verify.sessions import Session, clear_session_cookie, set_session_cookie

from .. import app_state
from ..authenticate import session_cookie_name
from ..password_change import password_change
from ..password_policy import MAX_INPUT_LENGTH
from ..session_login import issued_on_a_current_password, record_login, start_session
from ..session_views import session_details
from .csrf import (
    CSRF_FIELD,
    FormTokens,
    browser_secret,
    csrf_cookie_name,
    new_browser_secret,
    set_browser_secret,
)
from .pages import page, read_form, redirect, render, stylesheet

__all__ = [
    "ACCOUNT_PATH",
    "LOGIN_PATH",
    "LOGOUT_ALL_PATH",
    "LOGOUT_PATH",
    "PASSWORD_PATH",
    "REVOKE_PATH",
    "START_PATH",
    "STYLESHEET_PATH",
    "routes",
]

PREFIX = "/auth/portal"
LOGIN_PATH = PREFIX + "/login"
LOGOUT_PATH = PREFIX + "/logout"
ACCOUNT_PATH = PREFIX + "/account"
REVOKE_PATH = PREFIX + "/sessions/{session_id}/revoke"
LOGOUT_ALL_PATH = PREFIX + "/logout-all"
PASSWORD_PATH = PREFIX + "/password"
START_PATH = PREFIX + "/start"
STYLESHEET_PATH = PREFIX + "/static/portal.css"
#: Where a browser without a session goes from the account page (and comes back).
LOGIN_FOR_ACCOUNT = f"{LOGIN_PATH}?rd={ACCOUNT_PATH}"

#: The header nginx sets on the subrequest to the start page: the URL asked for.
ORIGINAL_URL_HEADER = "X-Original-URL"

#: One answer for every failed login: it says nothing about which accounts exist.
INVALID_CREDENTIALS = "Wrong username or password."
MISSING_CREDENTIALS = "Enter your username and your password."
#: Notices the login page shows when asked by name (never text from the request).
NOTICES = {
    "logged-out-everywhere": "You are logged out on every device.",
    "password-changed": (
        "Your password is changed, and you are logged out on every device. "
        "Log in with the new password."
    ),
}
#: The challenge of a 401 (RFC 9110 §11.6.1 wants one): log in for a session cookie.
COOKIE_CHALLENGE = {"WWW-Authenticate": 'Cookie realm="tessera"'}

routes = web.RouteTableDef()


# --- what every handler needs -----------------------------------------------------------


def _secure(app: web.Application) -> bool:
    return not app[app_state.SETTINGS].cookie_insecure


def _one(values: list[str]) -> str | None:
    """A parameter sent once; sent several times it is no parameter (which is meant?)."""
    return values[0] if len(values) == 1 else None


def _form_value(form: dict[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _to_login(return_url: str | None) -> str:
    """The login form's URL, with ``return_url`` (already checked) as its ``rd``."""
    return LOGIN_PATH if return_url is None else f"{LOGIN_PATH}?{urlencode({'rd': return_url})}"


def _wait(seconds: int) -> str:
    if seconds >= 120:
        return f"{-(-seconds // 60)} minutes"
    return "1 second" if seconds == 1 else f"{seconds} seconds"


def _throttled(error: TooManyAttempts) -> str:
    return f"Too many failed attempts. Try again in {_wait(error.retry_after)}."


def _check_token(expected: str, form: dict[str, Any]) -> None:
    FormTokens.check(expected, _form_value(form, CSRF_FIELD))


# --- logging in and out -----------------------------------------------------------------


def _login_page(
    request: web.Request,
    *,
    return_url: str | None,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The login form, its CSRF token bound to the browser's CSRF cookie (set here
    when the browser has none)."""
    app = request.app
    cookie = csrf_cookie_name(insecure=not _secure(app))
    secret = browser_secret(request, cookie)
    fresh = secret is None
    if secret is None:
        secret = new_browser_secret()
    response = render(
        "login.html",
        status=status,
        headers=headers,
        csrf_field=CSRF_FIELD,
        csrf_token=app[app_state.FORM_TOKENS].for_browser(secret),
        return_url=return_url or "",
        error=error,
        notice=notice,
    )
    if fresh:
        set_browser_secret(response, cookie, secret, secure=_secure(app))
    return response


@routes.get(LOGIN_PATH)
@page
async def login_form(request: web.Request) -> web.Response:
    """The login form; ``rd`` is where to go after (ignored unless a valid return URL)."""
    return_url = request.app[app_state.RETURN_URLS].validate(_one(request.query.getall("rd", [])))
    notice = NOTICES.get(_one(request.query.getall("notice", [])) or "")
    return _login_page(request, return_url=return_url, notice=notice)


@routes.post(LOGIN_PATH)
@page
async def login(request: web.Request) -> web.Response:
    """Check the password; a new session and ``303`` to the return URL, or the form again."""
    app = request.app
    check_same_origin(request)
    form = await read_form(request)
    secret = browser_secret(request, csrf_cookie_name(insecure=not _secure(app)))
    if secret is None:
        raise CSRFRejected("no CSRF cookie: the login form was not loaded from here")
    _check_token(app[app_state.FORM_TOKENS].for_browser(secret), form)

    return_url = app[app_state.RETURN_URLS].validate(_form_value(form, "rd"))
    username = get_str(form, "username", required=False, max_length=256)
    password = get_str(form, "password", required=False, max_length=MAX_INPUT_LENGTH)
    if not username or not password:
        return _login_page(request, return_url=return_url, status=400, error=MISSING_CREDENTIALS)
    ip = client_ip(request, app[app_state.SETTINGS].trusted_proxies)
    try:
        user = await app[app_state.PASSWORD_CHECK].check(username, password, ip=ip, event="login")
        session_id, session = await start_session(request, user, ip=ip)
        await issued_on_a_current_password(app, user, session_link=session.record.public_id, ip=ip)
    except InvalidCredentials:
        return _login_page(
            request,
            return_url=return_url,
            status=401,
            error=INVALID_CREDENTIALS,
            headers=COOKIE_CHALLENGE,
        )
    except TooManyAttempts as exc:
        return _login_page(
            request,
            return_url=return_url,
            status=429,
            error=_throttled(exc),
            headers=exc.extra_headers(),
        )
    record_login(app, user, ip=ip, credential="session")
    response = redirect(return_url or ACCOUNT_PATH)
    set_session_cookie(response, session_cookie_name(app), session_id, secure=_secure(app))
    return response


@routes.post(LOGOUT_PATH)
@page
async def logout(request: web.Request) -> web.Response:
    """Revoke this browser's session and forget its cookie; ``303`` to the login form."""
    app = request.app
    check_same_origin(request)
    cookie = session_cookie_name(app)
    session_id = cookie_value(request, cookie)
    response = redirect(LOGIN_PATH)
    if not session_id:
        return response  # nothing to log out of
    form = await read_form(request)
    _check_token(app[app_state.FORM_TOKENS].for_session(session_id), form)
    session = await app[app_state.SESSIONS].load(session_id)
    if session is not None:
        await app[app_state.REVOKER].revoke_session(session)
        app[app_state.AUDIT].record(
            "logout",
            user_id=session.record.user_id,
            ip=client_ip(request, app[app_state.SETTINGS].trusted_proxies),
            revoked=["session"],
        )
    clear_session_cookie(response, cookie, secure=_secure(app))
    return response


@routes.get(START_PATH)
@page
async def start(request: web.Request) -> web.Response:
    """Where nginx sends a browser that an ``auth_request`` refused: ``302`` to the
    login form, with the URL it asked for (``X-Original-URL``) when that is valid."""
    asked = request.headers.get(ORIGINAL_URL_HEADER)
    return redirect(_to_login(request.app[app_state.RETURN_URLS].validate(asked)), status=302)


# --- the account page -------------------------------------------------------------------


async def _signed_in(request: web.Request) -> tuple[str, Session] | None:
    """The browser's session ID and live session, or None."""
    session_id = cookie_value(request, session_cookie_name(request.app))
    if not session_id:
        return None
    session = await request.app[app_state.SESSIONS].load(session_id)
    return None if session is None else (session_id, session)


async def _signed_in_post(request: web.Request) -> tuple[str, Session, dict[str, Any]] | None:
    """A signed-in page's post: its origin and CSRF token checked (403 otherwise),
    then the live session and the form; None when the browser has no live session."""
    app = request.app
    check_same_origin(request)
    session_id = cookie_value(request, session_cookie_name(app))
    if not session_id:
        return None
    form = await read_form(request)
    _check_token(app[app_state.FORM_TOKENS].for_session(session_id), form)
    session = await app[app_state.SESSIONS].load(session_id)
    return None if session is None else (session_id, session, form)


async def _account_page(
    request: web.Request,
    session_id: str,
    session: Session,
    *,
    status: int = 200,
    error: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    app = request.app
    current = session.record.public_id
    listed = sorted(
        await app[app_state.SESSIONS].list_for_user(session.record.user_id),
        key=lambda s: s.record.created_at,
        reverse=True,
    )
    return render(
        "account.html",
        status=status,
        headers=headers,
        username=session.record.username,
        user_id=session.record.user_id,
        sessions=[{**session_details(s), "current": s.record.public_id == current} for s in listed],
        csrf_field=CSRF_FIELD,
        csrf_token=app[app_state.FORM_TOKENS].for_session(session_id),
        paths={
            "logout": LOGOUT_PATH,
            "logout_all": LOGOUT_ALL_PATH,
            "password": PASSWORD_PATH,
        },
        revoke_path=REVOKE_PATH,
        min_length=app[app_state.ACCOUNTS].policy.min_length,
        error=error,
    )


@routes.get(ACCOUNT_PATH)
@page
async def account(request: web.Request) -> web.Response:
    """Who am I, my sessions, and the forms that act on them."""
    signed_in = await _signed_in(request)
    if signed_in is None:
        return redirect(LOGIN_FOR_ACCOUNT)
    return await _account_page(request, *signed_in)


@routes.post(REVOKE_PATH)
@page
async def revoke_session(request: web.Request) -> web.Response:
    """Revoke one of my sessions; ``303`` back to the account page (or to the login
    form when it was this one). A session already gone is no error."""
    app = request.app
    signed_in = await _signed_in_post(request)
    if signed_in is None:
        return redirect(LOGIN_FOR_ACCOUNT)
    _, current, _ = signed_in
    wanted = request.match_info["session_id"]
    for session in await app[app_state.SESSIONS].list_for_user(current.record.user_id):
        if session.record.public_id == wanted:
            await app[app_state.REVOKER].revoke_session(session)
            if wanted == current.record.public_id:
                response = redirect(LOGIN_PATH)
                clear_session_cookie(response, session_cookie_name(app), secure=_secure(app))
                return response
            break
    return redirect(ACCOUNT_PATH)


def _logged_out_everywhere(app: web.Application, notice: str) -> web.Response:
    response = redirect(f"{LOGIN_PATH}?notice={notice}")
    clear_session_cookie(response, session_cookie_name(app), secure=_secure(app))
    return response


@routes.post(LOGOUT_ALL_PATH)
@page
async def logout_everywhere(request: web.Request) -> web.Response:
    """Revoke every session, refresh token and access token of mine, on every device."""
    app = request.app
    signed_in = await _signed_in_post(request)
    if signed_in is None:
        return redirect(LOGIN_FOR_ACCOUNT)
    _, session, _ = signed_in
    await app[app_state.REVOKER].revoke_everything(
        session.record.user_id, reason="logout everywhere"
    )
    return _logged_out_everywhere(app, "logged-out-everywhere")


@routes.post(PASSWORD_PATH)
@page
async def change_password(request: web.Request) -> web.Response:
    """Change my password (everything issued before is revoked, this browser's
    session included); a refusal is the account page again, saying why."""
    app = request.app
    signed_in = await _signed_in_post(request)
    if signed_in is None:
        return redirect(LOGIN_FOR_ACCOUNT)
    session_id, session, form = signed_in
    current = get_str(form, "current_password", required=False, max_length=MAX_INPUT_LENGTH)
    new = get_str(form, "new_password", required=False, max_length=MAX_INPUT_LENGTH)
    if not current or not new:
        return await _account_page(
            request,
            session_id,
            session,
            status=400,
            error="Enter your current password and a new one.",
        )
    change = password_change(app)
    ip = client_ip(request, app[app_state.SETTINGS].trusted_proxies)
    try:
        await change.change(session.record.user_id, current, new, ip=ip)
    except WrongCurrentPassword:
        return await _account_page(
            request, session_id, session, status=403, error="The current password is wrong."
        )
    except WeakPassword as exc:
        return await _account_page(
            request,
            session_id,
            session,
            status=400,
            error=f"The new password cannot be used: {exc.message}.",
        )
    except TooManyAttempts as exc:
        return await _account_page(
            request,
            session_id,
            session,
            status=429,
            error=_throttled(exc),
            headers=exc.extra_headers(),
        )
    except InvalidCredentials:  # the account is gone
        return _logged_out_everywhere(app, "logged-out-everywhere")
    return _logged_out_everywhere(app, "password-changed")


@routes.get(STYLESHEET_PATH)
@page
async def portal_stylesheet(request: web.Request) -> web.Response:
    return stylesheet()
