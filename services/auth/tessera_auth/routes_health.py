"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tessera_verify.middleware import DEPENDENCY_ERRORS

from . import appkeys

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing about dependencies (that is /readyz)."""
    return web.json_response({"status": "ok"})


async def _check(coro: Any, timeout: float) -> str:
    try:
        await asyncio.wait_for(coro, timeout)
    except DEPENDENCY_ERRORS as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready: Redis and PostgreSQL answer and a signing key is loaded."""
    app = request.app
    timeout = app[appkeys.SETTINGS].dependency_timeout
    redis_state, db_state = await asyncio.gather(
        _check(app[appkeys.REDIS].ping(), timeout),
        _check(app[appkeys.DB].fetchval("SELECT 1"), timeout),
    )
    checks = {
        "redis": redis_state,
        "postgresql": db_state,
        "keys": "ok" if app[appkeys.KEYRING].ready else "not loaded",
    }
    ready = all(state == "ok" for state in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return await request.app[appkeys.METRICS].handle_metrics(request)
