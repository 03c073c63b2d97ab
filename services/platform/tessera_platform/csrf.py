"""CSRF defence for cookie-authenticated, state-changing requests.

SameSite=Lax stops most cross-site POSTs in current browsers; older ones
ignore it, so we also refuse requests that the browser says are cross-site
(``Sec-Fetch-Site``) or whose ``Origin`` is not the one we serve. Origins are
compared whole (RFC 6454: scheme, host and port): ``http://tessera.example.com``
is a page anyone on the network path can write, not ours.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from aiohttp import web

from tessera_verify.errors import CSRFRejected

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def _origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of a serialised origin, or None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _served_scheme(request: web.Request) -> str:
    """The scheme the browser used: nginx terminates TLS and says so in X-Forwarded-Proto.

    Trusting the header without checking the peer is safe here: a cross-site page
    cannot add it to a form post (it is no CORS-safelisted header), and nginx
    overwrites whatever the client sent. The nearest hop's value counts.
    """
    forwarded = request.headers.get("X-Forwarded-Proto")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip().lower()
    return request.scheme


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
    claimed = _origin(origin)  # "null" (sandboxed or privacy-sensitive contexts) is None
    if claimed is None:
        raise CSRFRejected()
    # nginx passes the original Host header through.
    if claimed == _origin(f"{_served_scheme(request)}://{request.host}"):
        return
    if any(claimed == _origin(allowed) for allowed in allowed_origins):
        return
    raise CSRFRejected()
