"""Liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web

from tessera_platform.health import readiness_response
from tessera_platform.program import distribution_version

from . import app_state

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers, and which version it is. Says nothing about
    dependencies (that is /readyz)."""
    return web.json_response({"status": "ok", "version": distribution_version("tessera-auth")})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready: Redis and PostgreSQL answer and a signing key is loaded."""
    app = request.app
    return await readiness_response(
        app,
        {
            "redis": app[app_state.REDIS].ping(),
            "postgresql": app[app_state.DB].fetchval("SELECT 1"),
        },
        timeout=app[app_state.SETTINGS].process.dependency_timeout,
        states={"keys": "ok" if app[app_state.KEYRING].ready else "not loaded"},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return await request.app[app_state.METRICS].handle_metrics(request)
