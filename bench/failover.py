"""Part 5: the shared store fails under a steady load through nginx (rows 4 and 5).

For each store and fault of the demonstration (:mod:`tessera_demo.faults`):
one Redis (AOF) SIGKILLed and brought back by ``up`` after a second; a
Sentinel group's primary SIGKILLed; a Cluster's primary of the revocation
plane's slot (``{rev}``) SIGKILLed, and one of a primary serving only other
keys; the benchmark runs a stack of that topology (``up --redis ...``, three
replicas, free ports, its own PostgreSQL), and for each row of
``config.failover_rows``:

1. logs in ``config.users`` users, each from its own /24 (127.0.N.1);
2. drives the same fixed-rate load as part 2 (9 ``GET /api/me`` to 1
   ``POST /api/comments``) for ``config.failover_seconds``;
3. a third of the way in, takes the store away (:mod:`tessera_stack.redis_faults`):
   the event lasts until the store serves again (the restarted Redis answers
   ``PING``; the sentinels or the cluster name a new primary);
4. after the run, ``up`` brings the killed node back and the benchmark
   waits until the group is whole before the next run.

Reported: p99 latency and failed requests (5xx or no answer) before, during
and after the fault (:func:`bench.timeline.analyse`), the seconds from the
first failure to the last, and users lost. Loopback only; bounded times.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.rows import drive, log_in
from bench.stack import BenchStack
from bench.timeline import Sample, analyse
from tessera_demo.faults import FAULTS, Fault
from tessera_demo.stack_control import own_servers_env
from tessera_demo.users import demo_users, register, source_address
from tessera_stack.processes import is_alive
from tessera_stack.redis_faults import FaultTarget, find_target, repair, store_is_back
from tessera_stack.rows import ROWS

__all__ = ["run_failover"]

#: A single Redis stays dead this long before ``up`` restarts it.
SINGLE_DOWN_SECONDS = 1.0
MAX_FAILOVER_SECONDS = 60.0
POLL = 0.05


def _fault_event(stack: BenchStack, target: FaultTarget) -> Callable[[], str]:
    """The event for :func:`bench.rows.drive` (run in a thread): kill, wait until back."""

    def event() -> str:
        os.kill(target.pid, signal.SIGKILL)
        deadline = time.monotonic() + MAX_FAILOVER_SECONDS
        while is_alive(target.pid) and time.monotonic() < deadline:
            time.sleep(POLL)
        if target.topology == "single":
            time.sleep(SINGLE_DOWN_SECONDS)
            stack.cli("up")
        while not store_is_back(target):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.label}: the store did not come back")
            time.sleep(POLL)
        return target.label

    return event


def _failure_span(samples: Sequence[Sample]) -> float:
    failed = [s for s in samples if s.failed]
    if not failed:
        return 0.0
    return max(s.sent + s.latency for s in failed) - min(s.sent for s in failed)


async def _one(stack: BenchStack, config: BenchConfig, fault: Fault, number: int) -> dict[str, Any]:
    row = ROWS[number]
    base_url = stack.base_url
    addresses = [source_address(index) for index in range(config.users)]
    async with demo_users(
        config.users, stack.ca_cert, prefix="bench-f-", addresses=addresses, connections=1
    ) as users:
        await register(users, base_url)
        failed_logins = await log_in(users, base_url, row)
        target = await asyncio.to_thread(find_target, stack.layout, stack.state(), fault.slot)
        duration = config.failover_seconds
        samples, start, end, _, driver_cpu = await drive(
            users,
            base_url,
            rate=config.offered_rate,
            duration=duration,
            event=_fault_event(stack, target),
            seed=f"tessera-bench-failover-{fault.topology}-{fault.slot}-{number}",
        )

    async def up() -> None:
        await asyncio.to_thread(stack.cli, "up")

    repair_seconds = await repair(stack.layout, target, up)
    result = analyse(samples, duration=duration, event_start=start, event_end=end, users=len(users))
    del result["timeline"]
    result.update(
        {
            "store": fault.label,
            "topology": fault.topology,
            "slot": fault.slot,
            "row": number,
            "label": row.label,
            "login_failures": failed_logins,
            "unavailable_s": _failure_span(samples),
            "statuses_502": sum(1 for s in samples if s.status == 502),
            "offered_rate": config.offered_rate,
            "driver_utilisation": driver_cpu,
            "repair_s": repair_seconds,
        }
    )
    return result


async def run_failover(
    config: BenchConfig,
    run_root: Path,
    alg: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Part 5 (module doc), each topology on a stack of its own under ``run_root``."""
    runs: list[dict[str, Any]] = []
    faults = [f for f in FAULTS if f.topology in config.failover_stores]
    for topology in dict.fromkeys(f.topology for f in faults):
        stack = BenchStack(run_root / f"failover-{topology}", alg=alg)
        stack.env = own_servers_env(stack.env)  # its own PostgreSQL and Redis group
        try:
            progress(f"5: failover, a stack with --redis {topology}")
            await asyncio.to_thread(
                stack.up, row=config.failover_rows[0], replicas=config.replicas, redis=topology
            )
            for number in config.failover_rows:
                await asyncio.to_thread(stack.row, number)
                for fault in (f for f in faults if f.topology == topology):
                    progress(f"5: row {number}, {fault.label}, {config.failover_seconds:g} s")
                    runs.append(await _one(stack, config, fault, number))
        finally:
            await asyncio.to_thread(stack.down)
    return {
        "users": config.users,
        "offered_rate": config.offered_rate,
        "seconds": config.failover_seconds,
        "runs": runs,
    }
