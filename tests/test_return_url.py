"""The portal's return-URL check (``rd``): no open redirect, attacked the way it is.

Examples name each known trick; Hypothesis then throws URL-shaped text at the
check and holds whatever it accepts to ``urllib.parse`` as the reference: resolved
against the portal's page, an accepted URL stays on an allowed origin, at every
level of percent-decoding, with nothing a browser would read differently
(backslashes, tabs, newlines are what make browsers and ``urllib`` disagree, and
none is ever accepted).
"""

from __future__ import annotations

import string
import unicodedata
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera_auth.portal.return_url import (
    DEFAULT_PORTS,
    MAX_LENGTH,
    Origin,
    ReturnUrlPolicy,
    origin_of,
    parse_origin,
)
from tessera_auth.settings import ConfigError, load_settings

ISSUER = ("https", "auth.tessera.test", 443)
APP = ("https", "app.tessera.test", 8443)
IPV6 = ("https", "::1", 9443)
ALLOWED = frozenset({ISSUER, APP, IPV6})
POLICY = ReturnUrlPolicy(ALLOWED)
DEVELOPMENT = ReturnUrlPolicy(ALLOWED | {("http", "127.0.0.1", 8080)}, allow_http=True)
#: The page a return URL is followed from (relative ones resolve against it).
PORTAL_PAGE = "https://auth.tessera.test/auth/portal/login"

REFUSED = [
    # other hosts, however spelt
    "https://evil.example/",
    "https://evil.example",
    "//evil.example",
    "//evil.example/path",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "https:evil.example",
    "https:/evil.example",
    "https:///evil.example",
    "https:\\\\evil.example",
    # user information: the host is what follows the @
    "https://auth.tessera.test@evil.example/",
    "https://auth.tessera.test:443@evil.example/",
    "https://user:pass@auth.tessera.test/",
    "https://@auth.tessera.test/",
    # look-alikes of the allowed host
    "https://auth.tessera.test.evil.example/",
    "https://auth.tessera.test./",
    "https://evilauth.tessera.test/",
    "https://auth%2Etessera.test/",
    "https://auth.tessera.test%2F@evil.example/",
    "https://auth.tessera.test%40evil.example/",
    "https://auth.tessera.test:8443/",  # the right host, another port: another origin
    "https://app.tessera.test/",  # APP is allowed on 8443 only
    "https://[::1]/",
    # encoded variants of // and /\ (once and twice)
    "/%2F%2Fevil.example",
    "/%2f%2fevil.example",
    "/%2Fevil.example",
    "/%5Cevil.example",
    "/%5cevil.example",
    "/%252F%252Fevil.example",
    "/%255Cevil.example",
    "/%25252F/evil.example",
    "/app/%5C..%5C",
    # schemes that run or carry content
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "javascript://auth.tessera.test/%0Aalert(1)",
    "data:text/html,x",
    "vbscript:msgbox(1)",
    "ftp://auth.tessera.test/",
    # plain http outside development
    "http://auth.tessera.test/",
    # whitespace and controls, raw and encoded (browsers drop tabs and newlines anywhere)
    "/app\tx",
    "/app\nx",
    "/\t/evil.example",
    "/\n/evil.example",
    " /app",
    "/app ",
    "/app x",
    "/%09/evil.example",
    "/%0A/evil.example",
    "/app%0d%0aSet-Cookie:x=1",
    "/app%00",
    "/app%7F",
    "/app%C2%85",  # NEL, a C1 control
    "/app%E2%80%A8",  # LINE SEPARATOR
    "/app%C2%A0",  # NO-BREAK SPACE
    "/app%E2%80%8B",  # ZERO WIDTH SPACE (a format character)
    "/caf\u00e9",  # unencoded non-ASCII: browsers send it encoded
    # not a path at all
    "",
    "app",
    "?next=/",
    "#frag",
    ".",
    "/" + "a" * MAX_LENGTH,
]

ACCEPTED = [
    "/",
    "/app",
    "/app/x?y=1",
    "/app/reports/q.html?a=b&c=%2F#frag",
    "/app/a%2Fb",  # an encoded slash inside a path is a path
    "/wiki/Main%20Page",  # an encoded space: see the module's docstring
    "/caf%C3%A9",
    "/search?q=a+b&next=%2Fhome",
    "/app?u=https://evil.example/",  # a URL in the query is data, not where we go
    "/a:b",
    "https://auth.tessera.test",
    "https://auth.tessera.test/",
    "https://AUTH.Tessera.TEST/app",
    "HTTPS://auth.tessera.test/app",
    "https://auth.tessera.test:443/app?x=1#y",
    "https://app.tessera.test:8443/dashboard",
    "https://[::1]:9443/x",
    "https://auth.tessera.test?x=1",
    "/" + "a" * (MAX_LENGTH - 1),
]


@pytest.mark.parametrize("candidate", REFUSED)
def test_refused(candidate: str) -> None:
    assert POLICY.validate(candidate) is None


