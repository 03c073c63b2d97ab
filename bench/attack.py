"""Part 6: legitimate logins while an attacker floods the auth service.

The service measured is a second auth service on the stack's PostgreSQL and
Redis, started by the benchmark with the throttles a production deployment
has: the launcher's own is set up for the demo (registrations unlimited, an
Argon2 queue of 256, so that dozens of demo users log in at once). This one
keeps the regulator's defaults (:class:`tessera_auth.regulation.RegulationPolicy`:
5 failures per account and address, 100 per address, a soft limit of 10 per
account with backoff, in 5-minute windows), limits registrations to 20 per
address (the production default) and bounds its Argon2 queue at 2 x CPUs + 2
for the one core it runs on (4 jobs; one more is 503 ``server_busy``). As in
part 3 it runs alone on the server core; the driver, PostgreSQL and Redis
share the other.

Each round, on fresh accounts and from fresh addresses (:mod:`bench.sources`):

1. **no attack**: ``config.login_concurrency`` users log in over and over with
   their correct password (session cookie), each from an address of its own,
   for ``config.attack_seconds``;
2. **under attack**: the same users for the same time, while the four streams
   of :mod:`bench.flood` run at ``config.attack_rate`` requests/s each, each
   from ``config.attack_addresses`` addresses of its own. The accounts
   attacked are not the measured users' (an attacked owner waits for a
   backoff slot by design: ``tests/test_regulation.py``).

A refused legitimate login (429 or 503) is counted and tried again 50 ms later,
not after its Retry-After: the figure is the most a user could get. Latency
percentiles are of successful logins. The service's own counters
(:mod:`bench.counters`) are read around each phase as a cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from bench.config import BenchConfig, Cores
from bench.counters import difference, outcomes, read_counters
from bench.credentials import PASSWORD, auth_settings, login_tokens, register
from bench.flood import (
    BUSY,
    THROTTLED,
    Stream,
    flood,
    guesses_on_many_accounts,
    guesses_on_one_account,
    password_changes,
    read_answer,
    registrations,
    unavailable,
)
from bench.procs import CpuMeter, cpu_count
from bench.sources import REQUEST_TIMEOUT, SourceAddresses, bound_session
from bench.stack import BenchStack
from bench.stats import median, ratio
from bench.timeline import percentiles
from tessera_auth.settings import Settings

__all__ = ["Target", "measure_attack", "run_attack", "summarise"]

#: Registrations per address in production (``tessera_auth.settings``: 20 outside development).
REGISTRATIONS_PER_ADDRESS = 20
#: A prime: the spray's n-th guess goes to name n mod 67 from address n mod A, so every
#: name is guessed from every address in turn, never always from the same one.
SPRAYED_ACCOUNTS = 67
MAX_IN_FLIGHT = 64
#: A refused legitimate login is tried again after this long.
RETRY_PAUSE = 0.05


@dataclass(frozen=True)
class Target:
    """The auth service under attack: its URL, its settings (the throttles), and its
    process (``None``: its CPU time is not measured)."""

    url: str
    settings: Settings
    pid: int | None = None


async def run_attack(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Part 6 on ``stack``: a throttled auth service of its own, measured, then stopped."""
    service_cores = None if cores is None else [cores.server]
    changes = {
        "TESSERA_REGISTER_MAX_PER_ADDRESS": str(REGISTRATIONS_PER_ADDRESS),
        "TESSERA_ARGON2_MAX_PENDING": str(2 * (cpu_count() if cores is None else 1) + 2),
    }
    settings = auth_settings({**stack.auth_environment(), **changes})
    progress("starting an auth service with production throttles")
    service = await asyncio.to_thread(stack.spawn_auth, "auth-attacked", changes, service_cores)
    if cores is not None:
        stack.pin_for_measurement(cores, [service.pid])
    try:
        measured = await measure_attack(
            Target(service.url, settings, service.pid), config, progress
        )
    finally:
        service.stop()
        stack.extras.remove(service)
        if cores is not None:
            stack.unpin()
    measured["cores"] = None if cores is None else {"server": cores.server, "load": cores.load}
    return measured


