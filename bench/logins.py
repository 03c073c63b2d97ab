"""Part 3: login and refresh throughput, next to the raw Argon2 rate with the same parameters.

The auth service runs alone on the server core; the Python driver (logins
and refreshes over keep-alive connections, straight to the service's port),
PostgreSQL and Redis share the other core. The raw rate is one thread
verifying Argon2id hashes with the service's own parameters
(:mod:`bench.rawcost`), on the same core. A login cannot beat it: it *is*
one verification plus the rest (user lookup, session or token issuing,
audit), so the ratio says how much of a login is not hashing. Refreshes
involve no hashing at all and are reported as a rate.

Where a login's other time goes is measured beside it, in the same rounds:

- the same auth service started again with a negligible hash (Argon2id with
  :data:`LIGHT_ARGON2`, development parameters), logging in at the rate the
  real service just reached: its CPU per login less its own raw hash is what a
  login's other work costs when no 19 MiB hash has gone through the caches;
- the calls the real service made to Redis and PostgreSQL per login (its own
  ``tessera_dependency_duration_seconds`` counts: a pipeline is one round trip);
- what one such round trip costs on the server core, alone
  (``python -m bench.rawcost roundtrips``).

Rounds interleave the measurements; each figure is the median.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from bench import budget
from bench.budget import LOGIN_KINDS
from bench.config import BenchConfig, Cores
from bench.counters import dependency_calls
from bench.credentials import PASSWORD as USER_PASSWORD
from bench.credentials import TokenPair, auth_settings, login_tokens, refresh, register
from bench.procs import MACHINE, CpuMeter
from bench.profiling import Profile, start_recording, summarise
from bench.rawcost import measure_alone, measured_alone
from bench.stack import BenchStack, ExtraProcess
from bench.stats import median, percentile

__all__ = ["run_logins"]

USERS = 8
#: The light service's Argon2id: 64 KiB, one pass (allowed in development only). Its hash
#: costs a fraction of a millisecond and leaves the caches to the rest of the login.
LIGHT_ARGON2 = {"TESSERA_ARGON2_MEMORY_KIB": "64", "TESSERA_ARGON2_TIME_COST": "1"}


def _raw_argon2(settings_argon2: Any, seconds: float, cores: Cores | None) -> float:
    args = [
        "argon2",
        "--memory-kib",
        str(settings_argon2.memory_kib),
        "--time-cost",
        str(settings_argon2.time_cost),
        "--parallelism",
        str(settings_argon2.parallelism),
        "--seconds",
        str(seconds),
    ]
    return measure_alone(args, "argon2_per_second", cores, timeout=300)


def _round_trips(stack: BenchStack, seconds: float, cores: Cores | None) -> dict[str, float]:
    settings = stack.settings
    args = [
        "roundtrips",
        "--redis-url",
        settings.redis_url,
        "--database-url",
        settings.database_url,
        "--seconds",
        str(seconds),
    ]
    return {name: float(value) for name, value in measured_alone(args, cores, 120).items()}


async def _drive(
    workers: int,
    seconds: float,
    operation: Callable[[int], Awaitable[None]],
    rate: float | None = None,
) -> tuple[int, int, list[float]]:
    """Run ``operation(worker)`` in a loop on ``workers`` tasks, no more than ``rate`` a
    second in all when given; (ok, failed, latencies)."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures = 0
    next_start = time.monotonic()

    async def worker(number: int) -> None:
        nonlocal failures, next_start
        while time.monotonic() < deadline:
            if rate is not None:
                # The next free start on one schedule for all workers (no debt piles up).
                now = time.monotonic()
                start = max(next_start, now)
                next_start = start + 1 / rate
                await asyncio.sleep(start - now)
                if time.monotonic() >= deadline:
                    break
            started = time.perf_counter()
            try:
                await operation(number)
            except (RuntimeError, aiohttp.ClientError, TimeoutError):
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(number) for number in range(workers)))
    return len(latencies), failures, latencies