@pytest.mark.parametrize("candidate", ACCEPTED)
def test_accepted_unchanged(candidate: str) -> None:
    assert POLICY.validate(candidate) == candidate


def test_none_is_no_return_url() -> None:
    assert POLICY.validate(None) is None


def test_http_is_accepted_only_in_development_and_only_for_an_http_origin() -> None:
    assert DEVELOPMENT.validate("http://127.0.0.1:8080/app") == "http://127.0.0.1:8080/app"
    assert DEVELOPMENT.validate("http://auth.tessera.test/") is None  # its origin is https
    production = ReturnUrlPolicy(DEVELOPMENT.origins, allow_http=False)
    assert production.validate("http://127.0.0.1:8080/app") is None
    assert production.validate("https://auth.tessera.test/app") is not None


# --- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://app.example", ("https", "app.example", 443)),
        ("https://App.Example/", ("https", "app.example", 443)),
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080)),
        ("https://[::1]:9443", ("https", "::1", 9443)),
        (" https://app.example:443 ", ("https", "app.example", 443)),
    ],
)
def test_parse_origin(text: str, origin: Origin) -> None:
    assert parse_origin(text) == origin


@pytest.mark.parametrize(
    "text",
    [
        "app.example",
        "https://",
        "https://app.example/path",
        "https://app.example?x",
        "https://user@app.example",
        "https://app.example:0",
        "https://app.example:99999",
        "ftp://app.example",
        "https://app_example.com",
        "https://app.example.",
    ],
)
def test_parse_origin_refuses_what_is_no_origin(text: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        parse_origin(text)


def test_origin_of_the_issuer_ignores_its_path() -> None:
    assert origin_of("https://Auth.Example:8443/realm") == ("https", "auth.example", 8443)
    assert origin_of("http://127.0.0.1:8080") == ("http", "127.0.0.1", 8080)
    with pytest.raises(ValueError, match="no http"):
        origin_of("auth.example")


ENV = {"TESSERA_ENV": "development", "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}


def test_allowed_origins_are_read_from_the_environment() -> None:
    settings = load_settings(
        {**ENV, "TESSERA_PORTAL_ALLOWED_ORIGINS": "https://app.example, http://127.0.0.1:3000,"}
    )
    assert settings.portal_allowed_origins == (
        ("https", "app.example", 443),
        ("http", "127.0.0.1", 3000),
    )
    assert load_settings(ENV).portal_allowed_origins == ()


def test_allowed_origins_must_be_origins_and_https_outside_development() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**ENV, "TESSERA_PORTAL_ALLOWED_ORIGINS": "https://app.example/path"})
    assert any("TESSERA_PORTAL_ALLOWED_ORIGINS" in p for p in caught.value.problems)
    production = {
        "DATABASE_URL": "postgresql://x/y",
        "REDIS_URL": "redis://x",
        "TESSERA_ISSUER": "https://auth.example.com",
        "TESSERA_SESSION_HASH_KEY": "8c1b2f9e6d0a4b7c9e1f3a5b7d9e0f2a4c6e8a0b",
        "TESSERA_KEY_ENCRYPTION_KEY": "f0e1d2c3b4a5968778695a4b3c2d1e0f11223344",
        "TESSERA_PORTAL_ALLOWED_ORIGINS": "http://app.example",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(production)
    assert any("must be https outside development" in p for p in caught.value.problems)


# --- properties, with urllib.parse as the reference ---------------------------------------


def _origin(url: str) -> Origin | None:
    """``url``'s origin as urllib.parse reads it."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]


def _decodings(text: str) -> list[str]:
    forms = [text]
    while (decoded := unquote(forms[-1])) != forms[-1]:
        forms.append(decoded)
    return forms


#: What URL tricks are made of, weighted towards the characters that matter.
TRICKY = [
    *"/\\@:.%?#&=+;,!$'()*[]~-_ \t\n\r\x00\x0b\x0c\x7f",
    "%2F",
    "%2f",
    "%5C",
    "%5c",
    "%25",
    "%40",
    "%09",
    "%0A",
    "%0d",
    "%20",
    "%2E",
    "%C2%A0",
    "%E2%80%A8",
    "\u3000",
    "\u2028",
    "\u00a0",
    "\ufeff",
    "\uff0f",
]
PREFIXES = [
    "",
    "/",
    "//",
    "/\\",
    "\\",
    "https://",
    "http://",
    "https:",
    "https:/",
    "https://auth.tessera.test",
    "https://auth.tessera.test:443",
    "https://auth.tessera.test/",
    "https://app.tessera.test:8443",
    "https://[::1]:9443",
    "HTTPS://AUTH.TESSERA.TEST",
    "http://127.0.0.1:8080",
    "javascript:",
    "data:",
    "https://evil.example",
    "https://auth.tessera.test@",
]
HOSTS = ["auth.tessera.test", "app.tessera.test", "evil.example", "127.0.0.1", "[::1]"]

pieces = st.one_of(
    st.sampled_from(TRICKY),
    st.sampled_from(HOSTS),
    st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=6),
    st.characters(),
)
candidates = st.builds(
    lambda prefix, rest: prefix + "".join(rest),
    st.sampled_from(PREFIXES),
    st.lists(pieces, max_size=12),
)


def _assert_safe(policy: ReturnUrlPolicy, candidate: str, accepted: str) -> None:
    assert accepted == candidate
    assert len(accepted) <= MAX_LENGTH
    for form in _decodings(accepted):
        # What browsers and urllib read differently never passes, at any decoding.
        assert "\\" not in form
        assert not any(unicodedata.category(c) == "Cc" for c in form)
        assert not any(c.isspace() and c != " " for c in form)
        resolved = urljoin(PORTAL_PAGE, form)
        parts = urlsplit(resolved)
        assert parts.username is None and parts.password is None
        origin = _origin(resolved)
        assert origin in policy.origins, (accepted, form)
        assert origin is not None and (origin[0] == "https" or policy.allow_http)
        if form.startswith("/"):
            assert urlsplit(form).netloc == "", form  # never a network-path reference
            assert origin == ISSUER


@settings(max_examples=3000, deadline=None)
@given(candidate=candidates)
def test_whatever_is_accepted_stays_on_an_allowed_origin(candidate: str) -> None:
    for policy in (POLICY, DEVELOPMENT):
        accepted = policy.validate(candidate)
        if accepted is not None:
            _assert_safe(policy, candidate, accepted)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=40))
def test_any_text_is_refused_or_safe(text: str) -> None:
    accepted = POLICY.validate(text)
    if accepted is not None:
        _assert_safe(POLICY, text, accepted)


#: Path characters a browser leaves as they are (RFC 3986 pchar, minus '%' and '\').
PCHAR = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
segments = st.lists(st.text(alphabet=PCHAR, max_size=8), min_size=1, max_size=5)
queries = st.text(alphabet=PCHAR + "/?", max_size=20)


@settings(max_examples=300, deadline=None)
@given(path=segments, query=queries, fragment=st.text(alphabet=PCHAR, max_size=8))
def test_paths_and_allowed_urls_a_browser_sends_are_accepted(
    path: list[str], query: str, fragment: str
) -> None:
    tail = "/".join(path) + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    if tail.startswith("/"):
        return  # that would be "//": refused by design, tested above
    assert POLICY.validate("/" + tail) == "/" + tail
    for base in ("https://auth.tessera.test", "https://app.tessera.test:8443"):
        assert POLICY.validate(f"{base}/{tail}") == f"{base}/{tail}"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30),
    path=st.text(alphabet=PCHAR + "/", max_size=20),
)
def test_a_non_ascii_path_is_accepted_percent_encoded(text: str, path: str) -> None:
    """What a browser sends for a path typed with any characters: accepted if nothing
    in it, decoded, is whitespace (but the space), a control or a backslash."""
    encoded = "/" + quote(text.lstrip("/"), safe="") + "/" + path
    accepted = POLICY.validate(encoded)
    harmful = any(
        c == "\\" or (c.isspace() and c != " ") or unicodedata.category(c) in ("Cc", "Cf")
        for form in _decodings(encoded)
        for c in form
    )
    reaches_network_path = any(form.startswith("//") for form in _decodings(encoded))
    assert (accepted is None) == (harmful or reaches_network_path or len(encoded) > MAX_LENGTH), (
        encoded
    )


@settings(max_examples=300, deadline=None)
@given(
    host=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,3}", fullmatch=True),
    port=st.sampled_from(["", ":443", ":8443", ":9443"]),
    userinfo=st.sampled_from(["", "auth.tessera.test@", "user:pw@", "@"]),
    path=st.text(alphabet=PCHAR + "/", max_size=20),
)
def test_other_hosts_and_any_userinfo_are_refused(
    host: str, port: str, userinfo: str, path: str
) -> None:
    url = f"https://{userinfo}{host}{port}/{path}"
    allowed = _origin(url) in ALLOWED and not userinfo
    assert (POLICY.validate(url) is not None) == allowed, url


@settings(max_examples=300, deadline=None)
@given(
    tail=st.text(alphabet=PCHAR + "/", max_size=20),
    trick=st.sampled_from(["/", "\\", "\t", "\n", "\r", "\x00", " "]),
    encodings=st.integers(min_value=0, max_value=3),
)
def test_a_slash_backslash_or_control_encoded_any_number_of_times_is_refused(
    tail: str, trick: str, encodings: int
) -> None:
    """``/<trick>…`` with the trick percent-encoded 0-3 times: a browser (or an app
    that decodes before redirecting) would read ``//…`` or drop the character."""
    encoded = trick
    for _ in range(encodings):
        encoded = quote(encoded, safe="")
    candidate = "/" + encoded + tail
    if trick == " " and encodings > 0:
        # An encoded space inside a path is kept by everyone: accepted unless the
        # rest makes a network path after it.
        return
    assert POLICY.validate(candidate) is None, candidate
