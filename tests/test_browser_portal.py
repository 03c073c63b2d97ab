"""The login portal in a real browser: Debian's Chromium, driven by Playwright, against
the real local stack (nginx with TLS, the auth service, three replicas, PostgreSQL
and Redis) on the module's own ports and run directory.

TLS is verified (tests/browser.py): Chromium accepts the key of the certificate
Python checked against the stack's CA, and nothing else.
"""

from __future__ import annotations

import html
import json
import secrets
import ssl
import threading
import urllib.error
import urllib.request
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import trustme
from cryptography import x509
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect
from playwright.sync_api import Error as PlaywrightError

from tessera_demo.stack_control import StackControl
from tessera_stack.tls import TlsFiles
from tessera_verify.sessions import SESSION_COOKIE

from . import browser as chromium
from .browser import TrustedOrigin, launch, new_context, save_screenshot, verified_spki
from .private_stack import private_stack_fixture

pytestmark = pytest.mark.slow

stack = private_stack_fixture(redis_db=8, name="browser")
playwright_driver = chromium.playwright_driver
browser = chromium.browser
browser_context = chromium.browser_context
page = chromium.page


@pytest.fixture(scope="module")
def browser_origin(stack: StackControl) -> TrustedOrigin:
    return TrustedOrigin(stack.base_url, stack.ca_cert)


# -- the browser trusts the stack, and only because TLS checks out ------------------------


def test_chromium_reaches_the_stack_over_verified_tls(
    page: Page, browser_origin: TrustedOrigin
) -> None:
    response = page.goto("/nginx-health")
    assert response is not None and response.status == 200
    assert page.content().count("ok") == 1
    details = response.security_details()
    assert details is not None
    assert details.get("protocol") == "TLS 1.3"
    # The certificate Chromium saw is the stack's (trustme names the host in the SAN only).
    served = x509.load_pem_x509_certificate(
        TlsFiles(browser_origin.ca_cert.parent).cert.read_bytes()
    )
    assert details.get("validTo") == served.not_valid_after_utc.timestamp()


def test_a_chromium_that_was_not_given_the_stacks_key_refuses_the_stack(
    playwright_driver: Playwright, browser_origin: TrustedOrigin
) -> None:
    untrusting = launch(playwright_driver, trusted_spki=None)
    try:
        page = untrusting.new_page()
        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            page.goto(f"{browser_origin.base_url}/nginx-health")
    finally:
        untrusting.close()