async def measure_attack(
    target: Target, config: BenchConfig, progress: Callable[[str], None]
) -> dict[str, Any]:
    """``config.attack_rounds`` rounds of no attack, then under attack, against ``target``."""
    addresses = SourceAddresses()
    prefix = f"bench-a-{secrets.token_hex(3)}-"
    users = [f"{prefix}user{number}" for number in range(config.login_concurrency)]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as local:
        for name in users:
            async with bound_session(addresses.next()) as http:
                await register(http, target.url, name)
        rounds = []
        for number in range(config.attack_rounds):
            progress(f"round {number + 1}/{config.attack_rounds}: no attack, then under attack")
            rounds.append(
                await _round(target, config, addresses, users, f"{prefix}{number}-", local)
            )
    settings = target.settings
    return {
        "throttles": {
            **asdict(settings.regulation),
            "argon2_max_pending": settings.argon2_max_pending,
        },
        "argon2": asdict(settings.argon2),
        "users": config.login_concurrency,
        "seconds": config.attack_seconds,
        "rate_per_stream": config.attack_rate,
        "addresses_per_stream": config.attack_addresses,
        "sprayed_accounts": SPRAYED_ACCOUNTS,
        "max_in_flight": MAX_IN_FLIGHT,
        "rounds": rounds,
        "summary": summarise(rounds),
    }


