"""Reading one cookie without parsing them all.

aiohttp's ``request.cookies`` parses every pair of the ``Cookie`` header into
Morsels (about 6 µs a request here); tessera reads at most two cookies whose
values are plain tokens, so a precompiled search of the raw header does.
"""

from __future__ import annotations

import functools
import re

from aiohttp import hdrs, web

# RFC 6265 cookie-octets without quotes: what every tessera cookie value uses.
_VALUE = r"([!#-+\--:<-\[\]-~]*)"


@functools.cache
def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(r"(?:^|;)\s*" + re.escape(name) + r"=" + _VALUE + r"\s*(?:;|$)")


def cookie_value(request: web.Request, name: str) -> str | None:
    """The value of cookie ``name`` in the request, or None (the first one, if repeated)."""
    header = request.headers.get(hdrs.COOKIE)
    if not header or name not in header:
        return None
    match = _pattern(name).search(header)
    return None if match is None else match.group(1)
