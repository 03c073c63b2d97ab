"""SIGTERM: stop being ready, keep serving while draining, finish in-flight requests, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tessera_auth.settings import Settings
from tessera_stack import free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def auth_process(settings: Settings) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    env = {
        **os.environ,
        "TESSERA_ENV": "development",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "TESSERA_PORT": str(port),
        "TESSERA_DRAIN_SECONDS": "1.0",
        # Slow logins on purpose: a login is still running when SIGTERM arrives.
        "TESSERA_ARGON2_TIME_COST": "12",
        "TESSERA_LOG_FORMAT": "text",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tessera_auth", "serve", env=env
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(base + "/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            process.kill()
            raise AssertionError("the auth service did not become ready")
    try:
        yield process, base
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_drains_then_finishes_in_flight_requests_and_exits_cleanly(
    auth_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    process, base = auth_process
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(
            base + "/auth/register", json={"username": "drain", "password": PASSWORD}
        ) as response:
            assert response.status == 201
        login = asyncio.create_task(
            http.post(base + "/auth/login", json={"username": "drain", "password": PASSWORD})
        )
        await asyncio.sleep(0.1)  # the login is inside its (slow) Argon2 check now
        process.send_signal(signal.SIGTERM)
        for _ in range(100):  # the signal is handled asynchronously
            async with http.get(base + "/readyz") as ready:
                checks = (await ready.json())["checks"]
                if ready.status == 503:
                    break
            await asyncio.sleep(0.01)
        assert checks["shutdown"] == "draining"
        async with http.get(base + "/healthz") as alive:
            assert alive.status == 200  # still serving while load balancers notice
        response = await login
        assert response.status == 200
        assert (await response.json())["user"]["username"] == "drain"
        response.release()
    assert await asyncio.wait_for(process.wait(), 30) == 0
