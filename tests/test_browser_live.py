"""The live load-balancer page in a real browser: Debian's Chromium, driven by Playwright,
against the whole local stack on its own PostgreSQL and Redis (so the page's operator
controls may kill them), watching rows behave as the README's table says.

Each test logs a fresh account in through the portal's redirect, switches the stack to
its row with the page's own operator controls, and reads what the page counted: per
phase (a control starts one), how many requests it sent, how many a replica
authenticated, how many failed, and which replicas knew the user. Every wait is
bounded by Playwright's timeouts; nothing asserts on time.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from . import browser as chromium
from .browser import TrustedOrigin, new_context, save_screenshot
from .private_stack import OwnStack, own_stack

pytestmark = pytest.mark.slow

playwright_driver = chromium.playwright_driver
browser = chromium.browser

PASSWORD = "live page password: correct horse battery staple"
REPLICAS = "r1 r2 r3"
#: Requests a phase counts before the test reads it (the page sends 20 a second).
ENOUGH = 30
#: After a kill: longer than nginx's fail_timeout (5 s at 20 a second), so that nginx
#: tries the dead replica again within the phase.
AFTER_A_KILL = 120
#: A row switch restarts every replica; `up` after a Redis kill waits for the services.
CONTROL_TIMEOUT_MS = 150_000
#: A refusal runs no command; the bound is for a machine busy with the page's own traffic.
REFUSAL_MS = 20_000
PHASE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnStack]:
    with own_stack(tmp_path_factory.mktemp("live-stack")) as control:
        yield control


@pytest.fixture(scope="module")
def browser_origin(stack: OwnStack) -> TrustedOrigin:
    return TrustedOrigin(stack.base_url, stack.ca_cert)


@pytest.fixture(scope="module")
def operator_secret(stack: OwnStack) -> str:
    return stack.layout.secret("operator_secret").read_text(encoding="ascii").strip()


@pytest.fixture(autouse=True)
def stack_made_whole(stack: OwnStack) -> Iterator[None]:
    """After each test, `up`: what it killed comes back, even when it failed midway."""
    yield
    code, output = stack.run("up")
    assert code == 0, output


@pytest.fixture
def contexts(browser: Browser, browser_origin: TrustedOrigin) -> Iterator[list[BrowserContext]]:
    """Browser contexts a test opens (:func:`open_context`), closed after it."""
    opened: list[BrowserContext] = []
    yield opened
    for context in opened:
        context.close()


@pytest.fixture
def live_page(
    browser: Browser,
    browser_origin: TrustedOrigin,
    operator_secret: str,
    contexts: list[BrowserContext],
) -> Callable[..., Page]:
    """Opens the live page for a new account named after ``prefix``
    (:func:`open_live`), holding ``secret`` (default: the operator's)."""

    def opener(prefix: str, secret: str | None = None) -> Page:
        username = register(browser_origin, prefix)
        held = operator_secret if secret is None else secret
        return open_live(contexts, browser, browser_origin, username, held)

    return opener


# -- helpers ---------------------------------------------------------------------------------


def _https(
    origin: TrustedOrigin, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Message, bytes]:
    """One request through nginx (TLS checked against the stack's CA), redirects not
    followed: the status, the headers and the body."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(  # noqa: S310 - https only, to the stack
        origin.base_url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=origin.ca_cert)),
        NoRedirects(),
    )
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def register(origin: TrustedOrigin, prefix: str) -> str:
    """A new account (``POST /auth/register``); its username."""
    username = f"{prefix}-{secrets.token_hex(3)}"
    status, _, _ = _https(
        origin, "POST", "/auth/register", {"username": username, "password": PASSWORD}
    )
    assert status == 201, status
    return username


def open_live(
    contexts: list[BrowserContext],
    browser: Browser,
    origin: TrustedOrigin,
    username: str,
    operator_secret: str,
) -> Page:
    """A fresh browser asks for /live/, is sent to the portal, logs in and is brought back;
    the page sends 20 requests a second and holds the operator secret."""
    context = new_context(browser, origin)
    contexts.append(context)
    page = context.new_page()
    page.goto("/live/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation(url=f"{origin.base_url}/live/"):
        page.get_by_role("button", name="Log in").click()
    expect(page.locator("#whoami")).to_have_text(username)
    page.get_by_label("Rate").select_option("20")
    page.get_by_label("Operator secret").fill(operator_secret)
    return page


def operate(page: Page, button: str, command: str) -> None:
    """Click an operator control and wait until the stack command it ran is done."""
    page.locator(button).click()
    expect(page.locator("#operator-status")).to_have_text(
        f"{command}: done", timeout=CONTROL_TIMEOUT_MS
    )


def switch_row(page: Page, number: int) -> None:
    operate(page, f"button[data-row='{number}']", f"row {number}")
    expect(page.locator("#row-number")).to_have_text(str(number))


def sign_in_for_row(page: Page) -> str:
    """Rows 1-3 and 5: the page's own sign-in (a replica's session, or a token); what it says."""
    expect(page.locator("#signin")).to_be_visible()
    page.locator("#signin-password").fill(PASSWORD)
    page.locator("#signin").get_by_role("button", name="Sign in").click()
    status = page.locator("#signin-status")
    expect(status).to_have_text(re.compile(r"^signed in"))
    return status.inner_text()


def new_phase(page: Page) -> None:
    page.get_by_role("button", name="New phase").click()


def phase(page: Page, *, at_least: int = ENOUGH) -> dict[str, Any]:
    """The current phase once it has sent ``at_least`` requests: its counts as the page
    shows them, read in one go (the page redraws twice a second)."""
    page.wait_for_function(
        """(enough) => {
            const row = document.querySelector("#phases tbody tr");
            const sent = row && row.querySelector("[data-field=sent]");
            return sent && Number(sent.textContent) >= enough;
        }""",
        arg=at_least,
        timeout=PHASE_TIMEOUT_MS,
    )
    cells: dict[str, str] = page.evaluate(
        """() => Object.fromEntries(
            [...document.querySelectorAll("#phases tbody tr:first-child [data-field]")]
                .map((cell) => [cell.dataset.field, cell.textContent]))"""
    )
    return {
        **cells,
        "sent": int(cells["sent"]),
        "authenticated": int(cells["authenticated"]),
        "failed": int(cells["failed"]),
    }


def settled_phase(page: Page) -> dict[str, Any]:
    """A fresh phase once the stack has settled after a control: the first one, among a
    bounded few, in which no request failed (after `up`, the replicas may still be
    catching up with Redis for a moment)."""
    for _ in range(5):
        new_phase(page)
        counted = phase(page)
        if counted["failed"] == 0:
            break
    assert counted["failed"] == 0, counted
    return counted


# -- the rows ----------------------------------------------------------------------------------


def test_row_4_spreads_one_user_over_three_replicas_and_a_replicas_loss_fails_nothing(
    live_page: Callable[..., Page],
) -> None:
    page = live_page("row4")
    expect(page.locator("#row-number")).to_have_text("4")
    expect(page.locator("#signin")).to_be_hidden()  # the portal's cookie is row 4's credential
    counted = phase(page)
    assert counted["replicas"] == REPLICAS
    assert counted["failed"] == 0
    assert counted["authenticated"] == counted["sent"]

    operate(page, "button[data-kill='r2']", "kill-replica r2")
    during = phase(page)  # from the click on: the kill happened in this phase
    assert during["label"] == "after kill-replica r2"
    assert during["failed"] == 0
    new_phase(page)
    after = phase(page, at_least=AFTER_A_KILL)
    assert after["replicas"] == "r1 r3"
    assert after["failed"] == 0
    save_screenshot(page, "live-row4", full_page=True)  # three phases, not one failure
    operate(page, "#bring-back", "up")
    assert settled_phase(page)["replicas"] == REPLICAS


@pytest.mark.parametrize("row", [5, 6])
def test_rows_5_and_6_lose_a_replica_without_failing_a_request(
    row: int, live_page: Callable[..., Page]
) -> None:
    page = live_page(f"row{row}")
    switch_row(page, row)
    if row == 5:
        assert sign_in_for_row(page) == "signed in"  # a token, from the auth service
    else:
        expect(page.locator("#signin")).to_be_hidden()
    counted = phase(page)
    assert counted["replicas"] == REPLICAS
    assert counted["failed"] == 0

    operate(page, "button[data-kill='r1']", "kill-replica r1")
    assert phase(page)["failed"] == 0
    new_phase(page)
    after = phase(page, at_least=AFTER_A_KILL)
    assert after["replicas"] == "r2 r3"
    assert after["failed"] == 0
    operate(page, "#bring-back", "up")


def test_row_2_keeps_each_user_on_one_replica(live_page: Callable[..., Page]) -> None:
    first = live_page("row2a")
    switch_row(first, 2)
    second = live_page("row2b", "")
    for page in (first, second):
        said = sign_in_for_row(page)
        replica = said.removeprefix("signed in on replica ")
        counted = phase(page)
        assert counted["replicas"] == replica, (said, counted)  # one replica, this user's
        assert counted["failed"] == 0
        assert counted["authenticated"] == counted["sent"]


def test_row_1_fails_most_requests_and_losing_the_login_replica_fails_all(
    live_page: Callable[..., Page],
) -> None:
    page = live_page("row1")
    switch_row(page, 1)
    replica = sign_in_for_row(page).removeprefix("signed in on replica ")
    counted = phase(page)
    assert counted["replicas"] == replica  # only the replica that took the login knows you
    assert counted["failed"] > 0
    assert counted["authenticated"] > 0
    save_screenshot(page, "live-row1", full_page=True)

    operate(page, f"button[data-kill='{replica}']", f"kill-replica {replica}")
    new_phase(page)
    after = phase(page)
    assert after["authenticated"] == 0
    assert after["failed"] == after["sent"]
    operate(page, "#bring-back", "up")


def test_killing_the_shared_redis_fails_row_4_closed_until_up_brings_it_back(
    live_page: Callable[..., Page],
) -> None:
    page = live_page("redis")
    switch_row(page, 4)
    assert phase(page)["failed"] == 0
    operate(page, "#kill-redis", "kill-redis")
    new_phase(page)
    down = phase(page)
    assert down["authenticated"] == 0  # fail closed: no replica can check a session
    assert down["failed"] == down["sent"]
    assert re.fullmatch(r"503×\d+", down["statuses"]), down  # 503, never a 401: not a logout
    # The page's own state comes through the portal's check, which needs Redis too.
    expect(page.locator("#stack-status")).to_contain_text(
        "/live/state answered 503 (dependency_unavailable)"
    )
    save_screenshot(page, "live-redis-killed", full_page=True)
    # The controls need only the operator secret: they work while sessions cannot be checked.
    operate(page, "#bring-back", "up")
    back = settled_phase(page)
    assert back["failed"] == 0
    assert back["replicas"] == REPLICAS


def test_the_controls_refuse_a_browser_without_the_operator_secret(
    stack: OwnStack, live_page: Callable[..., Page]
) -> None:
    page = live_page("nosecret", "wrong")
    page.locator("button[data-kill='r3']").click()
    expect(page.locator("#operator-status")).to_have_text(
        re.compile(r"^kill-replica: refused \(403\): .*operator secret"), timeout=REFUSAL_MS
    )
    code, output = stack.run("status")
    assert code == 0, output
    assert re.search(r"^resource-r3\s+running", output, re.MULTILINE), output
    expect(page.locator("button[data-kill='r3']")).to_be_enabled()


def test_the_page_is_for_logged_in_browsers_and_the_controls_for_the_operator(
    stack: OwnStack, browser_origin: TrustedOrigin
) -> None:
    """Without a session, the page and its state send you to the portal; without the
    operator secret, a control is refused and the stack is left alone."""
    for path in ("/live/", "/live/state"):
        status, headers, _ = _https(browser_origin, "GET", path)
        assert status == 302, (path, status)
        assert "/auth/portal/login?rd=" in headers["Location"], headers["Location"]
    status, headers, body = _https(
        browser_origin, "POST", "/live/actions/kill-replica", {"replica": "r3"}
    )
    assert status == 403
    assert headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(body)["error"] == "operator_secret_required"
    code, output = stack.run("status")
    assert code == 0, output
    assert re.search(r"^resource-r3\s+running", output, re.MULTILINE), output
    assert re.search(r"^live\s+running", output, re.MULTILINE), output
