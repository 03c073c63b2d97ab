"""Liveness, readiness and metrics of a replica."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from aiohttp import web

from tessera_verify.integration import tessera_verify
from tessera_verify.middleware import DEPENDENCY_ERRORS

from . import appkeys

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "replica": request.app[appkeys.SETTINGS].replica_id})


async def _check(call: Awaitable[object], timeout: float) -> str:
    try:
        await asyncio.wait_for(call, timeout)
    except DEPENDENCY_ERRORS as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    timeout = app[appkeys.SETTINGS].dependency_timeout
    redis_state, db_state = await asyncio.gather(
        _check(tessera_verify(app).ping(), timeout),
        _check(app[appkeys.DB].fetchval("SELECT 1"), timeout),
    )
    checks = {"redis": redis_state, "postgresql": db_state}
    ready = all(state == "ok" for state in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return await request.app[appkeys.METRICS].handle_metrics(request)
