"""The one middleware that turns errors into JSON responses.

Verification depends on Redis and HTTP only; a service that also talks to
PostgreSQL answers errors with :func:`answer_error` and its own, longer list of
dependency errors (``tessera_platform.service_errors``, ``tessera_platform.middleware``).

Errors are problem details (:func:`error_response`) everywhere but on the OAuth
endpoints, which answer in RFC 6749 §5.2's shape (:func:`oauth_error_response`):
the same middleware, given that renderer, wraps those handlers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import cast

import redis.exceptions
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import (
    PROBLEM_JSON,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TesseraError,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

#: How an error becomes a response: problem details, or OAuth's shape.
Renderer = Callable[[TesseraError], web.Response]

#: Exceptions that mean "a dependency is down", answered with 503 (fail closed).
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    # A failover in progress: a demoted primary refusing writes, a cluster slot
    # without a primary for a moment (Sentinel and Cluster).
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    OSError,
)

_HTTP_ERRORS: dict[int, type[TesseraError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _with_headers(response: web.Response, error: TesseraError) -> web.Response:
    challenge = error.www_authenticate()
    if challenge:
        response.headers["WWW-Authenticate"] = challenge
    if error.status in (401, 429, 503):
        response.headers["Cache-Control"] = "no-store"
    response.headers.update(error.extra_headers())
    return response


def error_response(error: TesseraError) -> web.Response:
    """The JSON response for ``error``, with ``WWW-Authenticate`` where it applies."""
    response = web.json_response(error.body(), status=error.status, content_type=PROBLEM_JSON)
    return _with_headers(response, error)


def oauth_error_response(error: TesseraError) -> web.Response:
    """RFC 6749 §5.2's error response for ``error`` (:meth:`TesseraError.oauth_body`),
    as ``application/json`` and never cached (§5.1), with the headers any error has:
    ``WWW-Authenticate`` (``Basic`` for ``invalid_client``), ``Retry-After``."""
    response = web.json_response(error.oauth_body(), status=error.status)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return _with_headers(response, error)


@functools.cache
def _other_http_error(status: int) -> type[TesseraError]:
    """A 4xx that aiohttp raised and tessera has no class for: its status, ``bad_request``."""
    return cast("type[TesseraError]", type(f"HTTPError{status}", (BadRequest,), {"status": status}))


def error_middleware_for(
    dependency_errors: tuple[type[BaseException], ...], render: Renderer = error_response
) -> Middleware:
    """The error middleware, answering 503 for any of ``dependency_errors``; every
    error is made a response by ``render`` (problem details unless told otherwise)."""

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn tessera errors, aiohttp HTTP errors and dependency failures into JSON."""
        try:
            return await handler(request)
        except Exception as exc:
            return answer_error(request, exc, dependency_errors, render)

    return error_middleware


def answer_error(
    request: web.Request,
    exc: Exception,
    dependency_errors: tuple[type[BaseException], ...],
    render: Renderer = error_response,
) -> web.Response:
    """The response for ``exc``, raised while handling ``request``; raises ``exc`` again
    when it is not answered here (a redirect, aiohttp's own 5xx).

    Called from an ``except`` block (the traceback of an unexpected error is logged).
    The error middleware's body, shared with the services' one middleware
    (:mod:`tessera_platform.middleware`)."""
    if isinstance(exc, TesseraError):
        return render(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        mapped = _HTTP_ERRORS.get(exc.status)
        if mapped is not None:
            response = render(mapped())
            if "Allow" in exc.headers:  # RFC 9110 §15.5.6: a 405 must say what is allowed
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        if 400 <= exc.status < 500:
            return render(_other_http_error(exc.status)(exc.reason))
        raise exc
    if isinstance(exc, dependency_errors):
        log.warning("dependency unavailable on %s %s: %r", request.method, request.path, exc)
        return render(ServiceUnavailable())
    log.exception("unhandled error on %s %s", request.method, request.path)
    return render(TesseraError())


#: For a service whose only dependencies are Redis and HTTP (verification alone).
error_middleware = error_middleware_for(DEPENDENCY_ERRORS)
