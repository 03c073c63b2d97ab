"""The audit trail in PostgreSQL, JSON logs with request IDs, and every service's metrics."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tessera_auth import app_state
from tessera_auth.cli_users import audit_list
from tessera_auth.settings import Settings
from tessera_platform.observability import JsonFormatter, request_id_var
from tessera_verify.clock import ManualClock

from .conftest import ResourceFactory, register_and_login

Client = TestClient[Any, Any]


async def _events(client: Client, **filters: Any) -> list[dict[str, Any]]:
    audit = client.app[app_state.AUDIT]
    await audit.flush()
    events: list[dict[str, Any]] = await audit.query(**filters)
    return events


async def test_logins_are_audited_with_outcome_ip_and_request_id(auth: Client) -> None:
    body = await register_and_login(auth, credential="session")
    await auth.post(
        "/auth/login",
        json={"username": body["user"]["username"], "password": "wrong password!"},
        headers={"X-Request-ID": "req-failed-login"},
    )
    events = await _events(auth, kind="login")
    assert [e["outcome"] for e in events] == ["failure", "ok"]
    failure, success = events
    assert failure["request_id"] == "req-failed-login"
    assert failure["username"] == body["user"]["username"]
    assert failure["ip"] == "127.0.0.1"
    assert success["user_id"] == body["user"]["id"]
    assert success["details"] == {"credential": "session"}


async def test_password_checks_are_audited_apart_from_logins(auth: Client) -> None:
    body = await register_and_login(auth, credential="none")  # /auth/password-check
    checked = await _events(auth, kind="password.check")
    assert [(e["outcome"], e["user_id"]) for e in checked] == [("ok", body["user"]["id"])]
    assert await _events(auth, kind="login") == []


async def test_logout_revocations_and_refresh_reuse_are_audited(
    auth: Client, clock: ManualClock
) -> None:
    login = await register_and_login(auth, credential="token")
    grant = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    await auth.post("/auth/token", json=grant)
    clock.advance(11)
    assert (await auth.post("/auth/token", json=grant)).status == 400
    await auth.post("/auth/logout-all", headers={"Authorization": "Bearer x.y.z"})
    kinds = [e["kind"] for e in await _events(auth)]
    assert "refresh.reuse" in kinds
    assert "revocation.refresh_family" in kinds
    reuse = (await _events(auth, kind="refresh.reuse"))[0]
    assert reuse["outcome"] == "failure"
    assert reuse["user_id"] == login["user"]["id"]


async def test_logout_everywhere_is_one_audited_user_revocation(auth: Client) -> None:
    login = await register_and_login(auth, credential="both")
    await auth.post(
        "/auth/logout-all", headers={"Authorization": f"Bearer {login['access_token']}"}
    )
    [event] = await _events(auth, kind="revocation.user")
    assert event["user_id"] == login["user"]["id"]
    assert event["details"]["reason"] == "logout everywhere"
    assert event["details"]["sessions"] == 1


async def test_audit_command_lists_a_users_events_as_json_lines(
    auth: Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await register_and_login(auth, credential="session")
    await register_and_login(auth, credential="session")
    await auth.app[app_state.AUDIT].flush()
    await audit_list(
        settings, argparse.Namespace(user=first["user"]["username"], kind="login", limit=10)
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1
    assert lines[0]["username"] == first["user"]["username"]


async def test_unknown_audit_kinds_are_refused(auth: Client) -> None:
    with pytest.raises(ValueError, match="unknown audit event kind"):
        auth.app[app_state.AUDIT].record("made.up")


async def test_request_id_from_nginx_is_echoed_and_a_missing_one_is_made(auth: Client) -> None:
    echoed = await auth.get("/healthz", headers={"X-Request-ID": "abc123"})
    assert echoed.headers["X-Request-ID"] == "abc123"
    made = await auth.get("/healthz")
    assert len(made.headers["X-Request-ID"]) == 32
    hostile = await auth.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["X-Request-ID"] != "bad id\twith spaces"


def test_json_log_lines_carry_the_request_id() -> None:
    formatter = JsonFormatter("auth")
    token = request_id_var.set("req-42")
    try:
        record = logging.LogRecord(
            "tessera.test", logging.INFO, __file__, 1, "hello %s", ("x",), None
        )
        record.fields = {"status": 200}
        line = json.loads(formatter.format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "hello x"
    assert line["request_id"] == "req-42"
    assert line["service"] == "auth"
    assert line["status"] == 200
    assert line["level"] == "info"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_replica_metrics_show_auth_decisions_caches_and_dependency_latency(
    auth: Client, make_replica: ResourceFactory
) -> None:
    login = await register_and_login(auth, credential="token")
    replica = await make_replica()
    bearer = {"Authorization": f"Bearer {login['access_token']}"}
    for _ in range(3):
        assert (await replica.get("/api/me", headers=bearer)).status == 200
    assert (await replica.get("/api/me", headers={"Authorization": "Bearer a.b.c"})).status == 401
    await replica.get("/api/comments", headers=bearer)
    samples = _samples(await (await replica.get("/metrics")).text())
    decisions = "tessera_auth_decisions_total"
    assert samples[(decisions, (("method", "jwt"), ("outcome", "ok")))] == 4
    assert samples[(decisions, (("method", "jwt"), ("outcome", "invalid")))] == 1
    cache = "tessera_cache_requests_total"
    assert samples[(cache, (("cache", "verified_tokens"), ("result", "hit")))] == 3
    assert samples[(cache, (("cache", "verified_tokens"), ("result", "miss")))] >= 1
    latency_counts = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "tessera_dependency_duration_seconds_count"
    }
    assert any(("dependency", "postgresql") in labels for labels in latency_counts)
    assert any(("dependency", "redis") in labels for labels in latency_counts)
    assert (("store", "memory"),) in {
        labels for (name, labels) in samples if name == "tessera_sessions_live"
    }


async def test_auth_metrics_count_revocations_and_refreshes(auth: Client) -> None:
    login = await register_and_login(auth, credential="token")
    await auth.post(
        "/auth/token", json={"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    )
    bearer = {"Authorization": f"Bearer {login['access_token']}"}
    assert (await auth.get("/auth/me", headers=bearer)).status == 200
    await auth.post("/auth/logout", headers=bearer)
    samples = _samples(await (await auth.get("/metrics")).text())
    assert samples[("tessera_refreshes_total", (("outcome", "success"),))] == 1
    assert samples[("tessera_revocations_total", (("kind", "access_token"),))] == 1
    assert samples[("tessera_auth_decisions_total", (("method", "jwt"), ("outcome", "ok")))] >= 1