def test_the_key_is_taken_only_from_a_certificate_that_chains_to_the_stacks_ca(
    browser_origin: TrustedOrigin, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        verified_spki(TrustedOrigin(browser_origin.base_url, other_ca))


# -- helpers -------------------------------------------------------------------------------

#: Every replica of the private stack (row 4: shared sessions behind round-robin).
REPLICAS = {"r1", "r2", "r3"}
#: Who logs in: one account per test, registered through the stack's own API.
PASSWORD = "browser password: correct horse battery staple"


def _https(
    origin: TrustedOrigin,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: dict[str, str] | None = None,
) -> tuple[int, Message]:
    """One request through nginx (TLS checked against the stack's CA), redirects not
    followed: the status and the headers."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - https only, to the stack
        origin.base_url + path,
        data=data,
        method=method,
        headers={**({"Content-Type": "application/json"} if data else {}), **(headers or {})},
    )
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=origin.ca_cert)),
        NoRedirects(),
    )
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def register(origin: TrustedOrigin, prefix: str, *, exact: bool = False) -> str:
    """A new account (``POST /auth/register``) named ``prefix`` and a random suffix (or
    ``prefix`` alone: the stack is the module's own); its username."""
    username = prefix if exact else f"{prefix}-{secrets.token_hex(3)}"
    status, _ = _https(
        origin, "POST", "/auth/register", body={"username": username, "password": PASSWORD}
    )
    assert status == 201, status
    return username


def session_cookie(context: BrowserContext) -> str | None:
    """The browser's session cookie (the auth service's ``__Host-`` one), or None."""
    values = [c["value"] for c in context.cookies() if c["name"] == SESSION_COOKIE]
    assert len(values) <= 1, values
    return values[0] if values else None


def me_on_every_replica(origin: TrustedOrigin, session_id: str) -> dict[str, set[int]]:
    """``GET /api/me`` with ``session_id`` through nginx until every replica has answered
    (``X-Served-By``): the statuses each gave."""
    seen: dict[str, set[int]] = {}
    for _ in range(4 * len(REPLICAS)):
        status, headers = _https(
            origin, "GET", "/api/me", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"}
        )
        seen.setdefault(headers["X-Served-By"], set()).add(status)
        if set(seen) == REPLICAS:
            break
    return seen


def log_in_with_the_keyboard(page: Page, username: str, password: str = PASSWORD) -> None:
    """On the login form: type, Tab, type, Enter (the username field has the focus)."""
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(password)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def log_in(page: Page, username: str, rd: str | None = None) -> None:
    """Open the login form (with ``rd`` as the return URL) and log in."""
    page.goto(LOGIN if rd is None else f"{LOGIN}?{urlencode({'rd': rd})}")
    log_in_with_the_keyboard(page, username)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


LOGIN = "/auth/portal/login"
ACCOUNT = "/auth/portal/account"


# -- log in through the redirect and come back ------------------------------------------


def test_a_browser_without_a_session_logs_in_through_the_portal_and_lands_on_the_page_it_asked_for(
    page: Page, browser_context: BrowserContext, browser_origin: TrustedOrigin
) -> None:
    """Keyboard only, from a protected page of an app tessera did not write; the session
    cookie the browser had before (planted: session fixation) is replaced at login."""
    username = register(browser_origin, "ada")
    planted = secrets.token_urlsafe(32)
    browser_context.add_cookies(
        [
            {
                "name": SESSION_COOKIE,
                "value": planted,
                "url": browser_origin.base_url,
                "secure": True,
                "httpOnly": True,
                "sameSite": "Lax",
            }
        ]
    )
    asked = f"{browser_origin.base_url}/app/page.html?x=1"
    page.goto("/app/page.html?x=1")
    assert page.url == f"{browser_origin.base_url}{LOGIN}?{urlencode({'rd': asked})}"
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.locator("input[name=rd]").input_value() == asked
    assert session_cookie(browser_context) == planted
    save_screenshot(page, "portal-login")

    log_in_with_the_keyboard(page, username)
    assert page.url == asked, page.title()
    expect(page.get_by_role("heading", name="Team page")).to_be_visible()
    save_screenshot(page, "protected-app")

    fresh = session_cookie(browser_context)
    assert fresh is not None and fresh != planted
    (cookie,) = [c for c in browser_context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["path"] == "/"
    assert me_on_every_replica(browser_origin, fresh) == {r: {200} for r in REPLICAS}
    assert me_on_every_replica(browser_origin, planted) == {r: {401} for r in REPLICAS}


def test_the_login_page_has_labelled_inputs_and_one_error_for_every_failed_login(
    page: Page, browser_origin: TrustedOrigin
) -> None:
    """A wrong password and an unknown user read the same; the form keeps the return URL."""
    username = register(browser_origin, "grace")
    page.goto("/app/reports/quarterly.html")
    errors = []
    for name in (username, f"nobody-{secrets.token_hex(3)}"):
        page.get_by_label("Username").fill(name)
        page.get_by_label("Password").fill("not the password at all")
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        errors.append(page.get_by_role("alert").inner_text())
        assert page.locator("input[name=rd]").input_value().endswith("/app/reports/quarterly.html")
    assert errors[0] == errors[1] == "Wrong username or password."
    # The error is announced with the field it is about.
    described = page.get_by_label("Username").get_attribute("aria-describedby")
    assert described == page.get_by_role("alert").get_attribute("id")
    save_screenshot(page, "portal-login-error")


def test_login_works_with_javascript_disabled(
    browser: Browser, browser_origin: TrustedOrigin
) -> None:
    username = register(browser_origin, "nojs")
    context = new_context(browser, browser_origin, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/app/reports/quarterly.html?quarter=3")
        assert urlsplit(page.url).path == LOGIN
        # No script runs: autofocus is the browser's own, the submit is the form's.
        log_in_with_the_keyboard(page, username)
        assert page.url == f"{browser_origin.base_url}/app/reports/quarterly.html?quarter=3"
        expect(page.get_by_role("heading", name="Quarterly report")).to_be_visible()
    finally:
        context.close()


# -- logout and revocation reach every replica ----------------------------------------


def test_logout_takes_effect_on_every_replica(
    page: Page, browser_context: BrowserContext, browser_origin: TrustedOrigin
) -> None:
    username = register(browser_origin, "lin")
    log_in(page, username)
    assert urlsplit(page.url).path == ACCOUNT
    session_id = session_cookie(browser_context)
    assert session_id is not None
    assert me_on_every_replica(browser_origin, session_id) == {r: {200} for r in REPLICAS}

    with page.expect_navigation():
        page.get_by_role("button", name="Log out", exact=True).click()
    assert urlsplit(page.url).path == LOGIN
    assert session_cookie(browser_context) is None
    assert me_on_every_replica(browser_origin, session_id) == {r: {401} for r in REPLICAS}
    page.goto("/app/page.html")
    assert urlsplit(page.url).path == LOGIN


def test_revoking_another_session_on_the_account_page_takes_effect_on_every_replica(
    page: Page,
    browser_context: BrowserContext,
    browser: Browser,
    browser_origin: TrustedOrigin,
) -> None:
    username = register(browser_origin, "margaret", exact=True)
    phone = new_context(
        browser,
        browser_origin,
        user_agent="Mozilla/5.0 (Android 14; Mobile; rv:128.0) Gecko/128.0 Firefox/128.0",
    )
    try:
        log_in(phone.new_page(), username)
        phone_session = session_cookie(phone)
        assert phone_session is not None
    finally:
        phone.close()
    log_in(page, username)
    own_session = session_cookie(browser_context)
    assert own_session is not None

    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(2)
    current = page.locator("tr[aria-current=true]")
    expect(current).to_contain_text("(this device)")
    save_screenshot(page, "portal-account", full_page=True)

    other = rows.filter(has_text="Firefox")
    with page.expect_navigation():
        other.get_by_role("button", name="Revoke").click()
    assert urlsplit(page.url).path == ACCOUNT
    expect(rows).to_have_count(1)
    assert me_on_every_replica(browser_origin, phone_session) == {r: {401} for r in REPLICAS}
    assert me_on_every_replica(browser_origin, own_session) == {r: {200} for r in REPLICAS}


# -- forms only from the portal's own pages ---------------------------------------------


def test_a_login_form_posted_without_its_csrf_token_is_refused(
    page: Page, browser_context: BrowserContext, browser_origin: TrustedOrigin
) -> None:
    username = register(browser_origin, "token")
    page.goto(LOGIN)
    page.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_response(f"{browser_origin.base_url}{LOGIN}") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 403
    assert session_cookie(browser_context) is None


def test_an_account_form_posted_without_its_csrf_token_is_refused(
    page: Page, browser_context: BrowserContext, browser_origin: TrustedOrigin
) -> None:
    username = register(browser_origin, "tokenless")
    log_in(page, username)
    session_id = session_cookie(browser_context)
    assert session_id is not None
    logout = page.locator("form", has=page.get_by_role("button", name="Log out", exact=True))
    logout.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    with page.expect_response(f"{browser_origin.base_url}/auth/portal/logout") as answer:
        logout.get_by_role("button").click()
    assert answer.value.status == 403
    assert session_cookie(browser_context) == session_id
    assert me_on_every_replica(browser_origin, session_id) == {r: {200} for r in REPLICAS}


class _AttackerSite:
    """A page on another origin (plain HTTP on another loopback address) that posts a
    form to the portal as soon as it loads."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _AttackerSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _auto_submit(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return (
        f'<!doctype html><form method="post" action="{html.escape(action)}">{inputs}</form>'
        "<script>document.forms[0].submit()</script>"
    )


def test_a_cross_site_post_to_the_portal_is_refused(
    page: Page, browser_context: BrowserContext, browser_origin: TrustedOrigin
) -> None:
    """Logging the victim out from another site, and logging the victim in as the
    attacker (login CSRF, with a token the attacker got from the form himself)."""
    victim = register(browser_origin, "victim")
    attacker = register(browser_origin, "attacker")
    base = browser_origin.base_url
    log_in(page, victim)
    session_id = session_cookie(browser_context)
    assert session_id is not None
    token = page.locator("input[name=csrf_token]").first.input_value()

    logout = _auto_submit(f"{base}/auth/portal/logout", {"csrf_token": token})
    with (
        _AttackerSite(logout) as site,
        page.expect_response(f"{base}/auth/portal/logout") as answer,
    ):
        page.goto(site.url)
    assert answer.value.status == 403
    assert session_cookie(browser_context) == session_id
    assert me_on_every_replica(browser_origin, session_id) == {r: {200} for r in REPLICAS}

    browser_context.clear_cookies()
    login = _auto_submit(
        f"{base}{LOGIN}", {"username": attacker, "password": PASSWORD, "csrf_token": token}
    )
    with (
        _AttackerSite(login) as site,
        page.expect_response(f"{base}{LOGIN}") as answer,
    ):
        page.goto(site.url)
    assert answer.value.status == 403
    assert session_cookie(browser_context) is None


# -- no open redirect ----------------------------------------------------------------------

OPEN_REDIRECTS = [
    "https://evil.example/",
    "//evil.example",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("rd", OPEN_REDIRECTS)
def test_a_return_url_to_another_site_ends_on_the_stacks_own_origin(
    rd: str, page: Page, browser_context: BrowserContext, browser_origin: TrustedOrigin
) -> None:
    username = register(browser_origin, "redirected")
    requested: list[str] = []
    dialogs: list[str] = []
    browser_context.on("request", lambda request: requested.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    log_in(page, username, rd=rd)
    page.wait_for_load_state()
    assert origin_of(page.url) == browser_origin.base_url
    assert urlsplit(page.url).path == ACCOUNT
    assert not [url for url in requested if "evil.example" in (urlsplit(url).hostname or "")]
    assert dialogs == []


def test_nginx_hands_over_a_forged_host_and_the_portal_drops_it(
    browser_origin: TrustedOrigin,
) -> None:
    """The URL nginx passes on is built from the request's Host, which a client can
    choose: the portal's allow-list, not nginx, keeps it out of the return URL."""
    for host in ("evil.example", "127.0.0.1.evil.example"):
        status, headers = _https(browser_origin, "GET", "/app/page.html", headers={"Host": host})
        assert status == 302
        assert headers["Location"] == LOGIN
    status, headers = _https(browser_origin, "GET", "/app/page.html?x=1")
    assert status == 302
    asked = f"{browser_origin.base_url}/app/page.html?x=1"
    assert headers["Location"] == f"{LOGIN}?{urlencode({'rd': asked})}"