async def run_logins(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    out_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Measure part 3 on ``stack``; leaves nothing pinned."""
    settings = auth_settings(stack.auth_environment())
    auth_pid = stack.auth_pid()
    if auth_pid is None:
        raise RuntimeError("the auth service is not running")
    light_argon2 = auth_settings({**stack.auth_environment(), **LIGHT_ARGON2}).argon2
    light: ExtraProcess | None = None
    light_problem = ""
    try:
        progress("starting the same auth service with a negligible hash")
        light = await asyncio.to_thread(
            stack.spawn_auth,
            "auth-light-hash",
            LIGHT_ARGON2,
            None if cores is None else [cores.server],
        )
    except (RuntimeError, OSError) as exc:  # measured without it, and said so
        light_problem = str(exc)
    if cores is not None:
        stack.pin_for_measurement(cores, [auth_pid] + ([] if light is None else [light.pid]))
    try:
        measured = await _measure(
            stack, config, cores, out_dir, progress, settings, auth_pid, light, light_argon2
        )
    finally:
        if light is not None:
            light.stop()
            stack.extras.remove(light)
        if cores is not None:
            stack.unpin()
    measured["light"] = {
        "argon2": asdict(light_argon2),
        "problem": light_problem,
    }
    return measured


async def _measure(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    out_dir: Path,
    progress: Callable[[str], None],
    settings: Any,
    auth_pid: int,
    light: ExtraProcess | None,
    light_argon2: Any,
) -> dict[str, Any]:
    prefix = f"bench-l-{secrets.token_hex(3)}-"
    users = [f"{prefix}{number}" for number in range(USERS)]
    base = stack.auth_url
    connector = aiohttp.TCPConnector(
        limit=max(config.login_concurrency, config.refresh_concurrency)
    )
    records: dict[str, list[dict[str, Any]]] = {
        "argon2": [],
        "login_session": [],
        "login_token": [],
        "refresh": [],
        "light_argon2": [],
        "light_login_session": [],
        "light_login_token": [],
        "busy_login_session": [],
        "busy_login_token": [],
        "round_trips": [],
    }
    async with aiohttp.ClientSession(connector=connector) as http:
        for user in users:
            await register(http, base, user)
            if light is not None:
                await register(http, light.url, f"{user}-light")

        def login_operation(
            credential: str, url: str = base, suffix: str = ""
        ) -> Callable[[int], Awaitable[None]]:
            turn = 0

            async def operation(worker: int) -> None:
                nonlocal turn
                turn += 1
                body = {
                    "username": users[turn % len(users)] + suffix,
                    "password": USER_PASSWORD,
                    "credential": credential,
                }
                async with http.post(f"{url}/auth/login", json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"login answered {response.status}")

            return operation

        async def refresh_operation_for(
            chains: list[TokenPair],
        ) -> Callable[[int], Awaitable[None]]:
            async def operation(worker: int) -> None:
                chains[worker] = await refresh(http, base, chains[worker].refresh_token)

            return operation

        async def measured(
            kind: str,
            workers: int,
            operation: Callable[[int], Awaitable[None]],
            *,
            pid: int = auth_pid,
            url: str = base,
            rate: float | None = None,
        ) -> dict[str, Any]:
            calls_before = await dependency_calls(http, url)  # outside the CPU window
            meter = CpuMeter({"auth": [pid]})
            driver_before = time.process_time()
            meter.start()
            started = time.monotonic()
            ok, failed, latencies = await _drive(workers, config.login_seconds, operation, rate)
            elapsed = time.monotonic() - started
            used = meter.stop()
            driver = time.process_time() - driver_before
            calls_after = await dependency_calls(http, url)
            return {
                "kind": kind,
                "ok": ok,
                "failed": failed,
                "seconds": elapsed,
                "rate": ok / elapsed,
                "p50_ms": percentile(latencies, 0.5) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "auth_cpu_ms": used["auth"] / ok * 1000 if ok else float("nan"),
                "auth_utilisation": used["auth"] / elapsed,
                "driver_utilisation": driver / elapsed,
                "background_cores": max(0.0, used[MACHINE] - used["auth"] - driver) / elapsed,
                "calls": {
                    name: (calls_after.get(name, 0) - calls_before.get(name, 0)) / ok
                    if ok
                    else float("nan")
                    for name in ("redis", "postgresql")
                },
            }

        progress("warming up (a login and a refresh)")
        await _drive(1, 0.5, login_operation("session"))
        if light is not None:
            await _drive(1, 0.5, login_operation("session", light.url, "-light"))
        for round_number in range(config.login_rounds):
            progress(f"round {round_number + 1}/{config.login_rounds}: Argon2, logins, refreshes")
            raw = await asyncio.to_thread(
                _raw_argon2, settings.argon2, max(1.0, config.login_seconds), cores
            )
            records["argon2"].append({"rate": raw, "cpu_ms": 1000 / raw})
            for kind in LOGIN_KINDS:
                credential = kind.removeprefix("login_")
                run = await measured(kind, config.login_concurrency, login_operation(credential))
                records[kind].append(run)
                if light is not None:
                    # The same logins on the light service: at the rate just reached, and
                    # as fast as they go (its event loop never idle).
                    for name, rate in ((f"light_{kind}", run["rate"]), (f"busy_{kind}", None)):
                        records[name].append(
                            await measured(
                                name,
                                config.login_concurrency,
                                login_operation(credential, light.url, "-light"),
                                pid=light.pid,
                                url=light.url,
                                rate=rate,
                            )
                        )
            if light is not None:
                light_raw = await asyncio.to_thread(_raw_argon2, light_argon2, 1.0, cores)
                records["light_argon2"].append({"rate": light_raw, "cpu_ms": 1000 / light_raw})
            records["round_trips"].append(await asyncio.to_thread(_round_trips, stack, 1.0, cores))
            chains = [
                await login_tokens(http, base, users[number % len(users)])
                for number in range(config.refresh_concurrency)
            ]
            records["refresh"].append(
                await measured(
                    "refresh", config.refresh_concurrency, await refresh_operation_for(chains)
                )
            )
        summary = _summarise(records)
        profile = await _profile_if_missed(
            summary, config, out_dir, progress, auth_pid, login_operation("session")
        )
    return {
        "argon2": {
            "memory_kib": settings.argon2.memory_kib,
            "time_cost": settings.argon2.time_cost,
            "parallelism": settings.argon2.parallelism,
        },
        "cores": None if cores is None else {"server": cores.server, "load": cores.load},
        "concurrency": {"login": config.login_concurrency, "refresh": config.refresh_concurrency},
        "summary": summary,
        "runs": records,
        "profiles": {} if profile is None else {"login_session": profile.to_json()},
    }


def _summarise(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    raw_rate = median([record["rate"] for record in records["argon2"]])
    raw_cpu_ms = median([record["cpu_ms"] for record in records["argon2"]])
    summary: dict[str, Any] = {"argon2": {"rate": raw_rate, "cpu_ms": raw_cpu_ms}}
    for kind in (*LOGIN_KINDS, "refresh"):
        runs = records[kind]
        pairs = list(zip(records["argon2"], runs, strict=True))
        entry: dict[str, Any] = {
            "rate": median([run["rate"] for run in runs]),
            "p50_ms": median([run["p50_ms"] for run in runs]),
            "p99_ms": median([run["p99_ms"] for run in runs]),
            "auth_cpu_ms": median([run["auth_cpu_ms"] for run in runs]),
            "auth_utilisation": median([run["auth_utilisation"] for run in runs]),
            "driver_utilisation": median([run["driver_utilisation"] for run in runs]),
            "background_cores": median([run["background_cores"] for run in runs]),
            "failed": sum(run["failed"] for run in runs),
        }
        if kind != "refresh":
            # Paired within a round, then the median.
            entry["rate_share_of_argon2"] = median(
                [run["rate"] / raw["rate"] for raw, run in pairs]
            )
            entry["cost_share_of_argon2"] = median(
                [raw["cpu_ms"] / run["auth_cpu_ms"] for raw, run in pairs]
            )
            entry["not_hashing_ms"] = entry["auth_cpu_ms"] - raw_cpu_ms
        summary[kind] = entry
    for kind in LOGIN_KINDS:
        summary[kind]["calls"] = {
            name: median([run["calls"][name] for run in records[kind]])
            for name in ("redis", "postgresql")
        }
    if records["round_trips"]:
        summary["round_trip_us"] = {
            name: median([run[name] for run in records["round_trips"]])
            for name in records["round_trips"][0]
        }
    if records["light_argon2"]:
        light_hash_ms = median([record["cpu_ms"] for record in records["light_argon2"]])
        summary["light"] = {"hash_cpu_ms": light_hash_ms}
        for kind in LOGIN_KINDS:
            runs = records[f"light_{kind}"]
            warm = median([run["auth_cpu_ms"] for run in runs]) - light_hash_ms
            busy = records[f"busy_{kind}"]
            busy_ms = median([run["auth_cpu_ms"] for run in busy]) - light_hash_ms
            summary["light"][kind] = {
                "rate": median([run["rate"] for run in runs]),
                "auth_cpu_ms": median([run["auth_cpu_ms"] for run in runs]),
                "not_hashing_ms": warm,
                # What the 19 MiB hash costs the rest of the login on its core.
                "hash_aftermath_ms": summary[kind]["not_hashing_ms"] - warm,
                "busy_rate": median([run["rate"] for run in busy]),
                "busy_not_hashing_ms": busy_ms,
                # What waking an idle event loop for each step of a login costs.
                "idle_wakeups_ms": warm - busy_ms,
                "failed": sum(run["failed"] for run in runs + busy),
            }
    login_rate = summary["login_session"]["rate"]
    summary["refresh"]["per_login"] = (
        summary["refresh"]["rate"] / login_rate if login_rate else float("nan")
    )
    return summary


async def _profile_if_missed(
    summary: dict[str, Any],
    config: BenchConfig,
    out_dir: Path,
    progress: Callable[[str], None],
    auth_pid: int,
    operation: Callable[[int], Awaitable[None]],
) -> Profile | None:
    verdicts = budget.login_verdicts({"summary": summary})
    if all(verdict.met for verdict in verdicts):
        return None
    progress(f"profiling logins with py-spy ({config.profile_seconds:g} s)")
    profile_dir = out_dir / "profiles"
    profile_dir.mkdir(parents=True, exist_ok=True)
    output = profile_dir / "login_session.collapsed.txt"
    recorder = start_recording(auth_pid, config.profile_seconds, output)
    await asyncio.sleep(0.3)
    await _drive(config.login_concurrency, config.profile_seconds + 1, operation)
    await asyncio.to_thread(recorder.communicate, timeout=60)
    return summarise(output) if output.exists() else None
