"""The resource replica's aiohttp application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from tessera_platform.middleware import service_middleware
from tessera_platform.pg_migrations import Migrator, open_database
from tessera_verify.clock import Clock, SystemClock
from tessera_verify.cookies import cookie_value
from tessera_verify.errors import DuplicateCookie
from tessera_verify.http_metrics import ServiceMetrics
from tessera_verify.integration import TesseraVerify
from tessera_verify.principal import PRINCIPAL, AuthMethod

from . import app_state, openapi, routes, routes_health
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
        settings.database_url,
        settings.process,
        MIGRATOR,
        latency=app[app_state.METRICS].dependency_latency,
    )
    app[app_state.DB] = pool
    app[app_state.COMMENTS] = CommentRepository(pool)
    yield
    await pool.close()


async def _auth_client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    async with aiohttp.ClientSession() as session:
        app[app_state.PASSWORDS] = PasswordChecker(
            session, settings.auth_url, settings.process.dependency_timeout
        )
        yield


def stamp(request: web.Request, response: web.StreamResponse) -> None:
    """Say which replica answered and how the caller was authenticated; keep the route
    cookie. Errors are stamped too (the service middleware calls it on every answer)."""
    settings = request.app[app_state.SETTINGS]
    principal = request.get(PRINCIPAL)
    headers = response.headers
    headers[SERVED_BY_HEADER] = settings.replica_id
    headers[AUTH_METHOD_HEADER] = principal.method.value if principal else "none"
    headers.setdefault("X-Content-Type-Options", "nosniff")
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
            secure=not settings.verify.cookie_insecure,
            httponly=True,
            samesite="Lax",
        )


def create_app(settings: ResourceSettings, *, clock: Clock | None = None) -> web.Application:
    """A resource replica; nothing connects until it starts."""
    clock = clock or SystemClock()
    metrics = ServiceMetrics(CollectorRegistry())
    app = web.Application(
        client_max_size=settings.process.max_body_bytes,
        middlewares=[service_middleware(metrics, stamp=stamp)],
    )
    app[app_state.SETTINGS] = settings
    app[app_state.CLOCK] = clock
    app[app_state.METRICS] = metrics
    app.cleanup_ctx.extend([_db_ctx, _auth_client_ctx])
    TesseraVerify(settings.verify, clock=clock, metrics=metrics).install(app)
    app.add_routes(routes.routes)
    app.add_routes(routes_health.routes)
    app.add_routes(openapi.routes())
    if settings.verify.cookie_insecure:
        log.warning(
            "!!! INSECURE COOKIES on replica %s: no Secure flag, no __Host- prefix. "
            "Plain-HTTP loopback development only.",
            settings.replica_id,
        )
    if AuthMethod.LOCAL_SESSION in settings.verify.auth_methods:
        log.info("replica %s keeps sessions in its own memory", settings.replica_id)
    return app
