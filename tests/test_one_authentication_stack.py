"""The auth service and the replicas check credentials with one stack
(:class:`tessera_verify.authenticators.Authentication`): the same authenticators, the
same answers, the same decisions counted."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from tessera_auth import app_state
from tessera_resource import app_state as resource_state
from tessera_verify.integration import tessera_verify
from tessera_verify.principal import AuthMethod
from tessera_verify.sessions import session_cookie_name

from .conftest import ResourceFactory, register_and_login

Client = TestClient[Any, Any]


def _decisions(registry: CollectorRegistry, method: str, outcome: str) -> float:
    labels = {"method": method, "outcome": outcome}
    return registry.get_sample_value("tessera_auth_decisions_total", labels) or 0.0


async def test_the_auth_service_and_a_replica_authenticate_with_one_stack(
    auth: Client, make_replica: ResourceFactory
) -> None:
    replica = await make_replica(auth_methods=(AuthMethod.JWT, AuthMethod.SHARED_SESSION))
    ours = auth.app[app_state.AUTHENTICATION].authenticators
    theirs = tessera_verify(replica.app).authentication.authenticators
    assert [(type(a), a.method) for a in ours] == [(type(a), a.method) for a in theirs]

    body = await register_and_login(auth, credential="token")
    cookie_name = session_cookie_name(insecure=False)
    cases = [
        ({"Authorization": f"Bearer {body['access_token']}"}, 200, "jwt", "ok"),
        ({"Authorization": "Bearer not.a.token"}, 401, "jwt", "invalid"),
        ({"Cookie": f"{cookie_name}={'x' * 43}"}, 401, "shared_session", "unknown"),
    ]
    services = (
        (auth, "/auth/me", auth.app[app_state.METRICS].registry),
        (replica, "/api/me", replica.app[resource_state.METRICS].registry),
    )
    for headers, status, method, outcome in cases:
        for client, path, registry in services:
            before = _decisions(registry, method, outcome)
            response = await client.get(path, headers=headers)
            assert response.status == status, (path, headers, await response.text())
            assert _decisions(registry, method, outcome) == before + 1, (path, outcome)
