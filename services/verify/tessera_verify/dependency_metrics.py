"""Latency of every Redis command and PostgreSQL query, observed without touching call sites."""

from __future__ import annotations

import time
from typing import Any, cast

import asyncpg
from prometheus_client import Histogram
from redis.asyncio import Redis

DEPENDENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)


class InstrumentedRedis(Redis):
    """A Redis client that times each command into ``latency`` (set after construction).

    Pipelines and pub/sub have their own paths in redis-py and are not timed.
    """

    latency: Histogram | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            if self.latency is not None and args:
                command = args[0]
                name = command.decode() if isinstance(command, bytes) else str(command)
                self.latency.labels("redis", name.split(" ", 1)[0].lower()).observe(
                    time.perf_counter() - started
                )


def instrumented_redis(url: str, *, timeout: float, latency: Histogram | None) -> InstrumentedRedis:
    """A client for ``url`` whose calls give up after ``timeout`` and are timed into ``latency``."""
    client = cast(
        InstrumentedRedis,
        InstrumentedRedis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        ),
    )
    client.latency = latency
    return client


def query_timer(latency: Histogram) -> Any:
    """An asyncpg pool ``init`` hook that times every query by its leading SQL verb."""

    def record(query: asyncpg.connection.LoggedQuery) -> None:
        verb = query.query.lstrip().split(None, 1)[0].lower() if query.query.strip() else "?"
        latency.labels("postgresql", verb).observe(query.elapsed)

    async def init(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(record)

    return init
