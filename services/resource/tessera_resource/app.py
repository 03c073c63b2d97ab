"""The resource replica's aiohttp application."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from tessera_verify.clock import Clock, SystemClock
from tessera_verify.cookies import cookie_value
from tessera_verify.error_middleware import error_middleware
from tessera_verify.errors import DuplicateCookie
from tessera_verify.http_metrics import ServiceMetrics
from tessera_verify.integration import TesseraVerify, VerifyConfig
from tessera_verify.observability import request_id_middleware
from tessera_verify.pg_migrations import Migrator, open_database
from tessera_verify.principal import PRINCIPAL, AuthMethod
from tessera_verify.session_store import MemorySessionStore
from tessera_verify.sessions import SessionManager, SessionPolicy

from . import app_state, routes, routes_health
from .comments import CommentRepository
from .password_check import PasswordChecker
from .settings import ResourceSettings

log = logging.getLogger(__name__)

MIGRATOR = Migrator("tessera_resource.migrations", "resource_schema_migrations")
ROUTE_COOKIE = "tessera_route"
SERVED_BY_HEADER = "X-Served-By"
AUTH_METHOD_HEADER = "X-Auth-Method"


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    pool = await open_database(
        settings, MIGRATOR, latency=app[app_state.METRICS].dependency_latency
    )
    app[app_state.DB] = pool
    app[app_state.COMMENTS] = CommentRepository(pool)
    yield
    await pool.close()


async def _auth_client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    async with aiohttp.ClientSession() as session:
        app[app_state.PASSWORDS] = PasswordChecker(
            session, settings.auth_url, settings.dependency_timeout
        )
        yield


@web.middleware
async def stamp_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Say which replica answered and how the caller was authenticated; keep the route cookie.

    A middleware, not ``on_response_prepare``: aiohttp serialises cookies before
    that signal fires. It sits outside the error middleware, so errors are stamped too.
    """
    response = await handler(request)
    settings = request.app[app_state.SETTINGS]
    principal = request.get(PRINCIPAL)
    response.headers[SERVED_BY_HEADER] = settings.replica_id
    response.headers[AUTH_METHOD_HEADER] = principal.method.value if principal else "none"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    try:
        route = cookie_value(request, ROUTE_COOKIE)
    except DuplicateCookie:
        route = None  # only a routing hint: set it afresh
    if route != settings.replica_id:
        # nginx's route-cookie policy maps this cookie to this replica (demo row 3).
        response.set_cookie(
            ROUTE_COOKIE,
            settings.replica_id,
            path="/",
            secure=not settings.cookie_insecure,
            httponly=True,
            samesite="Lax",
        )
    return response


def create_app(settings: ResourceSettings, *, clock: Clock | None = None) -> web.Application:
    """A resource replica; nothing connects until it starts."""
    clock = clock or SystemClock()
    metrics = ServiceMetrics(CollectorRegistry())
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            request_id_middleware,
            metrics.middleware(),
            stamp_middleware,
            error_middleware,
        ],
    )
    app[app_state.SETTINGS] = settings
    app[app_state.CLOCK] = clock
    app[app_state.METRICS] = metrics
    policy = SessionPolicy(
        idle_timeout=settings.session_idle_timeout,
        absolute_timeout=settings.session_absolute_timeout,
    )
    local_store = MemorySessionStore(clock)
    # In-process sessions die with the process, so their key is the process's own:
    # no other process needs it, and it opens nothing anywhere else.
    local_sessions = SessionManager(
        local_store, hash_key=secrets.token_bytes(32), policy=policy, clock=clock
    )
    metrics.sessions_live.labels("memory").set_function(lambda: len(local_store))
    app[app_state.LOCAL_SESSIONS] = local_sessions
    app.cleanup_ctx.extend([_db_ctx, _auth_client_ctx])
    asymmetric = settings.jwt_algorithm != "HS256"
    TesseraVerify(
        VerifyConfig(
            issuer=settings.issuer,
            audience=settings.audience,
            methods=settings.auth_methods,
            jwks_url=settings.jwks_url if asymmetric else None,
            algorithms=(settings.jwt_algorithm,),
            hs256_secret=settings.hs256_secret,
            redis_url=settings.redis_url,
            session_hash_key=settings.session_hash_key,
            session_policy=policy,
            local_sessions=local_sessions,
            forward_secret=settings.forward_secret,
            trusted_proxies=settings.trusted_proxies,
            cookie_insecure=settings.cookie_insecure,
            dependency_timeout=settings.dependency_timeout,
            cache_ttl=settings.cache_ttl,
            revocation_max_staleness=settings.revocation_max_staleness,
            cache_max_entries=settings.cache_max_entries,
            jwks_max_age=settings.jwks_max_age,
            jwks_min_refetch_interval=settings.jwks_min_refetch_interval,
        ),
        clock=clock,
        metrics=metrics,
    ).install(app)
    app.add_routes(routes.routes)
    app.add_routes(routes_health.routes)
    if settings.cookie_insecure:
        log.warning(
            "!!! INSECURE COOKIES on replica %s: no Secure flag, no __Host- prefix. "
            "Plain-HTTP loopback development only.",
            settings.replica_id,
        )
    if AuthMethod.LOCAL_SESSION in settings.auth_methods:
        log.info("replica %s keeps sessions in its own memory", settings.replica_id)
    return app
