"""The login portal in a real browser: Debian's Chromium, driven by Playwright, against
the real local stack (nginx with TLS, the auth service, three replicas, PostgreSQL
and Redis) on the module's own ports and run directory.

TLS is verified (tests/browser.py): Chromium accepts the key of the certificate
Python checked against the stack's CA, and nothing else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Playwright

from tessera_demo.stack_control import StackControl
from tessera_stack.tls import TlsFiles

from . import browser as chromium
from .browser import TrustedOrigin, launch, verified_spki
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
