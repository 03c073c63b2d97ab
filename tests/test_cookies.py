"""Reading one cookie from the raw header: exactly the named cookie, never a lookalike."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from tessera_verify.cookies import cookie_value
from tessera_verify.errors import DuplicateCookie

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
        ("", None, None),
    ],
)
def test_only_the_named_cookie_is_read(header: str, session: str | None, route: str | None) -> None:
    request = make_mocked_request("GET", "/", headers={"Cookie": header} if header else {})
    assert cookie_value(request, SESSION) == session
    assert cookie_value(request, ROUTE) == route


@pytest.mark.parametrize(
    "headers",
    [
        {"Cookie": "__Host-tessera_session=a; __Host-tessera_session=b"},
        {"Cookie": "__Host-tessera_session=a; x=1;__Host-tessera_session=a"},
        {"Cookie": '__Host-tessera_session=a; __Host-tessera_session="quoted"'},
        {"Cookie": "__Host-tessera_session=; __Host-tessera_session=b"},
    ],
)
def test_a_cookie_sent_twice_is_refused_whichever_copy_is_valid(headers: dict[str, str]) -> None:
    request = make_mocked_request("GET", "/", headers=headers)
    with pytest.raises(DuplicateCookie, match="__Host-tessera_session"):
        cookie_value(request, SESSION)
    assert cookie_value(request, ROUTE) is None


def test_two_cookie_header_lines_are_one_list_of_pairs() -> None:
    headers = CIMultiDict([("Cookie", f"{SESSION}=a"), ("Cookie", f"{SESSION}=b")])
    request = make_mocked_request("GET", "/", headers=headers)
    with pytest.raises(DuplicateCookie):
        cookie_value(request, SESSION)
