"""Liveness, readiness and Prometheus metrics of the auth service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tessera_auth.app import create_app
from tessera_auth.settings import Settings
from tessera_verify.clock import ManualClock

from .conftest import register_and_login

Client = TestClient[Any, Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(client: Client) -> Samples:
    """Every sample of /metrics, keyed by name and label set."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _routes(samples: Samples) -> set[str]:
    return {
        dict(labels)["route"] for name, labels in samples if name == "tessera_http_requests_total"
    }


async def test_healthz_is_200_ok(auth_client: Client) -> None:
    response = await auth_client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "version": version("tessera-auth")}


async def test_readyz_is_200_with_redis_postgresql_and_keys_ok(auth_client: Client) -> None:
    response = await auth_client.get("/readyz")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.json() == {
        "status": "ready",
        "checks": {"redis": "ok", "postgresql": "ok", "keys": "ok"},
    }


async def test_metrics_is_prometheus_text_with_the_tessera_families(auth_client: Client) -> None:
    response = await auth_client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(await response.text())}
    assert {
        "tessera_http_requests",
        "tessera_http_request_duration_seconds",
        "tessera_logins",
        "tessera_tokens_issued",
        "tessera_refreshes",
        "tessera_revocations",
    } <= names


async def test_http_requests_are_counted_by_route_method_and_status(auth_client: Client) -> None:
    for _ in range(3):
        assert (await auth_client.get("/healthz")).status == 200
    assert (await auth_client.get("/auth/me")).status == 401
    samples = await _scrape(auth_client)
    requests = "tessera_http_requests_total"
    assert _value(samples, requests, route="/healthz", method="GET", status="200") == 3
    assert _value(samples, requests, route="/auth/me", method="GET", status="401") == 1
    latency = "tessera_http_request_duration_seconds_count"
    assert _value(samples, latency, route="/healthz", method="GET", status="200") == 3


async def test_the_route_label_is_the_route_template_never_the_raw_path(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings, clock: ManualClock
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"]})

    app = create_app(settings, clock=clock)
    app.router.add_get("/hello/{name}", hello)
    client = await aiohttp_client(app)
    for name in ("alice", "bob", "carol"):
        assert (await client.get(f"/hello/{name}?x=1")).status == 200
    for path in ("/nope/1", "/nope/2", "/wp-admin.php"):
        assert (await client.get(path)).status == 404
    assert (await client.get("/auth/login")).status == 405

    samples = await _scrape(client)
    requests = "tessera_http_requests_total"
    assert _value(samples, requests, route="/hello/{name}", method="GET", status="200") == 3
    # Unknown paths share one label: a scanner cannot blow up the series count.
    assert _value(samples, requests, route="unmatched", method="GET", status="404") == 3
    assert _value(samples, requests, route="unmatched", method="GET", status="405") == 1
    routes = _routes(samples)
    assert not {"/hello/alice", "/hello/bob", "/nope/1", "/wp-admin.php"} & routes
    assert not any("?" in route for route in routes)


async def test_logins_are_counted_by_outcome(auth_client: Client) -> None:
    login = await register_and_login(auth_client, username="alice")
    assert (
        await auth_client.post(
            "/auth/login", json={"username": "alice", "password": login["password"]}
        )
    ).status == 200
    for username in ("alice", "mallory"):
        response = await auth_client.post(
            "/auth/login", json={"username": username, "password": "wrong password"}
        )
        assert response.status == 401
    samples = await _scrape(auth_client)
    assert _value(samples, "tessera_logins_total", outcome="success") == 2
    assert _value(samples, "tessera_logins_total", outcome="invalid_credentials") == 2
    assert _value(samples, "tessera_logins_total", outcome="error") == 0
    login_route = {"route": "/auth/login", "method": "POST"}
    assert _value(samples, "tessera_http_requests_total", **login_route, status="200") == 2
    assert _value(samples, "tessera_http_requests_total", **login_route, status="401") == 2


async def test_issued_credentials_are_counted_by_kind(auth_client: Client) -> None:
    await register_and_login(auth_client, credential="session")
    both = await register_and_login(auth_client, credential="both")
    response = await auth_client.post(
        "/auth/token",
        json={"grant_type": "refresh_token", "refresh_token": both["refresh_token"]},
    )
    assert response.status == 200
    samples = await _scrape(auth_client)
    issued = "tessera_tokens_issued_total"
    assert _value(samples, issued, kind="session") == 2
    assert _value(samples, issued, kind="access_token") == 2  # login + refresh
    assert _value(samples, issued, kind="refresh_token") == 2
    assert _value(samples, "tessera_refreshes_total", outcome="success") == 1


async def test_each_app_counts_on_its_own_registry(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings, clock: ManualClock
) -> None:
    first = await aiohttp_client(create_app(settings, clock=clock))
    second = await aiohttp_client(create_app(settings, clock=clock))
    assert (await first.get("/healthz")).status == 200
    requests = "tessera_http_requests_total"
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    assert _value(await _scrape(first), requests, **healthz) == 1
    assert _value(await _scrape(second), requests, **healthz) == 0
