"""Prometheus request metrics for any aiohttp service, on a registry of its own."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HttpMetrics:
    """Request counts and latency by route template (never the raw path: bounded labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "tessera_http_requests_total",
            "HTTP requests by route, method and status",
            ("route", "method", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "tessera_http_request_duration_seconds",
            "HTTP request latency by route and method",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def middleware(self) -> web.typedefs.Middleware:  # type: ignore[name-defined]
        @web.middleware
        async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                route = _route_name(request)
                self.requests.labels(route, request.method, str(status)).inc()
                self.latency.labels(route, request.method).observe(time.perf_counter() - started)

        return metrics_middleware

    async def handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response


def _route_name(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is None:
        return "unmatched"
    return resource.canonical