async def _round(
    target: Target,
    config: BenchConfig,
    addresses: SourceAddresses,
    users: Sequence[str],
    prefix: str,
    local: aiohttp.ClientSession,
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as clients:

        async def new_client() -> aiohttp.ClientSession:
            return await clients.enter_async_context(bound_session(addresses.next()))

        victim, holder = f"{prefix}victim", f"{prefix}holder"
        for name in (victim, holder):
            await register(await new_client(), target.url, name)
        stolen = await login_tokens(await new_client(), target.url, holder)
        legit = [(name, await new_client()) for name in users]
        streams = [
            guesses_on_one_account(victim),
            guesses_on_many_accounts(f"{prefix}sprayed-", SPRAYED_ACCOUNTS),
            registrations(f"{prefix}new-"),
            password_changes(stolen.access_token),
        ]
        floods = [
            (stream, [await new_client() for _ in range(config.attack_addresses)])
            for stream in streams
        ]
        baseline = await _phase(target, config, legit, [], local)
        attack = await _phase(target, config, legit, floods, local)
    return {"baseline": baseline, "attack": attack}


async def _phase(
    target: Target,
    config: BenchConfig,
    legit: Sequence[tuple[str, aiohttp.ClientSession]],
    floods: Sequence[tuple[Stream, list[aiohttp.ClientSession]]],
    local: aiohttp.ClientSession,
) -> dict[str, Any]:
    before = await read_counters(local, target.url)
    meter = CpuMeter({} if target.pid is None else {"auth": [target.pid]})
    driver_before = time.process_time()
    meter.start()
    started = time.monotonic()
    users = asyncio.create_task(_legit_logins(target.url, legit, config.attack_seconds))
    tallies = await asyncio.gather(
        *(
            flood(
                target.url,
                stream,
                clients,
                rate=config.attack_rate,
                seconds=config.attack_seconds,
                max_in_flight=MAX_IN_FLIGHT,
            )
            for stream, clients in floods
        )
    )
    logins = await users
    elapsed = time.monotonic() - started
    used = meter.stop()
    driver = time.process_time() - driver_before
    after = await read_counters(local, target.url)
    return {
        "legit": logins,
        "attackers": {
            stream.key: tally.to_json(stream)
            for (stream, _), tally in zip(floods, tallies, strict=True)
        },
        "server": difference(after, before),
        "seconds": elapsed,
        "auth_utilisation": used["auth"] / elapsed if "auth" in used else None,
        "driver_utilisation": driver / elapsed,
    }


async def _legit_logins(
    base_url: str, users: Sequence[tuple[str, aiohttp.ClientSession]], seconds: float
) -> dict[str, Any]:
    """Each user logs in again and again with the right password until ``seconds`` are up."""
    started = time.monotonic()
    deadline = started + seconds
    latencies: list[float] = []
    refused: Counter[str] = Counter()
    no_answer = 0

    async def user(name: str, http: aiohttp.ClientSession) -> None:
        nonlocal no_answer
        body = {"username": name, "password": PASSWORD, "credential": "session"}
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            try:
                async with http.post(f"{base_url}/auth/login", json=body) as response:
                    answer = await read_answer(response)
            except (aiohttp.ClientError, TimeoutError):
                no_answer += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if answer == "200":
                latencies.append(time.perf_counter() - sent)
            else:
                refused[answer] += 1
                await asyncio.sleep(RETRY_PAUSE)

    await asyncio.gather(*(user(name, http) for name, http in users))
    elapsed = time.monotonic() - started
    quantiles = percentiles(latencies)
    return {
        "ok": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": quantiles["p50_ms"],
        "p99_ms": quantiles["p99_ms"],
        "throttled": refused[THROTTLED],
        "busy": refused[BUSY],
        "unavailable": unavailable(refused),
        "refused": dict(sorted(refused.items())),
        "no_answer": no_answer,
        "seconds": elapsed,
    }


def _legit_summary(phases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    refused: Counter[str] = Counter()
    for phase in phases:
        refused.update(phase["legit"]["refused"])
    return {
        "rate": median([phase["legit"]["rate"] for phase in phases]),
        "p50_ms": median([phase["legit"]["p50_ms"] for phase in phases]),
        "p99_ms": median([phase["legit"]["p99_ms"] for phase in phases]),
        "ok": sum(phase["legit"]["ok"] for phase in phases),
        "throttled": sum(phase["legit"]["throttled"] for phase in phases),
        "busy": sum(phase["legit"]["busy"] for phase in phases),
        "unavailable": sum(phase["legit"]["unavailable"] for phase in phases),
        "refused": dict(sorted(refused.items())),
        "no_answer": sum(phase["legit"]["no_answer"] for phase in phases),
        "auth_utilisation": median([phase["auth_utilisation"] for phase in phases]),
        "driver_utilisation": max(phase["driver_utilisation"] for phase in phases),
    }


def _summed(tallies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"label": tallies[0]["label"]}
    fields = ("sent", "throttled", "busy", "unavailable", "hashed", "other", "no_answer")
    for field in (*fields, "not_sent"):
        total[field] = sum(tally[field] for tally in tallies)
    return total


def summarise(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the legitimate users' figures, paired ratios within a round, and the
    attacker's and the service's counts summed over the rounds."""
    baselines = [entry["baseline"] for entry in rounds]
    attacks = [entry["attack"] for entry in rounds]
    pairs = [(b["legit"], a["legit"]) for b, a in zip(baselines, attacks, strict=True)]
    return {
        "baseline": _legit_summary(baselines),
        "attack": _legit_summary(attacks),
        "rate_ratio": median([ratio(a["rate"], b["rate"]) for b, a in pairs]),
        "p99_ratio": median([ratio(a["p99_ms"], b["p99_ms"]) for b, a in pairs]),
        "attackers": {
            key: _summed([phase["attackers"][key] for phase in attacks])
            for key in attacks[0]["attackers"]
        },
        "server": {"baseline": _server(baselines), "attack": _server(attacks)},
    }


def _server(phases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the service counted in these phases, and how much of it reached Argon2 per second."""
    counts: Counter[str] = Counter()
    for phase in phases:
        counts.update(phase["server"])
    seconds = sum(phase["seconds"] for phase in phases)
    summary: dict[str, Any] = {"counts": dict(sorted(counts.items())), "seconds": seconds}
    summary.update(outcomes(dict(counts)))
    summary["hashed_per_s"] = ratio(summary["hashed"], seconds)
    return summary
