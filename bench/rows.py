"""Part 2: the demonstration rows under load, through nginx (TLS) with three replicas.

For each row of DESIGN.md's table the stack switches to it (``tessera_stack
row N``), then:

1. **capacity** (wrk, closed loop): users logged in from 127.0.0.1, wrk's
   own address, their credentials sent in turn; wrk counts authenticated
   answers and ``X-Served-By`` (a Lua ``response()`` callback). Row 2 is
   then "every user behind one address": ``ip_hash`` puts them all on one
   replica, which is the figure to read for users behind one NAT;
2. **scale-out** (Python driver): many users, each from its own /24
   (127.0.N.1, because ``ip_hash`` hashes three octets), send requests at a
   fixed total rate (9 ``GET /api/me`` to 1 ``POST /api/comments``); a
   replica is added a third of the way in (``tessera_stack add-replica``);
   then the stack goes back to three replicas and everyone logs in again;
3. **kill**: the same load; the replica most users live on (or r1) is
   SIGKILLed a third of the way in (``tessera_stack kill-replica``, nginx
   is not told).

The driver's figures are at a fixed offered load, so its "throughput" is
what got through; capacity is wrk's. Nothing is pinned here (five service
processes and the generator share the two cores); the report says how much
CPU the driver and wrk used, and how late the driver sent (its lag), which
shows whether it kept up.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from yarl import URL

from bench.config import BenchConfig
from bench.stack import BenchStack
from bench.timeline import Sample, analyse
from bench.wrk import WrkResult, WrkRun, run_wrk
from tessera_demo.users import DemoUser, demo_users, login, register, source_address
from tessera_stack.rows import ROWS, Row

__all__ = ["MIN_EVENT_AT", "drive", "event_time", "log_in", "run_rows"]

POST_EVERY = 10  # one request in ten is a POST /api/comments
CAPACITY_SHUFFLES = 20
#: The event (kill, scale-out) comes a third of the way in, never before this.
MIN_EVENT_AT = 2.0
WRK_ADDRESS = "127.0.0.1"


def event_time(duration: float) -> float:
    """When the event of a run of ``duration`` seconds comes: a third of the way in, never
    before :data:`MIN_EVENT_AT`."""
    return max(MIN_EVENT_AT, duration / 3)


async def log_in(users: Sequence[DemoUser], base_url: str, row: Row) -> list[str]:
    """Log everyone in (a few at a time: Argon2); the names of those who failed."""
    gate = asyncio.Semaphore(4)

    async def one(user: DemoUser) -> bool:
        async with gate:
            exchange = await login(user, base_url, row)
            if exchange.status is None:
                # The user's idle keep-alive connection may have been closed by an
                # nginx reload (a scale-out): a browser would simply retry.
                exchange = await login(user, base_url, row)
        return exchange.status == 200

    results = await asyncio.gather(*(one(user) for user in users))
    return [user.name for user, ok in zip(users, results, strict=True) if not ok]


def _request_line(user: DemoUser, base_url: str) -> str:
    cookies = user.session.cookie_jar.filter_cookies(URL(base_url))
    parts = []
    if cookies:
        parts.append("Cookie: " + "; ".join(f"{k}={m.value}" for k, m in cookies.items()))
    if user.bearer:
        parts.append(f"Authorization: Bearer {user.bearer}")
    return "\t".join(parts) or "-"


def _wrk_summary(runs: list[WrkResult], groups: Sequence[str]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    served: Counter[str] = Counter()
    for run in runs:
        served.update(run.served_by)
    answered = sum(served.values()) or 1
    return {
        "runs": len(runs),
        "rate": median([run.rate for run in runs]),
        "ok_rate": median([run.counts["ok"] / run.seconds for run in runs]),
        "success_rate": median([run.counts["ok"] / run.requests for run in runs if run.requests]),
        "not_ok": sum(run.requests - run.counts["ok"] for run in runs),
        "server_errors": sum(run.counts["server_errors"] for run in runs),
        "socket_errors": sum(
            run.errors["connect"] + run.errors["read"] + run.errors["write"] + run.errors["timeout"]
            for run in runs
        ),
        "p50_ms": median([run.latency_us["p50"] / 1000 for run in runs]),
        "p90_ms": median([run.latency_us["p90"] / 1000 for run in runs]),
        "p99_ms": median([run.latency_us["p99"] / 1000 for run in runs]),
        "share": {replica: count / answered for replica, count in sorted(served.items())},
        "wrk_utilisation": median([run.wrk_utilisation for run in runs]),
        "utilisation": {
            group: median([run.utilisation(group) for run in runs]) for group in groups
        },
        "machine_utilisation": median([run.utilisation("machine") for run in runs]),
    }


async def _capacity(
    stack: BenchStack, config: BenchConfig, row: Row, progress: Callable[[str], None]
) -> dict[str, Any]:
    base_url = stack.base_url
    async with demo_users(
        config.users, stack.ca_cert, prefix="bench-w-", addresses=[WRK_ADDRESS], connections=1
    ) as users:
        await register(users, base_url)
        failed = await log_in(users, base_url, row)
        lines = [_request_line(user, base_url) for user in users if user.name not in failed]
    # Users in a shuffled order, many times over: sent strictly in turn, user k
    # would meet the same replica on every round-robin cycle (24 users, 3
    # replicas), and row 1 would look all-or-nothing per user.
    rng = random.Random(f"tessera-bench-capacity-{row.number}")
    order: list[str] = []
    for _ in range(CAPACITY_SHUFFLES):
        rng.shuffle(lines)
        order += lines
    groups = stack.service_pids()
    runs = []
    for number in range(config.row_rounds):
        progress(f"row {row.number}: capacity (wrk) {number + 1}/{config.row_rounds}")
        runs.append(
            run_wrk(
                WrkRun(
                    url=f"{base_url}/api/me",
                    headers=order or ["-"],
                    duration=config.row_seconds,
                    connections=config.row_connections,
                    count_responses=True,
                ),
                groups,
            )
        )
    summary = _wrk_summary(runs, sorted(groups))
    summary["login_failures"] = len(failed)
    summary["raw"] = [run.to_json() for run in runs]
    return summary


async def drive(
    users: Sequence[DemoUser],
    base_url: str,
    *,
    rate: float,
    duration: float,
    event: Callable[[], str],
    seed: str,
) -> tuple[list[Sample], float, float, str, float]:
    """Every user sends at ``rate / len(users)`` per second; ``event`` runs at
    :func:`event_time`.

    Returns the samples, the event's start and end (seconds from the start),
    what the event returned, and the driver's own CPU utilisation.
    """
    interval = len(users) / rate
    event_at = event_time(duration)
    rng = random.Random(seed)
    samples: list[Sample] = []
    started = time.monotonic()
    cpu_before = time.process_time()
    deadline = started + duration

    async def user_loop(index: int, user: DemoUser) -> None:
        scheduled = started + rng.uniform(0, interval)
        number = 0
        while scheduled < deadline:
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.monotonic()
            if number % POST_EVERY == POST_EVERY - 1:
                method, path, body = "POST", "/api/comments", {"body": f"bench {number}"}
            else:
                method, path, body = "GET", "/api/me", None
            exchange = await user.request(base_url, method, path, body)
            samples.append(
                Sample(
                    user=index,
                    sent=sent - started,
                    latency=time.monotonic() - sent,
                    method=method,
                    status=exchange.status,
                    served_by=exchange.served_by,
                    ok=exchange.ok,
                    lag=max(0.0, sent - scheduled),
                )
            )
            number += 1
            scheduled += interval

    outcome: dict[str, Any] = {}

    async def trigger() -> None:
        await asyncio.sleep(max(0.0, started + event_at - time.monotonic()))
        outcome["start"] = time.monotonic() - started
        outcome["value"] = await asyncio.to_thread(event)
        outcome["end"] = time.monotonic() - started

    await asyncio.gather(trigger(), *(user_loop(i, user) for i, user in enumerate(users)))
    driver_cpu = (time.process_time() - cpu_before) / max(time.monotonic() - started, 1e-9)
    return samples, outcome["start"], outcome["end"], str(outcome["value"]), driver_cpu


async def _event_run(
    stack: BenchStack,
    config: BenchConfig,
    users: Sequence[DemoUser],
    row: Row,
    kind: str,
) -> dict[str, Any]:
    duration = config.event_run_seconds
    base_url = stack.base_url
    replicas = [entry.id for entry in stack.replicas()]
    homes = Counter(user.home for user in users if user.home)
    if kind == "kill":
        victim = min(replicas, key=lambda rid: (-homes.get(rid, 0), int(rid[1:])))

        def event() -> str:
            stack.kill_replica(victim)
            return victim
    else:

        def event() -> str:
            return stack.add_replica()

    samples, start, end, replica, driver_cpu = await drive(
        users,
        base_url,
        rate=config.offered_rate,
        duration=duration,
        event=event,
        seed=f"tessera-bench-{row.number}-{kind}",
    )
    result = analyse(
        samples,
        duration=duration,
        event_start=start,
        event_end=end,
        users=len(users),
        replica=replica,
        fair_share=None if kind == "kill" else 1 / (len(replicas) + 1),
    )
    result["kind"] = kind
    result["replicas_before"] = replicas
    result["homes"] = dict(sorted(homes.items()))
    result["offered_rate"] = config.offered_rate
    result["driver_utilisation"] = driver_cpu
    return result


async def run_rows(
    stack: BenchStack,
    config: BenchConfig,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Measure part 2 on ``stack`` (three replicas, any row); leaves it at three replicas."""
    results: dict[str, Any] = {}
    addresses = [source_address(index) for index in range(config.users)]
    for number in config.rows:
        row = ROWS[number]
        progress(f"row {number}: switching the stack ({row.methods}, {row.policy})")
        stack.row(number)
        capacity = await _capacity(stack, config, row, progress)
        base_url = stack.base_url
        async with demo_users(
            config.users, stack.ca_cert, prefix="bench-u-", addresses=addresses, connections=1
        ) as users:
            await register(users, base_url)
            progress(f"row {number}: {config.users} users log in, each from its own /24")
            failed = await log_in(users, base_url, row)
            at = f"t={event_time(config.event_run_seconds):.0f} s"
            progress(f"row {number}: steady load, a replica added at {at}")
            scale_out = await _event_run(stack, config, users, row, "scale_out")
            stack.scale(config.replicas)
            failed += await log_in(users, base_url, row)
            progress(f"row {number}: steady load, a replica killed at {at}")
            kill = await _event_run(stack, config, users, row, "kill")
        steady_failures = (
            int(capacity["not_ok"])
            + int(scale_out["before"]["not_ok"])
            + int(kill["before"]["not_ok"])
        )
        results[str(number)] = {
            "row": number,
            "label": row.label,
            "methods": row.methods,
            "policy": row.policy,
            "expectation": row.expectation,
            "login_failures": failed,
            "capacity": capacity,
            "scale_out": scale_out,
            "kill": kill,
            "steady_failures": steady_failures,
        }
    return {
        "users": config.users,
        "offered_rate": config.offered_rate,
        "post_every": POST_EVERY,
        "rows": results,
    }
