"""Readiness answers: every dependency checked at once, each with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping

from aiohttp import web

from tessera_platform.service_errors import DEPENDENCY_ERRORS

from .serve import draining


async def _check(call: Awaitable[object], timeout: float) -> str:
    try:
        await asyncio.wait_for(call, timeout)
    except DEPENDENCY_ERRORS as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


async def readiness_response(
    app: web.Application,
    probes: Mapping[str, Awaitable[object]],
    *,
    timeout: float,
    states: Mapping[str, str] | None = None,
) -> web.Response:
    """200 when every probe answers within ``timeout`` and every extra state is "ok", else
    503; always 503 once the service is shutting down (:mod:`tessera_platform.serve`)."""
    names = list(probes)
    results = await asyncio.gather(*(_check(probes[name], timeout) for name in names))
    checks = dict(zip(names, results, strict=True)) | dict(states or {})
    if draining(app):
        checks["shutdown"] = "draining"
    ready = all(state == "ok" for state in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
