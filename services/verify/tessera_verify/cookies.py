"""Reading one cookie without parsing them all: the one cookie parser of tessera.

aiohttp's ``request.cookies`` parses every pair of the ``Cookie`` header into
Morsels (about 6 µs a request here) and keeps the *last* of repeated names;
tessera reads at most two cookies whose values are plain tokens, so a
precompiled search of the raw header does. Every read of a credential cookie
goes through :func:`cookie_value`: a cookie sent twice (one set for another
path, or planted by a sibling subdomain) is refused rather than guessed at, so
authentication, logout and login's fixation defence always agree on which
session is meant.
"""

from __future__ import annotations

import functools
import re

from aiohttp import hdrs

from .errors import DuplicateCookie
from .request_view import RequestView

# RFC 6265 cookie-octets without quotes: what every tessera cookie value uses.
_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]*")


@functools.cache
def _pattern(name: str) -> re.Pattern[str]:
    # Every pair named ``name`` whatever its value, so a malformed second copy
    # still counts as a second copy.
    return re.compile(r"(?:^|;)[ \t]*" + re.escape(name) + r"=([^;]*)")


def cookie_value(request: RequestView, name: str) -> str | None:
    """The value of cookie ``name`` in the request, or None.

    Raises :class:`DuplicateCookie` (400) when the cookie is present more than once.
    A value that is not a plain cookie token (quoted, with spaces) reads as None.
    """
    # Several Cookie lines (HTTP/2 splits them) are one list of pairs.
    header = "; ".join(request.headers.getall(hdrs.COOKIE, ()))
    if name not in header:
        return None
    values = _pattern(name).findall(header)
    if not values:
        return None
    if len(values) > 1:
        raise DuplicateCookie(f"the cookie {name} was sent more than once")
    value: str = values[0].rstrip(" \t")
    return value if _VALUE.fullmatch(value) else None
