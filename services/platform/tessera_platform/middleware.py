"""The one middleware every tessera service runs in front of its handlers.

It does, in this order around the handler: adopt or make the request ID
(:mod:`.observability`), turn errors into JSON responses (problem details, 503 for
a dependency that is down: :func:`tessera_verify.error_middleware.answer_error`),
let the service stamp the response (a replica says who answered), echo the
request ID, count the request and its latency (``tessera_http_requests_total``,
``tessera_http_request_duration_seconds``) and write the access line.

One coroutine instead of a chain of four: each aiohttp middleware layer costs
every request a call, a coroutine and an ``await``, and ``GET /healthz`` (the
floor under every request) paid for four of them (``make bench``, part 1:
tessera's baseline against aiohttp alone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tessera_verify.error_middleware import answer_error
from tessera_verify.http_metrics import ServiceMetrics

from .observability import REQUEST_ID_HEADER, access_log, log_access, request_id_of, request_id_var
from .service_errors import DEPENDENCY_ERRORS

__all__ = ["Stamp", "service_middleware"]

#: Called with every response the service answers itself, errors included, before it
#: is sent (a replica's ``X-Served-By``). Not for a redirect raised as an exception.
Stamp = Callable[[web.Request, web.StreamResponse], None]


def service_middleware(
    metrics: ServiceMetrics,
    *,
    dependency_errors: tuple[type[BaseException], ...] = DEPENDENCY_ERRORS,
    stamp: Stamp | None = None,
) -> Middleware:
    """The service's middleware: request ID, errors, ``stamp``, metrics, access log."""

    @web.middleware
    async def tessera_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_id_of(request)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                response = answer_error(request, exc, dependency_errors)
            if stamp is not None:
                stamp(request, response)
            status = response.status
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:  # a redirect, or aiohttp's own 5xx
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            try:
                metrics.observe_request(request, status, time.perf_counter() - started)
                if access_log.isEnabledFor(logging.INFO):
                    log_access(request, status, started)
            finally:
                request_id_var.reset(token)

    return tessera_middleware
