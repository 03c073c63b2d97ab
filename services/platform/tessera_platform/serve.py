"""Running a service with a graceful shutdown.

On SIGTERM (or SIGINT) the service first says it is no longer ready
(``/readyz`` answers 503, so load balancers and Kubernetes stop sending new
work), keeps serving for ``drain_seconds`` while they notice, then closes its
listening socket, lets in-flight requests finish (up to ``shutdown_timeout``)
and exits. nginx retries idempotent requests refused by a closed socket on
another replica, so a rolling restart costs users nothing.

The event loop is uvloop's unless ``TESSERA_EVENT_LOOP=asyncio`` asks for the
standard library's; ``make bench`` measures both side by side, each on a fresh
replica, and judges the default (README, Benchmark).

With ``TESSERA_WORKERS=N`` (N > 1) this process becomes a supervisor of N
worker processes (README, Scaling, "Multi-core"). Each binds the same
host:port with ``SO_REUSEPORT``, so the kernel spreads new connections over
them, and each is a whole service of its own: its own event loop, app,
Redis and PostgreSQL connections, caches, revocation feed and ``/metrics``.
The supervisor forwards SIGTERM/SIGINT to every worker (each drains as
above) and exits once all have exited. A worker that exits when it was not
asked to (a crash, the OOM killer, a SIGKILL) stops the service: the others
are told to drain and the supervisor exits 1. It does not restart workers
and go on with fewer or with fresh ones: what started the service (systemd,
Kubernetes, compose, the stack launcher) restarts it whole and sees the
failure, where a supervisor's quiet restarts would hide a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import uvloop
from aiohttp import web

from .process_settings import EVENT_LOOPS, ProcessSettings

log = logging.getLogger(__name__)

#: Makes the app: called in the process that serves it (a worker's, with workers > 1).
AppFactory = Callable[[], web.Application]
#: Seconds past drain and shutdown a worker may take before the supervisor kills it.
STOP_GRACE = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds to wait for an exited worker's status once its sentinel has closed.
EXIT_STATUS_WAIT = 5.0

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
    reuse_port: bool = False,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
) -> None:
    """Serve ``app`` until one of ``stop_signals``, then drain and stop gracefully;
    ``reuse_port``: share the port with the other workers (``SO_REUSEPORT``)."""
    stop = asyncio.Event()
    app[DRAINING] = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
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


def run(
    app_factory: AppFactory,
    settings: ProcessSettings,
    *,
    worker_setup: Callable[[], None] | None = None,
) -> None:
    """Serve ``app_factory()``'s app until SIGTERM/SIGINT with the settings' address,
    shutdown timing, event loop and number of workers.

    With ``settings.workers > 1``, each worker is a new interpreter that runs
    ``worker_setup()`` (logging, as this process set it up) and then makes its own app:
    both must be picklable (``functools.partial`` of module-level functions). Exits 1
    (``SystemExit``) when a worker failed.
    """
    if settings.workers == 1:
        _serve_here(app_factory, settings)
        return
    status = _supervise(app_factory, settings, worker_setup)
    if status != 0:
        raise SystemExit(status)


def _serve_here(
    app_factory: AppFactory,
    settings: ProcessSettings,
    *,
    reuse_port: bool = False,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
) -> None:
    with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.event_loop)) as runner:
        runner.run(
            serve(
                app_factory(),
                settings.host,
                settings.port,
                drain_seconds=settings.drain_seconds,
                shutdown_timeout=settings.shutdown_timeout,
                reuse_port=reuse_port,
                stop_signals=stop_signals,
            )
        )


def _supervise(
    app_factory: AppFactory,
    settings: ProcessSettings,
    worker_setup: Callable[[], None] | None,
) -> int:
    """Start ``settings.workers`` workers and wait for them; the exit status (0 or 1)."""
    _refuse_taken_port(settings.host, settings.port)
    # "spawn": every worker is a fresh interpreter that opens its own connections and
    # event loop. By the time run() is called this process has already run an event loop
    # (the auth service's dependency check) and imported libraries that start threads
    # or hold locks (uvloop, redis, asyncpg, argon2's pool); a fork would copy that state
    # half-made into each worker, and per-process randomness made at import with it
    # (every worker would draw the same request IDs: observability's _ID_PREFIX).
    # Spawning costs an interpreter start per worker, once.
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        _terminate(workers)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    failed: BaseProcess | None = None
    try:
        for number in range(1, settings.workers + 1):
            if stopping:
                break
            worker: BaseProcess = context.Process(
                target=_worker,
                args=(app_factory, settings, worker_setup, os.getpid()),
                name=f"worker-{number}",
            )
            worker.start()
            workers.append(worker)
        log.info("%d workers on %s:%d", len(workers), settings.host, settings.port)
        if stopping:  # a signal between a start and its append reached no one
            _terminate(workers)
        deadline: float | None = None
        # A worker has exited once its sentinel (a pipe only it holds open) reads as
        # closed; its exit status may come a moment later, or never if someone else
        # reaped it, so that is not what the loop waits on.
        exited: set[BaseProcess] = set()
        while live := [worker for worker in workers if worker not in exited]:
            if stopping and deadline is None:
                log.info("waiting for %d workers to stop", len(live))
                deadline = time.monotonic() + (
                    settings.drain_seconds + settings.shutdown_timeout + STOP_GRACE
                )
            # Woken by a worker's exit; at least once a second to see a stop signal.
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([worker.sentinel for worker in live], timeout)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    log.error("workers still running after the shutdown timeout: killing them")
                    for worker in live:
                        worker.kill()
                    failed = failed or live[0]
                continue
            for worker in live:
                if worker.sentinel not in ready:
                    continue
                exited.add(worker)
                worker.join(EXIT_STATUS_WAIT)  # reap it, for its exit status
                if not stopping:
                    # Serving on with fewer workers would go unnoticed: stop them all.
                    log.error(
                        "worker %s (pid %s) exited unexpectedly (%s): stopping the service",
                        worker.name,
                        worker.pid,
                        _describe(worker.exitcode),
                    )
                    failed = worker
                    stopping = True
                    _terminate(workers)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for worker in workers:
        worker.join()
    if failed is not None:
        return 1
    # A worker signalled before it set up its handlers dies of the SIGTERM we sent.
    clean = all(worker.exitcode in (0, -signal.SIGTERM) for worker in workers)
    log.info("all workers stopped")
    return 0 if clean else 1


def _terminate(workers: list[BaseProcess]) -> None:
    for worker in workers:
        if worker.exitcode is None and worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"status {exitcode}"


def _worker(
    app_factory: AppFactory,
    settings: ProcessSettings,
    worker_setup: Callable[[], None] | None,
    supervisor: int,
) -> None:
    """One worker process: its own setup, app, event loop and SO_REUSEPORT socket."""
    # Ctrl-C in a terminal reaches the whole process group: only the supervisor acts on
    # it (and sends SIGTERM), so no worker stops before the supervisor knows it should.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_with(supervisor)
    if worker_setup is not None:
        worker_setup()
    _serve_here(app_factory, settings, reuse_port=True, stop_signals=(signal.SIGTERM,))


def _stop_with(supervisor: int) -> None:
    """SIGTERM this worker (so it drains) when the supervisor dies, even by SIGKILL:
    an orphaned worker would keep serving the port with no one to stop it."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def _refuse_taken_port(host: str, port: int) -> None:
    """Exit 1 when something listens on host:port already.

    Workers bind with ``SO_REUSEPORT``, which another program of the same user that
    also set it could share with them unseen, taking part of the traffic. A bind
    without it fails on a taken port, as a one-process service's would.
    """
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", host, port, exc.strerror)
                raise SystemExit(1) from None
