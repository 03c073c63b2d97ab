"""Reading one cookie from the raw header: exactly the named cookie, never a lookalike."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from tessera_verify.cookies import cookie_value

SESSION, ROUTE = "__Host-tessera_session", "tessera_route"


@pytest.mark.parametrize(
    ("header", "session", "route"),
    [
        ("__Host-tessera_session=abc_-1; tessera_route=r1", "abc_-1", "r1"),
        ("tessera_route=r2;__Host-tessera_session=xyz", "xyz", "r2"),
        ("x__Host-tessera_session=evil; a=b", None, None),
        ("foo=bar", None, None),
        ("__Host-tessera_session=", "", None),
        ('tessera_route="r1"', None, None),
        ("a=1;  tessera_route=r3  ; b=2", None, "r3"),
        ("tessera_route=r1; tessera_route=r2", None, "r1"),
        ("", None, None),
    ],
)
def test_only_the_named_cookie_is_read(header: str, session: str | None, route: str | None) -> None:
    request = make_mocked_request("GET", "/", headers={"Cookie": header} if header else {})
    assert cookie_value(request, SESSION) == session
    assert cookie_value(request, ROUTE) == route
