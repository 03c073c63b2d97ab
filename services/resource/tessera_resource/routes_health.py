"""Liveness, readiness and metrics of a replica."""

from __future__ import annotations

from aiohttp import web

from tessera_platform.health import readiness_response
from tessera_platform.program import distribution_version
from tessera_verify.integration import tessera_verify

from . import app_state

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers, which replica and which version it is."""
    return web.json_response(
        {
            "status": "ok",
            "replica": request.app[app_state.SETTINGS].replica_id,
            "version": distribution_version("tessera-resource"),
        }
    )


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    return await readiness_response(
        app,
        {"redis": tessera_verify(app).ping(), "postgresql": app[app_state.DB].fetchval("SELECT 1")},
        timeout=app[app_state.SETTINGS].process.dependency_timeout,
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return await request.app[app_state.METRICS].handle_metrics(request)
