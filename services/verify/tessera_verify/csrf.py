"""CSRF defence for cookie-authenticated, state-changing requests.

SameSite=Lax stops most cross-site POSTs in current browsers; older ones
ignore it, so we also refuse requests that the browser says are cross-site
(``Sec-Fetch-Site``) or whose ``Origin`` is not the one we serve.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from aiohttp import web

from .errors import CSRFRejected

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_same_origin(request: web.Request, allowed_origins: Collection[str] = ()) -> None:
    """Raise :class:`CSRFRejected` unless the request plausibly comes from our own pages."""
    if request.method in SAFE_METHODS:
        return
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise CSRFRejected()
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser form post from another site (browsers send Origin on POST)
    if origin == "null":
        raise CSRFRejected()
    if origin in allowed_origins:
        return
    host = request.host  # nginx passes the original Host header through
    if urlsplit(origin).netloc != host:
        raise CSRFRejected()
