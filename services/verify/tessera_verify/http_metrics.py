"""Prometheus metrics every tessera service exports, on a registry of its own.

Names and labels are documented in README.md ("Metrics"); the Grafana dashboard
in deploy/ uses only these names (a test checks it).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .dependency_metrics import DEPENDENCY_BUCKETS

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Requests by route template (never the raw path: bounded labels), authentication
    decisions, dependency latency, caches and live sessions.

    Requests and decisions are counted without locks: from the event loop's thread
    only (every tessera service, and the aiohttp and ASGI integrations, count there).
    A scrape from another thread sees a consistent copy, and may miss an increment
    made during it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.registry = registry
        self._decisions = _LoopCounter(
            "tessera_auth_decisions",
            "Authentication decisions by credential method and outcome",
            ("method", "outcome"),
        )
        registry.register(self._decisions)
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
        registry.register(self._caches)
        self._requests = _RequestCollector(LATENCY_BUCKETS)
        registry.register(self._requests)

    def decided(self, method: str, outcome: str) -> None:
        """Count one authentication decision (per request: on the event loop's thread)."""
        self._decisions.inc((method, outcome))

    def watch_cache(self, name: str, counts: Callable[[], tuple[int, int]]) -> None:
        """Export a cache's (hits, misses) counters, read at scrape time (no hot-path cost)."""
        self._caches.caches[name] = counts

    def watch_revocations(self, copy: RevocationCopyStats) -> None:
        """Export the local revocation copy's freshness and where checks went, at scrape time."""
        self.registry.register(_RevocationCollector(copy))

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        """Count one answered request and its latency (the services' middleware calls it,
        :mod:`tessera_platform.middleware`). Called on the event loop's thread only."""
        self._requests.observe((_route_name(request), request.method, status), seconds)

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


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (``le``), as prometheus_client's own."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class _LoopCounter(Collector):
    """A counter by labels, counted in plain numbers on the event loop's thread and made
    a metric family when scraped: as cheap as the request counts (:class:`_RequestCollector`)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._counts: dict[tuple[str, ...], int] = {}

    def inc(self, values: tuple[str, ...]) -> None:
        self._counts[values] = self._counts.get(values, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, count in sorted(self._counts.copy().items()):
            family.add_metric(values, count)
        yield family


class _RequestSeries:
    """One route, method and status: requests, their total latency, and how many fell
    in each latency bucket (not cumulative; the last one past every bound)."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self, buckets: int) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (buckets + 1)


class _RequestCollector(Collector):
    """``tessera_http_requests_total`` and ``tessera_http_request_duration_seconds``,
    counted in plain numbers and made metric families when scraped.

    Every request passes here, so it is kept cheap (``make bench``, the baseline: a
    prometheus_client Counter and Histogram took a lock per increment, three per
    request, about 1 µs; this takes none, about 0.2 µs). That needs one thread: the
    event loop's, where requests are answered and ``/metrics`` is rendered.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._series: dict[tuple[str, str, int], _RequestSeries] = {}

    def observe(self, key: tuple[str, str, int], seconds: float) -> None:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _RequestSeries(len(self._bounds))
        series.count += 1
        series.total += seconds
        # A bucket counts the values up to and including its bound ("le").
        series.buckets[bisect.bisect_left(self._bounds, seconds)] += 1

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        labels = ("route", "method", "status")
        requests = CounterMetricFamily(
            "tessera_http_requests", "HTTP requests by route, method and status", labels=labels
        )
        latency = HistogramMetricFamily(
            "tessera_http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            labels=labels,
        )
        bounds = [*(_go_float(bound) for bound in self._bounds), "+Inf"]
        for (route, method, status), series in sorted(self._series.copy().items()):
            values = (route, method, str(status))
            requests.add_metric(values, series.count)
            cumulative = list(zip(bounds, itertools.accumulate(series.buckets), strict=True))
            latency.add_metric(values, cumulative, series.total)
        yield requests
        yield latency


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
