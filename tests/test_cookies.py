"""Reading one cookie from the raw header: exactly the named cookie, never a lookalike."""

from __future__ import annotations

import http.cookies
import string

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
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


# --- differentially against the standard library's parser (http.cookies) ---------------------

_NAME_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_VALUE_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~:"
# Names http.cookies reads as attributes of the previous cookie, not as cookies.
_ATTRIBUTES = {name.lower() for name in http.cookies.Morsel._reserved} | {"$"}  # type: ignore[attr-defined]
_names = st.text(_NAME_CHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in _ATTRIBUTES and not n.startswith("$")
)
_pairs = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([SESSION, ROUTE]), _names),
        st.text(_VALUE_CHARS, max_size=20),
    ),
    max_size=6,
)


def _read(header: str, name: str) -> str | None:
    return cookie_value(make_mocked_request("GET", "/", headers={"Cookie": header}), name)


@settings(max_examples=400, deadline=None)
@given(
    pairs=_pairs,
    separator=st.sampled_from(["; ", ";", " ;  "]),
    name=st.sampled_from([SESSION, ROUTE]),
)
def test_well_formed_headers_read_as_the_standard_library_reads_them(
    pairs: list[tuple[str, str]], separator: str, name: str
) -> None:
    header = separator.join(f"{key}={value}" for key, value in pairs)
    reference = http.cookies.SimpleCookie()
    reference.load(header)
    sent = [key for key, _ in pairs].count(name)
    if sent > 1:
        with pytest.raises(DuplicateCookie):  # stricter on purpose: the stdlib keeps the last
            _read(header, name)
    elif sent == 1:
        assert _read(header, name) == reference[name].value
    else:
        assert _read(header, name) is None
        assert name not in reference


@settings(max_examples=400, deadline=None)
@given(header=st.text(max_size=80), name=st.sampled_from([SESSION, ROUTE]))
def test_any_header_gives_a_plain_token_that_was_sent_none_or_400(header: str, name: str) -> None:
    header = header.replace("\r", "").replace("\n", "")  # not a header value otherwise
    try:
        value = _read(header, name)
    except DuplicateCookie:
        return
    if value is not None:
        assert value.isprintable() and " " not in value and '"' not in value
        assert f"{name}={value}" in header
