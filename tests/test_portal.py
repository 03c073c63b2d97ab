"""The login portal and the account page (issue 11): server-rendered HTML against the
real auth app, PostgreSQL and Redis.

A :class:`Browser` keeps its own cookies (the test client's jar would not send
``Secure`` cookies over plain HTTP) and posts forms the way an HTML form does.
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import redis.exceptions
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from tessera_auth import app_state
from tessera_auth.openapi import api_description as auth_description
from tessera_auth.portal.csrf import CSRF_COOKIE
from tessera_auth.portal.pages import CONTENT_SECURITY_POLICY
from tessera_verify.clock import ManualClock
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import AuthClientFactory
from .test_openapi import Described

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase for tessera users"
ISSUER = "https://auth.tessera.test"  # the settings fixture's
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}

LOGIN = "/auth/portal/login"
LOGOUT = "/auth/portal/logout"
ACCOUNT = "/auth/portal/account"
LOGOUT_ALL = "/auth/portal/logout-all"
PASSWORD_FORM = "/auth/portal/password"
START = "/auth/portal/start"
STYLESHEET = "/auth/portal/static/portal.css"


REVOKE_PATH = "/auth/portal/sessions/{session_id}/revoke"


def revoke_path(public_id: str) -> str:
    return REVOKE_PATH.format(session_id=public_id)


@dataclass
class Page:
    status: int
    headers: Any
    text: str
    set_cookies: dict[str, Any]

    def hidden(self, name: str) -> str:
        match = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)">', self.text)
        assert match is not None, f"no hidden {name} in the page"
        return html.unescape(match.group(1))

    @property
    def csrf_token(self) -> str:
        return self.hidden("csrf_token")

    @property
    def location(self) -> str:
        return str(self.headers["Location"])


@dataclass
class Browser:
    """Cookies kept by name; forms posted as ``application/x-www-form-urlencoded``."""

    client: Client
    user_agent: str = "TestBrowser/1.0"
    cookies: dict[str, str] = field(default_factory=dict)

    async def _answer(self, response: ClientResponse) -> Page:
        text = await response.text()
        parsed: dict[str, Any] = {}
        for line in response.headers.getall("Set-Cookie", ()):
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                parsed[name] = morsel
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        self.client.session.cookie_jar.clear()
        return Page(response.status, response.headers, text, parsed)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, **(extra or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Page:
        response = await self.client.get(
            path, headers=self._headers(headers), allow_redirects=False
        )
        return await self._answer(response)

    async def post(
        self, path: str, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> Page:
        response = await self.client.post(
            path,
            data=urlencode(form),
            headers=self._headers({**FORM_HEADERS, **(headers or {})}),
            allow_redirects=False,
        )
        return await self._answer(response)

    async def log_in(self, username: str, password: str = PASSWORD, rd: str | None = None) -> Page:
        form_page = await self.get(LOGIN if rd is None else f"{LOGIN}?{urlencode({'rd': rd})}")
        assert form_page.status == 200, form_page.text
        return await self.post(
            LOGIN,
            {
                "username": username,
                "password": password,
                "csrf_token": form_page.csrf_token,
                "rd": form_page.hidden("rd"),
            },
        )

    @property
    def session(self) -> str | None:
        return self.cookies.get(SESSION_COOKIE)


async def register(client: Client, username: str | None = None) -> str:
    username = username or f"user-{uuid.uuid4().hex[:10]}"
    response = await client.post(
        "/auth/register", json={"username": username, "password": PASSWORD}
    )
    assert response.status == 201, await response.text()
    return username


async def me_status(client: Client, session_id: str) -> int:
    response = await client.get("/auth/me", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"})
    client.session.cookie_jar.clear()
    return response.status


async def signed_in(client: Client, user_agent: str = "TestBrowser/1.0") -> tuple[Browser, str]:
    browser = Browser(client, user_agent=user_agent)
    username = await register(client)
    page = await browser.log_in(username)
    assert page.status == 303, page.text
    return browser, username


def assert_security_headers(page: Page) -> None:
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"


# --- the login form ---------------------------------------------------------------------


async def test_login_form_is_labelled_scriptless_html_with_a_csrf_cookie(
    auth_client: Client,
) -> None:
    page = await Browser(auth_client).get(LOGIN)
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-store"
    assert_security_headers(page)
    html = page.text
    assert '<form method="post" action="/auth/portal/login"' in html
    for name, attributes in (
        ("username", ['autocomplete="username"', "autofocus", 'type="text"']),
        ("password", ['autocomplete="current-password"', 'type="password"']),
    ):
        assert f'<label for="{name}">' in html
        tag = re.search(rf"<input id=\"{name}\" name=\"{name}\"[^>]*>", html)
        assert tag is not None, name
        assert all(attribute in tag.group(0) for attribute in attributes), tag.group(0)
    assert '<button type="submit">' in html
    assert page.hidden("rd") == ""
    assert len(page.csrf_token) == 43
    # No script anywhere, no inline style: the policy would refuse them.
    assert "<script" not in html.lower() and "style=" not in html.lower()
    assert "javascript:" not in html.lower()
    cookie = page.set_cookies[CSRF_COOKIE]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["domain"] and not cookie["max-age"]


async def test_the_csrf_cookie_is_kept_and_the_token_stays_bound_to_it(
    auth_client: Client,
) -> None:
    browser = Browser(auth_client)
    first = await browser.get(LOGIN)
    again = await browser.get(LOGIN)
    assert CSRF_COOKIE not in again.set_cookies
    assert again.csrf_token == first.csrf_token
    other = await Browser(auth_client).get(LOGIN)
    assert other.csrf_token != first.csrf_token


async def test_stylesheet_is_served_with_the_same_headers(auth_client: Client) -> None:
    page = await Browser(auth_client).get(STYLESHEET)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/css")
    assert "body" in page.text
    assert_security_headers(page)


# --- logging in -------------------------------------------------------------------------


async def test_login_destroys_the_brought_session_and_redirects_to_rd_with_a_new_cookie(
    auth_client: Client,
) -> None:
    browser, username = await signed_in(auth_client)
    brought = browser.session
    assert brought is not None and await me_status(auth_client, brought) == 200
    page = await browser.log_in(username, rd="/app/reports?q=1")
    assert page.status == 303
    assert page.location == "/app/reports?q=1"
    assert page.headers["Cache-Control"] == "no-store"
    assert_security_headers(page)
    cookie = page.set_cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Lax"
    assert cookie.value != brought
    assert await me_status(auth_client, cookie.value) == 200
    assert await me_status(auth_client, brought) == 401  # fixation: the old one is gone


async def test_login_without_rd_lands_on_the_account_page(auth_client: Client) -> None:
    browser = Browser(auth_client)
    page = await browser.log_in(await register(auth_client))
    assert page.status == 303
    assert page.location == ACCOUNT


async def test_wrong_password_and_unknown_user_get_the_same_page(auth_client: Client) -> None:
    username = await register(auth_client)
    browser = Browser(auth_client)
    wrong = await browser.log_in(username, password="not the password at all")
    unknown = await browser.log_in(f"nobody-{uuid.uuid4().hex[:8]}")
    assert wrong.status == unknown.status == 401
    assert wrong.text == unknown.text
    assert "Wrong username or password." in wrong.text
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    assert SESSION_COOKIE not in wrong.set_cookies | unknown.set_cookies
    assert_security_headers(wrong)


async def test_a_missing_field_is_the_form_again(auth_client: Client) -> None:
    browser = Browser(auth_client)
    form = await browser.get(LOGIN)
    page = await browser.post(LOGIN, {"username": "alice", "csrf_token": form.csrf_token})
    assert page.status == 400
    assert "Enter your username and your password." in page.text
    assert page.csrf_token == form.csrf_token


async def test_a_throttled_login_says_when_to_retry(auth_client: Client) -> None:
    username = await register(auth_client)
    browser = Browser(auth_client)
    for _ in range(5):  # an address's budget of failures on one account
        assert (await browser.log_in(username, password="wrong password here")).status == 401
    page = await browser.log_in(username)  # even the right password waits now
    assert page.status == 429
    retry_after = int(page.headers["Retry-After"])
    assert retry_after > 0
    shown = f"{retry_after} seconds" if retry_after < 120 else f"{-(-retry_after // 60)} minutes"
    assert f"Too many failed attempts. Try again in {shown}." in page.text
    assert SESSION_COOKIE not in page.set_cookies
    assert page.csrf_token  # the form again


async def test_a_non_form_post_is_an_html_error_page(auth_client: Client) -> None:
    response = await auth_client.post(LOGIN, json={"username": "a", "password": "b"})
    assert response.status == 415
    assert response.content_type == "text/html"
    assert "Content-Security-Policy" in response.headers


async def test_a_session_cookie_sent_twice_is_an_html_error_page(auth_client: Client) -> None:
    browser, _ = await signed_in(auth_client)
    session = browser.session
    page = await Browser(auth_client).get(
        ACCOUNT, headers={"Cookie": f"{SESSION_COOKIE}={session}; {SESSION_COOKIE}=other"}
    )
    assert page.status == 400
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert_security_headers(page)


async def test_an_outage_is_an_html_error_page_that_fails_closed(
    auth_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser, _ = await signed_in(auth_client)

    async def down(session_id: str) -> None:
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(auth_client.server.app[app_state.SESSIONS], "load", down)
    page = await browser.get(ACCOUNT)
    assert page.status == 503
    assert page.headers["Retry-After"] == "1"
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Redis" not in page.text
    assert_security_headers(page)


# --- return URLs ------------------------------------------------------------------------

REFUSED_RETURN_URLS = [
    "https://evil.example/",
    "//evil.example",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%252F%252Fevil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,x",
    "https://auth.tessera.test@evil.example/",
    "https://auth.tessera.test.evil.example/",
    "https://evil.example/?https://auth.tessera.test/",
    "/app\tx",
    "/app\nx",
    "/%09/evil.example",
    "/app%0d%0aSet-Cookie:x=1",
    " /app",
    "/" + "a" * 2048,
]
ACCEPTED_RETURN_URLS = [
    "/",
    "/app/x?y=1",
    "/app/reports/q.html?a=b&c=%2F#frag",
    "https://auth.tessera.test/app/",
    "https://AUTH.tessera.test:443/app?x=1",
]


@pytest.mark.parametrize("rd", REFUSED_RETURN_URLS)
async def test_an_open_redirect_is_refused_and_never_echoed(auth_client: Client, rd: str) -> None:
    browser = Browser(auth_client)
    form = await browser.get(f"{LOGIN}?{urlencode({'rd': rd})}")
    assert form.status == 200
    assert form.hidden("rd") == ""
    assert "evil" not in form.text
    username = await register(auth_client)
    # Posted directly too: the form's hidden field is no defence.
    page = await browser.post(
        LOGIN,
        {"username": username, "password": PASSWORD, "csrf_token": form.csrf_token, "rd": rd},
    )
    assert page.status == 303
    assert page.location == ACCOUNT
    # A header cannot carry a line break, and its value starts after any blank.
    if not {"\r", "\n"} & set(rd) and rd == rd.strip():
        start = await browser.get(START, headers={"X-Original-URL": rd})
        assert start.status == 302
        assert start.location == LOGIN


@pytest.mark.parametrize("rd", ACCEPTED_RETURN_URLS)
async def test_a_return_url_on_an_allowed_origin_is_followed(auth_client: Client, rd: str) -> None:
    browser = Browser(auth_client)
    page = await browser.log_in(await register(auth_client), rd=rd)
    assert page.status == 303
    assert page.location == rd


async def test_http_return_urls_only_in_development_and_other_origins_only_when_allowed(
    make_auth_client: AuthClientFactory,
) -> None:
    app_origin = ("https", "app.tessera.test", 443)
    plain = ("http", "plain.tessera.test", 80)
    for environment, http_followed in (("development", True), ("production", False)):
        client = await make_auth_client(
            environment=environment, portal_allowed_origins=(app_origin, plain)
        )
        for rd, followed in (
            ("https://app.tessera.test/x", True),
            ("https://other.tessera.test/x", False),
            ("http://plain.tessera.test/x", http_followed),
        ):
            page = await Browser(client).log_in(await register(client), rd=rd)
            assert page.location == (rd if followed else ACCOUNT), (environment, rd)


async def test_start_sends_the_asked_url_to_the_login_form_encoded(auth_client: Client) -> None:
    asked = f"{ISSUER}/app/reports/q.html?a=b&c=%2F"
    browser = Browser(auth_client)
    start = await browser.get(START, headers={"X-Original-URL": asked})
    assert start.status == 302
    assert start.location == f"{LOGIN}?{urlencode({'rd': asked})}"
    assert start.headers["Cache-Control"] == "no-store"
    assert_security_headers(start)
    assert parse_qs(urlsplit(start.location).query)["rd"] == [asked]
    form = await browser.get(start.location)
    assert f'name="rd" value="{asked.replace("&", "&amp;")}"' in form.text
    assert form.hidden("rd") == asked
    page = await browser.post(
        LOGIN,
        {
            "username": await register(auth_client),
            "password": PASSWORD,
            "csrf_token": form.csrf_token,
            "rd": asked,
        },
    )
    assert page.location == asked
    assert (await browser.get(START)).location == LOGIN  # no header: no rd


# --- the account page -------------------------------------------------------------------


async def test_the_account_page_sends_a_browser_without_a_session_to_log_in(
    auth_client: Client,
) -> None:
    page = await Browser(auth_client).get(ACCOUNT)
    assert page.status == 303
    assert page.location == "/auth/portal/login?rd=/auth/portal/account"
    assert_security_headers(page)
    stale = Browser(auth_client, cookies={SESSION_COOKIE: "x" * 43})
    assert (await stale.get(ACCOUNT)).location == page.location


async def test_the_account_page_lists_my_sessions_and_marks_this_one(
    auth_client: Client, clock: ManualClock
) -> None:
    browser, username = await signed_in(auth_client, user_agent="Laptop/1.0")
    clock.advance(60)
    phone = Browser(auth_client, user_agent="Phone/2.0")
    await phone.log_in(username)
    await signed_in(auth_client, user_agent="Stranger/3.0")
    page = await browser.get(ACCOUNT)
    assert page.status == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert_security_headers(page)
    assert f'<dd id="username">{username}</dd>' in page.text
    rows = re.findall(r"<tr( class=\"current\" aria-current=\"true\")? data-session=", page.text)
    assert len(rows) == 2
    assert rows[0] == "" and rows[1] != ""  # newest first: the phone, then this laptop
    assert "Phone/2.0" in page.text and "Laptop/1.0" in page.text
    assert "Stranger/3.0" not in page.text
    assert "127.0.0.1" in page.text
    current = re.search(r'class="current"[^>]*>\s*<td>Laptop/1.0 <strong', page.text)
    assert current is not None
    assert "(this device)" in page.text
    assert "<script" not in page.text.lower() and "style=" not in page.text.lower()
    for action in (LOGOUT, LOGOUT_ALL, PASSWORD_FORM):
        assert f'action="{action}"' in page.text


def _session_ids(page: Page) -> dict[str, str]:
    """The listed sessions' public IDs by device, in the page's order."""
    rows = re.findall(r'data-session="([^"]+)">\s*<td>([^<]*)', page.text)
    return {device.strip(): public_id for public_id, device in rows}


async def test_revoke_one_session_refuses_it_everywhere(auth_client: Client) -> None:
    browser, username = await signed_in(auth_client)
    phone = Browser(auth_client, user_agent="Phone/2.0")
    await phone.log_in(username)
    assert phone.session is not None
    page = await browser.get(ACCOUNT)
    listed = _session_ids(page)
    phone_id, mine = listed["Phone/2.0"], listed["TestBrowser/1.0"]
    done = await browser.post(revoke_path(phone_id), {"csrf_token": page.csrf_token})
    assert done.status == 303 and done.location == ACCOUNT
    assert await me_status(auth_client, phone.session) == 401
    assert browser.session is not None and await me_status(auth_client, browser.session) == 200
    after = await browser.get(ACCOUNT)
    assert _session_ids(after) == {"TestBrowser/1.0": mine}
    again = await browser.post(revoke_path(phone_id), {"csrf_token": page.csrf_token})
    assert again.status == 303 and again.location == ACCOUNT  # already gone: no error
    # Someone else's session is not mine to revoke.
    stranger, _ = await signed_in(auth_client)
    (theirs,) = _session_ids(await stranger.get(ACCOUNT)).values()
    await browser.post(revoke_path(theirs), {"csrf_token": page.csrf_token})
    assert stranger.session is not None and await me_status(auth_client, stranger.session) == 200


async def test_revoking_this_session_logs_this_browser_out(auth_client: Client) -> None:
    browser, _ = await signed_in(auth_client)
    session = browser.session
    assert session is not None
    page = await browser.get(ACCOUNT)
    (mine,) = _session_ids(page).values()
    done = await browser.post(revoke_path(mine), {"csrf_token": page.csrf_token})
    assert done.status == 303 and done.location == LOGIN
    assert done.set_cookies[SESSION_COOKIE]["max-age"] == "0"
    assert await me_status(auth_client, session) == 401


async def test_logout_revokes_the_session_and_clears_the_cookie(auth_client: Client) -> None:
    browser, _ = await signed_in(auth_client)
    session = browser.session
    assert session is not None
    page = await browser.get(ACCOUNT)
    done = await browser.post(LOGOUT, {"csrf_token": page.csrf_token})
    assert done.status == 303
    assert done.location == LOGIN
    assert done.set_cookies[SESSION_COOKIE]["max-age"] == "0"
    assert_security_headers(done)
    assert await me_status(auth_client, session) == 401
    assert (await browser.get(ACCOUNT)).status == 303
    # Logged out already: nothing to do, and no error.
    assert (await browser.post(LOGOUT, {})).location == LOGIN


async def test_logout_everywhere_refuses_every_session(auth_client: Client) -> None:
    browser, username = await signed_in(auth_client)
    phone = Browser(auth_client, user_agent="Phone/2.0")
    await phone.log_in(username)
    sessions = [browser.session, phone.session]
    page = await browser.get(ACCOUNT)
    done = await browser.post(LOGOUT_ALL, {"csrf_token": page.csrf_token})
    assert done.status == 303
    assert done.location == f"{LOGIN}?notice=logged-out-everywhere"
    for session in sessions:
        assert session is not None and await me_status(auth_client, session) == 401
    notice = await browser.get(done.location)
    assert "You are logged out on every device." in notice.text


async def test_change_password_revokes_everything_and_the_new_one_works(
    auth_client: Client,
) -> None:
    browser, username = await signed_in(auth_client)
    session = browser.session
    assert session is not None
    page = await browser.get(ACCOUNT)
    form = {"csrf_token": page.csrf_token, "current_password": PASSWORD}

    wrong = await browser.post(
        PASSWORD_FORM, {**form, "current_password": "not my password", "new_password": NEW_PASSWORD}
    )
    assert wrong.status == 403
    assert "The current password is wrong." in wrong.text
    assert_security_headers(wrong)
    weak = await browser.post(PASSWORD_FORM, {**form, "new_password": "short"})
    assert weak.status == 400
    assert "The new password cannot be used: password must be at least" in weak.text
    missing = await browser.post(PASSWORD_FORM, {"csrf_token": page.csrf_token})
    assert missing.status == 400
    assert "Enter your current password and a new one." in missing.text
    assert await me_status(auth_client, session) == 200  # refusals changed nothing

    done = await browser.post(PASSWORD_FORM, {**form, "new_password": NEW_PASSWORD})
    assert done.status == 303
    assert done.location == f"{LOGIN}?notice=password-changed"
    assert await me_status(auth_client, session) == 401
    assert (await Browser(auth_client).log_in(username)).status == 401
    assert (await Browser(auth_client).log_in(username, NEW_PASSWORD)).status == 303


# --- CSRF: every form -------------------------------------------------------------------

FORGERIES = {
    "no token": ({}, None),
    "a wrong token": ({}, "A" * 43),
    "another site's origin": ({"Origin": "https://evil.example"}, "right"),
    "a cross-site fetch": ({"Sec-Fetch-Site": "cross-site"}, "right"),
    "an opaque origin": ({"Origin": "null"}, "right"),
}


def _forged(token: str | None, right: str) -> dict[str, str]:
    if token is None:
        return {}
    return {"csrf_token": right if token == "right" else token}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_forged_login_is_refused_and_logs_nobody_in(
    auth_client: Client, forgery: str
) -> None:
    headers, token = FORGERIES[forgery]
    username = await register(auth_client)
    browser = Browser(auth_client)
    form = await browser.get(LOGIN)
    page = await browser.post(
        LOGIN,
        {"username": username, "password": PASSWORD, **_forged(token, form.csrf_token)},
        headers=headers,
    )
    assert page.status == 403
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "nothing was done" in page.text
    assert_security_headers(page)
    assert SESSION_COOKIE not in page.set_cookies


async def test_a_login_without_the_csrf_cookie_is_refused(auth_client: Client) -> None:
    username = await register(auth_client)
    browser = Browser(auth_client)
    form = await browser.get(LOGIN)
    browser.cookies.clear()
    page = await browser.post(
        LOGIN, {"username": username, "password": PASSWORD, "csrf_token": form.csrf_token}
    )
    assert page.status == 403
    # Another browser's cookie does not fit this token either.
    other = Browser(auth_client)
    await other.get(LOGIN)
    page = await other.post(
        LOGIN, {"username": username, "password": PASSWORD, "csrf_token": form.csrf_token}
    )
    assert page.status == 403


async def test_the_login_forms_token_does_not_work_on_a_signed_in_form(
    auth_client: Client,
) -> None:
    browser, _ = await signed_in(auth_client)
    login_token = (await browser.get(LOGIN)).csrf_token
    page = await browser.post(LOGOUT_ALL, {"csrf_token": login_token})
    assert page.status == 403
    assert browser.session is not None and await me_status(auth_client, browser.session) == 200


@pytest.mark.parametrize("forgery", list(FORGERIES))
@pytest.mark.parametrize("action", ["logout", "revoke", "logout-all", "password"])
async def test_a_forged_account_form_is_refused_and_changes_nothing(
    auth_client: Client, forgery: str, action: str
) -> None:
    headers, token = FORGERIES[forgery]
    browser, username = await signed_in(auth_client)
    phone = Browser(auth_client, user_agent="Phone/2.0")
    await phone.log_in(username)
    page = await browser.get(ACCOUNT)
    phone_id = _session_ids(page)["Phone/2.0"]
    path, fields = {
        "logout": (LOGOUT, {}),
        "revoke": (revoke_path(phone_id), {}),
        "logout-all": (LOGOUT_ALL, {}),
        "password": (
            PASSWORD_FORM,
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        ),
    }[action]
    refused = await browser.post(
        path, {**fields, **_forged(token, page.csrf_token)}, headers=headers
    )
    assert refused.status == 403
    assert "nothing was done" in refused.text
    assert_security_headers(refused)
    assert SESSION_COOKIE not in refused.set_cookies
    for session in (browser.session, phone.session):
        assert session is not None and await me_status(auth_client, session) == 200
    assert (await Browser(auth_client).log_in(username)).status == 303  # password unchanged


# --- the description (tests/test_openapi.py fuzzes the rest) ------------------------------


def _walk_the_portal(auth: Described) -> None:
    """Every success answer of the portal, held to the OpenAPI description."""
    username = f"walk-{uuid.uuid4().hex[:8]}"
    auth.send("POST", "/auth/register", 201, json_body={"username": username, "password": PASSWORD})
    auth.send("GET", STYLESHEET, 200)
    auth.send("GET", START, 302, headers={"X-Original-URL": f"{ISSUER}/app/"})
    auth.send("GET", ACCOUNT, 303)
    form = auth.send("GET", LOGIN, 200, headers={"Cookie": ""})
    csrf = {CSRF_COOKIE: form.headers["set-cookie"][0].split(";", 1)[0].split("=", 1)[1]}
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    login = {"username": username, "csrf_token": token.group(1), "rd": "/app/"}
    auth.send("POST", LOGIN, 401, form={**login, "password": "wrong"}, cookies=csrf)
    auth.send("POST", LOGIN, 400, form=login, cookies=csrf)
    auth.send("POST", LOGIN, 403, form={**login, "password": PASSWORD})  # no CSRF cookie

    def log_in() -> tuple[dict[str, str], str]:
        answer = auth.send("POST", LOGIN, 303, form={**login, "password": PASSWORD}, cookies=csrf)
        cookie = answer.headers["set-cookie"][0].split(";", 1)[0].split("=", 1)
        session = {cookie[0]: cookie[1]}
        page = auth.send("GET", ACCOUNT, 200, cookies=session)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None
        return session, found.group(1)

    session, token = log_in()
    signed_in = {"csrf_token": token}
    own = re.findall(
        r'data-session="([^"]+)"', auth.send("GET", ACCOUNT, 200, cookies=session).text
    )
    auth.send(
        "POST",
        REVOKE_PATH,
        303,
        form=signed_in,
        cookies=session,
        path_parameters={"session_id": own[0]},
    )
    session, token = log_in()
    change = {"csrf_token": token, "current_password": "wrong", "new_password": NEW_PASSWORD}
    auth.send("POST", PASSWORD_FORM, 403, form=change, cookies=session)
    auth.send(
        "POST",
        PASSWORD_FORM,
        400,
        form={**change, "current_password": PASSWORD, "new_password": "short"},
        cookies=session,
    )
    auth.send("POST", LOGOUT_ALL, 303, form={"csrf_token": token}, cookies=session)
    session, token = log_in()
    auth.send("POST", LOGOUT, 303, form={"csrf_token": token}, cookies=session)
    session, token = log_in()
    auth.send(
        "POST",
        PASSWORD_FORM,
        303,
        form={"csrf_token": token, "current_password": PASSWORD, "new_password": NEW_PASSWORD},
        cookies=session,
    )
    for _ in range(4):  # with the one above, the address's budget on this account
        auth.send("POST", LOGIN, 401, form={**login, "password": "wrong"}, cookies=csrf)
    auth.send("POST", LOGIN, 429, form={**login, "password": "wrong"}, cookies=csrf)


async def test_the_portals_answers_are_the_ones_its_description_gives(
    auth_server: TestServer,
) -> None:
    base_url = str(auth_server.make_url("")).rstrip("/")
    await asyncio.to_thread(_walk_the_portal, Described(auth_description(), base_url))
