"""Part 3: login and refresh throughput, next to the raw Argon2 rate with the same parameters.

The auth service runs alone on the server core; the Python driver (logins
and refreshes over keep-alive connections, straight to the service's port),
PostgreSQL and Redis share the other core. The raw rate is one thread
verifying Argon2id hashes with the service's own parameters
(:mod:`bench.rawcost`), on the same core. A login cannot beat it: it *is*
one verification plus the rest (user lookup, session or token issuing,
audit), so the ratio says how much of a login is not hashing. Refreshes
involve no hashing at all and are reported as a rate.

Rounds interleave the four measurements; each figure is the median.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import budget
from bench.config import BenchConfig, Cores
from bench.credentials import PASSWORD as USER_PASSWORD
from bench.credentials import TokenPair, auth_settings, login_tokens, refresh, register
from bench.procs import MACHINE, CpuMeter
from bench.profiling import Profile, start_recording, summarise
from bench.rawcost import measure_alone
from bench.stack import BenchStack
from bench.stats import median, percentile

__all__ = ["run_logins"]

USERS = 8


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


async def _drive(
    workers: int, seconds: float, operation: Callable[[int], Awaitable[None]]
) -> tuple[int, int, list[float]]:
    """Run ``operation(worker)`` in a loop on ``workers`` tasks; (ok, failed, latencies)."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures = 0

    async def worker(number: int) -> None:
        nonlocal failures
        while time.monotonic() < deadline:
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
    if cores is not None:
        stack.pin_for_measurement(cores, [auth_pid])
    try:
        return await _measure(stack, config, cores, out_dir, progress, settings, auth_pid)
    finally:
        if cores is not None:
            stack.unpin()


async def _measure(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    out_dir: Path,
    progress: Callable[[str], None],
    settings: Any,
    auth_pid: int,
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
    }
    async with aiohttp.ClientSession(connector=connector) as http:
        for user in users:
            await register(http, base, user)

        def login_operation(credential: str) -> Callable[[int], Awaitable[None]]:
            turn = 0

            async def operation(worker: int) -> None:
                nonlocal turn
                turn += 1
                body = {
                    "username": users[turn % len(users)],
                    "password": USER_PASSWORD,
                    "credential": credential,
                }
                async with http.post(f"{base}/auth/login", json=body) as response:
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
            kind: str, workers: int, operation: Callable[[int], Awaitable[None]]
        ) -> dict[str, Any]:
            meter = CpuMeter({"auth": [auth_pid]})
            driver_before = time.process_time()
            meter.start()
            started = time.monotonic()
            ok, failed, latencies = await _drive(workers, config.login_seconds, operation)
            elapsed = time.monotonic() - started
            used = meter.stop()
            driver = time.process_time() - driver_before
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
            }

        progress("warming up (a login and a refresh)")
        await _drive(1, 0.5, login_operation("session"))
        for round_number in range(config.login_rounds):
            progress(f"round {round_number + 1}/{config.login_rounds}: Argon2, logins, refreshes")
            raw = await asyncio.to_thread(
                _raw_argon2, settings.argon2, max(1.0, config.login_seconds), cores
            )
            records["argon2"].append({"rate": raw, "cpu_ms": 1000 / raw})
            records["login_session"].append(
                await measured(
                    "login_session", config.login_concurrency, login_operation("session")
                )
            )
            records["login_token"].append(
                await measured("login_token", config.login_concurrency, login_operation("token"))
            )
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
    for kind in ("login_session", "login_token", "refresh"):
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
