"""The request counter and latency histogram every request passes through
(``tessera_verify.http_metrics``), counted without prometheus_client's locks, against
prometheus_client's own Counter and Histogram as the reference."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tessera_verify.http_metrics import LATENCY_BUCKETS, ServiceMetrics

ROUTES = ("/healthz", "/api/me", "/api/comments/{comment_id}")
REQUEST = st.tuples(
    st.sampled_from(ROUTES),
    st.sampled_from(("GET", "POST")),
    st.sampled_from((200, 401, 503)),
    # Bounds themselves (a bucket counts values up to and including its bound),
    # values around them, and far past the last one.
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),
        st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    ),
)


async def _never_called(request: web.Request) -> web.Response:
    raise AssertionError("not called")


def _samples(
    registry: CollectorRegistry, names: set[str]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(REQUEST, max_size=40))
async def test_the_request_metrics_match_prometheus_clients_counter_and_histogram(
    requests: list[tuple[str, str, int, float]],
) -> None:
    metrics = ServiceMetrics()
    reference = CollectorRegistry()
    labels = ("route", "method", "status")
    counter = Counter("tessera_http_requests", "x", labels, registry=reference)
    histogram = Histogram(
        "tessera_http_request_duration_seconds",
        "x",
        labels,
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    apps = {}
    for route, method, status, seconds in requests:
        key = (route, method)
        if key not in apps:
            app = web.Application()
            app.router.add_route(method, route, _never_called)
            apps[key] = app
        app = apps[key]
        request = make_mocked_request(method, route.replace("{comment_id}", "7"), app=app)
        request._match_info = await app.router.resolve(request)
        metrics.observe_request(request, status, seconds)
        counter.labels(route, method, str(status)).inc()
        histogram.labels(route, method, str(status)).observe(seconds)
    names = {
        "tessera_http_requests_total",
        "tessera_http_request_duration_seconds_bucket",
        "tessera_http_request_duration_seconds_count",
        "tessera_http_request_duration_seconds_sum",
    }
    ours = _samples(metrics.registry, names)
    theirs = _samples(reference, names)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(ours[key] - value) <= 1e-9 * max(1.0, abs(value)), key


async def test_a_request_no_route_matched_is_counted_as_unmatched() -> None:
    metrics = ServiceMetrics()
    app = web.Application()
    request = make_mocked_request("GET", "/nowhere", app=app)
    request._match_info = await app.router.resolve(request)
    metrics.observe_request(request, 404, 0.001)
    samples = _samples(metrics.registry, {"tessera_http_requests_total"})
    assert samples == {
        (
            "tessera_http_requests_total",
            frozenset({("route", "unmatched"), ("method", "GET"), ("status", "404")}),
        ): 1.0
    }


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("jwt", "shared_session", "local_session", "forward")),
            st.sampled_from(("ok", "expired", "revoked", "unknown", "invalid")),
        ),
        max_size=40,
    )
)
def test_authentication_decisions_match_prometheus_clients_counter(
    decisions: list[tuple[str, str]],
) -> None:
    metrics = ServiceMetrics()
    reference = CollectorRegistry()
    counter = Counter("tessera_auth_decisions", "x", ("method", "outcome"), registry=reference)
    for method, outcome in decisions:
        metrics.decided(method, outcome)
        counter.labels(method, outcome).inc()
    names = {"tessera_auth_decisions_total"}
    assert _samples(metrics.registry, names) == _samples(reference, names)
