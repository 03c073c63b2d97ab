"""Prometheus metrics every tessera service exports, on a registry of its own.

Names and labels are documented in README.md ("Metrics"); the Grafana dashboard
in deploy/ uses only these names (a test checks it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .dependency_metrics import DEPENDENCY_BUCKETS

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Requests by route template (never the raw path: bounded labels), authentication
    decisions, dependency latency, caches and live sessions."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.registry = registry
        self.auth_decisions = Counter(
            "tessera_auth_decisions_total",
            "Authentication decisions by credential method and outcome",
            ("method", "outcome"),
            registry=registry,
        )
        self.dependency_latency = Histogram(
            "tessera_dependency_duration_seconds",
            "Latency of Redis commands and PostgreSQL queries",
            ("dependency", "operation"),
            buckets=DEPENDENCY_BUCKETS,
            registry=registry,
        )
        self.sessions_live = Gauge(
            "tessera_sessions_live",
            "Live sessions by store (redis: all shared sessions; memory: this replica's own)",
            ("store",),
            registry=registry,
        )
        self._caches = _CacheCollector()
        self._decisions: dict[tuple[str, str], Any] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        registry.register(self._caches)
        self.requests = Counter(
            "tessera_http_requests_total",
            "HTTP requests by route, method and status",
            ("route", "method", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "tessera_http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def decided(self, method: str, outcome: str) -> None:
        """Count one authentication decision (label children cached: this is per request)."""
        child = self._decisions.get((method, outcome))
        if child is None:
            child = self._decisions[(method, outcome)] = self.auth_decisions.labels(method, outcome)
        child.inc()

    def watch_cache(self, name: str, counts: Callable[[], tuple[int, int]]) -> None:
        """Export a cache's (hits, misses) counters, read at scrape time (no hot-path cost)."""
        self._caches.caches[name] = counts

    def watch_revocations(self, copy: RevocationCopyStats) -> None:
        """Export the local revocation copy's freshness and where checks went, at scrape time."""
        self.registry.register(_RevocationCollector(copy))

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
                key = (_route_name(request), request.method, status)
                children = self._request_children.get(key)
                if children is None:
                    children = self._request_children[key] = (
                        self.requests.labels(key[0], key[1], str(status)),
                        self.latency.labels(key[0], key[1], str(status)),
                    )
                children[0].inc()
                children[1].observe(time.perf_counter() - started)

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


class RevocationCopyStats(Protocol):
    """What :class:`~tessera_verify.revocation_cache.RevocationCache` tells about itself."""

    local_checks: int
    fallback_checks: int
    resyncs: int

    @property
    def staleness(self) -> float | None: ...


class _RevocationCollector(Collector):
    def __init__(self, copy: RevocationCopyStats) -> None:
        self._copy = copy

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        age = self._copy.staleness
        yield GaugeMetricFamily(
            "tessera_revocation_copy_age_seconds",
            "Seconds since the local revocation copy was last proven complete (+Inf: not now)",
            value=math.inf if age is None else age,
        )
        checks = CounterMetricFamily(
            "tessera_revocation_checks",
            "Revocation checks by where they were answered (local copy or Redis)",
            labels=("source",),
        )
        checks.add_metric(("local",), self._copy.local_checks)
        checks.add_metric(("redis",), self._copy.fallback_checks)
        yield checks
        yield CounterMetricFamily(
            "tessera_revocation_reloads",
            "Reloads of the local revocation copy (a gap in the feed, a new generation)",
            value=self._copy.resyncs,
        )


class _CacheCollector(Collector):
    def __init__(self) -> None:
        self.caches: dict[str, Callable[[], tuple[int, int]]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tessera_cache_requests",
            "Cache look-ups by cache and result",
            labels=("cache", "result"),
        )
        for name, counts in sorted(self.caches.items()):
            hits, misses = counts()
            family.add_metric((name, "hit"), hits)
            family.add_metric((name, "miss"), misses)
        yield family
