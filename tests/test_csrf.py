"""The Origin check compares whole origins (scheme, host, port), never host:port alone.

A page on ``http://tessera.example.com`` (plain HTTP, so anyone on the path can
write it) is another origin than ``https://tessera.example.com``: its
cookie-carrying POSTs are refused like any other site's.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from tessera_platform.csrf import check_same_origin
from tessera_verify.errors import CSRFRejected

BEHIND_TLS = {"Host": "tessera.example.com", "X-Forwarded-Proto": "https"}
PLAIN_DEV = {"Host": "127.0.0.1:8080"}


def _post(headers: dict[str, str], origin: str) -> None:
    check_same_origin(
        make_mocked_request("POST", "/auth/logout", headers={**headers, "Origin": origin})
    )


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        (BEHIND_TLS, "https://tessera.example.com"),
        (BEHIND_TLS, "https://tessera.example.com:443"),
        (BEHIND_TLS, "https://Tessera.Example.com"),
        ({**BEHIND_TLS, "Host": "tessera.example.com:8443"}, "https://tessera.example.com:8443"),
        (PLAIN_DEV, "http://127.0.0.1:8080"),
    ],
)
def test_the_origin_we_serve_is_accepted(headers: dict[str, str], origin: str) -> None:
    _post(headers, origin)


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        (BEHIND_TLS, "http://tessera.example.com"),
        (BEHIND_TLS, "http://tessera.example.com:443"),
        (BEHIND_TLS, "https://tessera.example.com:8443"),
        (BEHIND_TLS, "https://evil.example"),
        (BEHIND_TLS, "https://tessera.example.com.evil.example"),
        (BEHIND_TLS, "https://tessera.example.com:notaport"),
        (BEHIND_TLS, "tessera.example.com"),
        (BEHIND_TLS, "null"),
        ({**BEHIND_TLS, "Host": "tessera.example.com:8443"}, "http://tessera.example.com:8443"),
        (PLAIN_DEV, "https://127.0.0.1:8080"),
        (PLAIN_DEV, "http://127.0.0.1:8081"),
    ],
)
def test_another_scheme_host_or_port_is_refused(headers: dict[str, str], origin: str) -> None:
    with pytest.raises(CSRFRejected):
        _post(headers, origin)


def test_configured_origins_are_compared_whole() -> None:
    def post(origin: str) -> None:
        request = make_mocked_request("POST", "/", headers={**BEHIND_TLS, "Origin": origin})
        check_same_origin(request, ("https://app.example.com",))

    post("https://app.example.com")
    post("https://app.example.com:443")
    for other in ("http://app.example.com", "https://app.example.com:8443"):
        with pytest.raises(CSRFRejected):
            post(other)
