"""Shared fixtures: real PostgreSQL and Redis, a fresh database per test session,
a clean Redis database per test, and the auth app on a moving clock."""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tessera_auth.app import create_app
from tessera_auth.settings import Argon2Parameters, Settings
from tessera_platform.process_settings import ProcessSettings
from tessera_resource.app import create_app as create_resource_app
from tessera_resource.settings import ResourceSettings
from tessera_stack.tls import TlsFiles, ensure_certificate
from tessera_verify.clock import ManualClock
from tessera_verify.errors import PROBLEM_MEMBERS
from tessera_verify.principal import AuthMethod
from tessera_verify.sessions import SESSION_COOKIE, SessionPolicy
from tessera_verify.verify_config import (
    CacheConfig,
    ForwardConfig,
    JwtConfig,
    LocalSessionConfig,
    MethodConfig,
    SharedSessionConfig,
    VerifyConfig,
)

pytest_plugins = ["tests.fixtures_infra"]

#: Test tiers: ``unit`` (no server at all: ``make test-unit``, seconds), ``integration``
#: (in-process services against real PostgreSQL, Redis, Sentinel, Cluster and nginx),
#: ``stack`` (the launcher's whole local stack) and ``deploy`` (images, compose,
#: Kubernetes, packages). ``make test-fast`` is everything but the stack tier.
STACK_MODULES = {
    "test_bench_smoke",
    "test_browser_live",
    "test_browser_portal",
    "test_readme_quickstart",
    "test_demo_faults",
    "test_deploy_live_stack",
    "test_forward_auth_cache",
    "test_stack",
    "test_stack_redis_groups",
    "test_stack_redis_outage",
    "test_stack_rows",
}
DEPLOY_MODULES = {
    "test_deploy_compose",
    "test_deploy_images",
    "test_deploy_kubernetes",
    "test_workspace_packages",
}


#: Modules whose tests start servers or service processes of their own (not by fixture).
SERVER_MODULES = {
    "test_dependency_failures",
    "test_forward_auth_cache_config",
    "test_session_store",  # its servers come through request.getfixturevalue
    "test_revocation_failover",  # likewise
    "test_graceful_shutdown",
    "test_least_privilege",
    "test_migrations",
    "test_nginx_configs",
    "test_prometheus_metrics",
    "test_redis_reconnect",  # its lone server is a fixture of its own
    "test_redis_urls",
    "test_revocation_faults",
    "test_settings",
    "test_token_lifecycle",
    "test_workers",
}
#: Fixtures that start a real server (everything that uses one depends on these).
SERVER_FIXTURES = {"database_url", "redis_url", "redis_sentinel_group", "redis_cluster_group"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in STACK_MODULES:
            item.add_marker(pytest.mark.stack)
        elif module in DEPLOY_MODULES:
            item.add_marker(pytest.mark.deploy)
        elif module in SERVER_MODULES or SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


# Cheap Argon2 for tests that are not about Argon2 (tests of the real cost set their own).
FAST_ARGON2 = Argon2Parameters(memory_kib=1024, time_cost=1, parallelism=1)


@pytest.fixture
async def clean_db(test_database_url: str) -> str:
    """The test database with every table emptied (the schema stays migrated)."""
    connection = await asyncpg.connect(test_database_url)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT LIKE '%schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{row["tablename"]}"' for row in tables)
            await connection.execute(f"TRUNCATE {names}")
    finally:
        await connection.close()
    return test_database_url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on a flushed Redis database."""
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    """Starts at the real time, so processes on the wall clock (the admin CLI) agree with it."""
    return ManualClock(start=float(int(time.time())))


@pytest.fixture
def settings(clean_db: str, redis: Redis, redis_url: str) -> Settings:
    return Settings(
        database_url=clean_db,
        redis_url=redis_url,
        session_hash_key=secrets.token_bytes(32),
        key_encryption_key=b"test-key-encryption-key-0123456789abcdef",
        environment="development",
        issuer="https://auth.tessera.test",
        audience="tessera-api",
        argon2=FAST_ARGON2,
        process=ProcessSettings(migrate_on_start=True, max_body_bytes=4096),
    )


def _changed(component: Any, changes: dict[str, Any]) -> Any:
    """``component`` with the ``changes`` that name its fields (taken out of ``changes``)."""
    own = {name: changes.pop(name) for name in list(changes) if name in fields_of(component)}
    return replace(component, **own) if own else component


def fields_of(component: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(component)}


def with_changes(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with ``changes``, each routed to the part that holds it (the process
    settings, the caches, the rest): tests name a setting, not where it lives."""
    for part in ("process", "caches"):
        if part in changes and set(changes) & fields_of(getattr(settings, part)):
            raise TypeError(f"give {part}= or its fields, not both")
    changes.setdefault("process", _changed(settings.process, changes))
    changes.setdefault("caches", _changed(settings.caches, {**changes}))
    for name in fields_of(settings.caches):
        changes.pop(name, None)
    return replace(settings, **changes)


AuthClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_auth_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    settings: Settings,
    clock: ManualClock,
) -> AuthClientFactory:
    """Start an auth app (optionally with changed settings) on the shared clock."""

    async def make(**changes: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(with_changes(settings, **changes), clock=clock))

    return make


@pytest.fixture
async def auth_client(make_auth_client: AuthClientFactory) -> TestClient[Any, Any]:
    return await make_auth_client()


async def register_and_login(
    client: TestClient[Any, Any], credential: str = "session", username: str | None = None
) -> dict[str, Any]:
    """Register a fresh user and log in; returns the login body plus the password.

    ``credential="none"`` checks the password (``/auth/password-check``) and issues nothing.
    """
    username = username or f"user-{uuid.uuid4().hex[:10]}"
    password = "correct horse battery staple"
    response = await client.post(
        "/auth/register", json={"username": username, "password": password}
    )
    assert response.status == 201, await response.text()
    if credential == "none":
        response = await client.post(
            "/auth/password-check", json={"username": username, "password": password}
        )
    else:
        response = await client.post(
            "/auth/login",
            json={"username": username, "password": password, "credential": credential},
        )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    body["password"] = password
    return body


@dataclass(frozen=True)
class LoggedIn:
    """A fresh user holding every credential kind at once (``credential="both"``)."""

    name: str
    token: str
    refresh: str
    cookie: dict[str, str]


async def log_in_with_everything(client: TestClient[Any, Any]) -> LoggedIn:
    """Register a fresh user and log in for a session cookie and a token pair together."""
    name = f"user-{uuid.uuid4().hex[:10]}"
    password = "correct horse battery staple"
    response = await client.post("/auth/register", json={"username": name, "password": password})
    assert response.status == 201, await response.text()
    response = await client.post(
        "/auth/login", json={"username": name, "password": password, "credential": "both"}
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    cookie = {"Cookie": f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE].value}"}
    return LoggedIn(name, body["access_token"], body["refresh_token"], cookie)


# --- an auth server and resource replicas in-process (real PostgreSQL and Redis) --------

FORWARD_SECRET = b"forward-secret-0123456789"
ResourceFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def auth_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]], settings: Settings, clock: ManualClock
) -> TestServer:
    return await aiohttp_server(create_app(settings, clock=clock))


@pytest.fixture
async def auth(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], auth_server: TestServer
) -> TestClient[Any, Any]:
    return await aiohttp_client(auth_server)


@pytest.fixture
def make_replica(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    auth_server: TestServer,
    settings: Settings,
    clock: ManualClock,
) -> ResourceFactory:
    """A resource replica validating against ``auth_server`` (every auth method on)."""

    async def make(
        replica_id: str = "r1",
        *,
        auth_methods: tuple[AuthMethod, ...] = tuple(AuthMethod),
        session_hash_key: bytes | None = None,
        auth_url: str | None = None,
        **changes: Any,
    ) -> TestClient[Any, Any]:
        """``changes`` name fields of the replica's settings, its process settings, its
        verify configuration or its caches; the methods are built from ``auth_methods``."""
        auth_url = auth_url or str(auth_server.make_url("")).rstrip("/")
        policy = SessionPolicy()
        by_kind: dict[AuthMethod, MethodConfig] = {
            AuthMethod.JWT: JwtConfig(jwks_url=auth_url + "/.well-known/jwks.json"),
            AuthMethod.SHARED_SESSION: SharedSessionConfig(
                hash_key=session_hash_key or settings.session_hash_key, policy=policy
            ),
            AuthMethod.LOCAL_SESSION: LocalSessionConfig(policy=policy),
            AuthMethod.FORWARD: ForwardConfig(secret=FORWARD_SECRET),
        }
        timeout = changes.get("dependency_timeout", 2.0)
        process = _changed(
            ProcessSettings(port=9001, migrate_on_start=True, max_body_bytes=4096), changes
        )
        caches = _changed(CacheConfig(), changes)
        verify = _changed(
            VerifyConfig(
                issuer=settings.issuer,
                audience=settings.audience,
                methods=tuple(by_kind[kind] for kind in auth_methods),
                redis_url=settings.redis_url,
                trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
                dependency_timeout=timeout,
                caches=caches,
            ),
            changes,
        )
        resource_settings = ResourceSettings(
            database_url=settings.database_url,
            auth_url=auth_url,
            verify=verify,
            process=process,
            replica_id=replica_id,
            environment="development",
        )
        return await aiohttp_client(
            create_resource_app(replace(resource_settings, **changes), clock=clock)
        )

    return make


def extensions(problem_body: dict[str, Any]) -> dict[str, Any]:
    """An RFC 9457 problem's extension members besides ``error`` (the field at fault, the
    rule broken, the wait asked for)."""
    return {name: value for name, value in problem_body.items() if name not in PROBLEM_MEMBERS}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a loopback certificate for nginx tests (one set per test module)."""
    return ensure_certificate(tmp_path_factory.mktemp("tls"))
