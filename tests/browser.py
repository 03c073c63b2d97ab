"""Chromium for the browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browsers are never downloaded (``deploy/scripts/bootstrap.sh
--dev`` installs Debian's ``chromium``). TLS is verified, not switched off:
before Chromium starts, Python's ``ssl`` checks the certificate the stack's
nginx presents against the stack's CA (chain and host name), and Chromium is
told to accept exactly that public key (``--ignore-certificate-errors-spki-list``,
the SHA-256 of its SubjectPublicKeyInfo) and nothing else. A context cannot be
given a CA of its own, so the browser (and its Playwright driver, see
:func:`playwright_driver`) is one per stack, that is per module; each test gets
a fresh context (no cookies, no cache) and a page in it.

A test module provides ``browser_origin`` (a module fixture: the stack's
:class:`TrustedOrigin`) and takes the fixtures it uses from here by name::

    from . import browser as chromium

    playwright_driver = chromium.playwright_driver
    browser = chromium.browser
    page = chromium.page
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import ssl
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

__all__ = [
    "CHROMIUM",
    "SCREENSHOTS",
    "TrustedOrigin",
    "browser",
    "browser_context",
    "new_context",
    "page",
    "playwright_driver",
    "run_coroutine",
    "save_screenshot",
    "verified_spki",
]

T = TypeVar("T")

#: Debian's Chromium (a launcher script around /usr/lib/chromium/chromium).
CHROMIUM = Path("/usr/bin/chromium")
#: Where the tests leave the screenshots the README shows.
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
#: One window size, so screenshots from different runs compare.
VIEWPORT = {"width": 1024, "height": 720}


@dataclass(frozen=True)
class TrustedOrigin:
    """An HTTPS origin and the CA certificate its server's certificate chains to."""

    base_url: str
    ca_cert: Path


def verified_spki(origin: TrustedOrigin) -> str:
    """The base64 SHA-256 of the public key ``origin``'s server presents, once Python's
    ``ssl`` has verified its certificate against ``origin.ca_cert`` for the host name:
    what ``--ignore-certificate-errors-spki-list`` takes."""
    parts = urlsplit(origin.base_url)
    assert parts.scheme == "https" and parts.hostname, origin.base_url
    context = ssl.create_default_context(cafile=str(origin.ca_cert))
    with (
        socket.create_connection((parts.hostname, parts.port or 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def chromium_args(*, trusted_spki: str | None) -> list[str]:
    """Chromium's command line: the one key it accepts besides the system's roots."""
    args = []
    if trusted_spki is not None:
        args.append(f"--ignore-certificate-errors-spki-list={trusted_spki}")
    if os.geteuid() == 0:
        # Chromium refuses to run its sandbox as root (CI containers run as root).
        args.append("--no-sandbox")
    return args


def launch(driver: Playwright, *, trusted_spki: str | None) -> Browser:
    """Headless Debian Chromium trusting ``trusted_spki`` (None: nothing extra)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run deploy/scripts/bootstrap.sh --dev")
    return driver.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=chromium_args(trusted_spki=trusted_spki),
    )


@pytest.fixture(scope="module")
def playwright_driver(browser_origin: TrustedOrigin) -> Iterator[Playwright]:
    """Playwright's driver, for the module.

    While the sync driver runs, this thread counts as inside a running event loop
    (``asyncio.run`` refuses to start): so it starts after the module's stack is up
    (it asks for ``browser_origin``) and stops before the stack goes down, and a test
    runs coroutines with :func:`run_coroutine` meanwhile.
    """
    with sync_playwright() as driver:
        yield driver


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` in a thread of its own (see :func:`playwright_driver`)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright, browser_origin: TrustedOrigin) -> Iterator[Browser]:
    """Chromium trusting the module's stack (its certificate verified first), and
    nothing else that the system's roots would not."""
    chromium = launch(playwright_driver, trusted_spki=verified_spki(browser_origin))
    yield chromium
    chromium.close()


def new_context(browser: Browser, origin: TrustedOrigin, **options: Any) -> BrowserContext:
    """A fresh context (no cookies, no cache) with relative URLs resolved against
    ``origin``; ``options`` as Playwright's ``new_context`` takes them
    (``java_script_enabled=False``...)."""
    return browser.new_context(
        base_url=origin.base_url, viewport=VIEWPORT, locale="en-GB", **options
    )


@pytest.fixture
def browser_context(browser: Browser, browser_origin: TrustedOrigin) -> Iterator[BrowserContext]:
    """One test's context: nothing carried over from another test."""
    context = new_context(browser, browser_origin)
    yield context
    context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Page:
    """A page in the test's own context."""
    return browser_context.new_page()


def save_screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """``page`` (its visible part, or all of it), as ``docs/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled", full_page=full_page)
    return path
