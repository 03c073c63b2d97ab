"""How the portal answers: HTML from its templates, errors as HTML pages, the same
security headers on everything.

The content security policy allows no script at all and styles only from the
portal's own stylesheet (no inline ``style``), forms that post only to this
origin, and no framing (clickjacking). HSTS is nginx's to send.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from tessera_platform.jsonbody import FORM, read_body
from tessera_platform.service_errors import DEPENDENCY_ERRORS
from tessera_verify.error_middleware import error_middleware_for
from tessera_verify.errors import CSRFRejected, TesseraError, UnsupportedMediaType

__all__ = [
    "NO_STORE",
    "SECURITY_HEADERS",
    "html_error_response",
    "page",
    "read_form",
    "redirect",
    "render",
    "stylesheet",
]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # same-origin, not no-referrer: under no-referrer a browser posts its forms with
    # "Origin: null" (Fetch), which the same-origin check must refuse. Other sites
    # still get no referrer at all (a return URL in it would tell them where one was).
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
#: Every page: they carry personal data or a CSRF token bound to a cookie.
NO_STORE: Mapping[str, str] = {"Cache-Control": "no-store"}

#: What an error page says, by status: fixed text, never the request's own words.
_CSRF_MESSAGE = (
    "This form has expired or was not sent from this site, so nothing was done. "
    "Go back, reload the page and try again."
)


@functools.cache
def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("tessera_auth.portal", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["iso_time"] = _iso_time
    environment.filters["shown_time"] = _shown_time
    return environment


def _iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _shown_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> web.Response:
    """The page ``template`` with ``context``, never cached."""
    text = _templates().get_template(template).render(**context)
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**NO_STORE, **(headers or {})},
    )


def redirect(location: str, *, status: int = 303) -> web.Response:
    """``303 See Other`` (a form's answer: the browser GETs ``location``), or ``status``."""
    return web.Response(status=status, headers={"Location": location, **NO_STORE})


def html_error_response(error: TesseraError) -> web.Response:
    """An error as a page: its status, a fixed explanation, and the headers it has
    (``Retry-After``)."""
    message = _CSRF_MESSAGE if isinstance(error, CSRFRejected) else error.message
    return render(
        "error.html",
        status=error.status,
        headers=error.extra_headers(),
        title=HTTPStatus(error.status).phrase,
        message=message,
    )


_html_errors = error_middleware_for(DEPENDENCY_ERRORS, render=html_error_response)


def page(handler: Handler) -> Handler:
    """A portal handler: whatever it raises is an HTML error page (the app's error
    middleware answers JSON), and every answer gets :data:`SECURITY_HEADERS`."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = await _html_errors(request, handler)
        response.headers.update(SECURITY_HEADERS)
        return response

    return answer


async def read_form(request: web.Request) -> dict[str, Any]:
    """The posted form (``application/x-www-form-urlencoded``, what an HTML form sends
    without JavaScript): 415 for anything else, 400 for a field sent twice. Its every
    field (a form's unknown fields are ignored, RFC 6749 §3.2's way: ``read_body``)."""
    if request.content_type != FORM:
        raise UnsupportedMediaType(f"expected a form ({FORM})")
    return await read_body(request, fields=(), allow_form=True)


@functools.cache
def _stylesheet() -> bytes:
    return resources.files("tessera_auth.portal").joinpath("static/portal.css").read_bytes()


def stylesheet() -> web.Response:
    """The portal's one stylesheet (the policy allows no other style)."""
    return web.Response(
        body=_stylesheet(),
        content_type="text/css",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )
