"""Running a service with a graceful shutdown.

On SIGTERM (or SIGINT) the service first says it is no longer ready
(``/readyz`` answers 503, so load balancers and Kubernetes stop sending new
work), keeps serving for ``drain_seconds`` while they notice, then closes its
listening socket, lets in-flight requests finish (up to ``shutdown_timeout``)
and exits. nginx retries idempotent requests refused by a closed socket on
another replica, so a rolling restart costs users nothing.

The event loop is the standard library's unless ``TESSERA_EVENT_LOOP=uvloop`` asks
for uvloop's; ``make bench`` measures both side by side and judges the default
(README, Benchmark: uvloop did not make tessera's baseline cheaper there).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from .process_settings import EVENT_LOOPS, ProcessSettings

log = logging.getLogger(__name__)

DRAINING = web.AppKey("tessera_draining", asyncio.Event)


def draining(app: web.Application) -> bool:
    event = app.get(DRAINING)
    return event is not None and event.is_set()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    drain_seconds: float = 0.0,
    shutdown_timeout: float = 10.0,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and stop gracefully."""
    stop = asyncio.Event()
    app[DRAINING] = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("listening on %s:%d", host, port)
        await stop.wait()
        app[DRAINING].set()
        log.info("shutting down: not ready any more, draining for %.1f s", drain_seconds)
        await asyncio.sleep(drain_seconds)
    finally:
        await runner.cleanup()  # closes the socket, waits for in-flight requests, cleans up
        log.info("stopped")


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``name`` (one of :data:`EVENT_LOOPS`)."""
    if name == "uvloop":
        return uvloop.new_event_loop()
    if name == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown event loop {name!r}; choose one of {', '.join(EVENT_LOOPS)}")


def run(app: web.Application, settings: ProcessSettings) -> None:
    """Serve until SIGTERM/SIGINT with the settings' address, shutdown timing and event
    loop."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.event_loop)) as runner:
        runner.run(
            serve(
                app,
                settings.host,
                settings.port,
                drain_seconds=settings.drain_seconds,
                shutdown_timeout=settings.shutdown_timeout,
            )
        )
