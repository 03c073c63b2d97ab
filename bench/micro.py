"""Micro-benchmark: what one login and one token verification cost, side by side.

    make bench            # or: .venv/bin/python -m bench.micro [--rounds 5] [--json FILE]

Uses DATABASE_URL / REDIS_URL when set, otherwise starts throwaway PostgreSQL
and Redis servers. Everything runs on loopback and stops by itself. Figures are
medians over rounds; the headline numbers are ratios measured in the same run
(these machines are noisy), e.g. an HTTP login vs the raw Argon2id verification
it contains, or a full access-token check vs pyjwt's bare signature check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import argon2
import jwt
from aiohttp import web
from redis.asyncio import Redis

from tessera_auth import app_state
from tessera_auth.app import create_app
from tessera_auth.revocation_store import RevocationStore
from tessera_auth.settings import Argon2Parameters, Settings
from tessera_platform.process_settings import ProcessSettings
from tessera_stack import PostgresServer, RedisServer, free_port
from tessera_verify.access_tokens import AccessTokenVerifier, RevocationChecker
from tessera_verify.clock import Clock
from tessera_verify.revocation import RevocationEvent, RevocationKind
from tessera_verify.revocation_cache import RevocationCache
from tessera_verify.session_store import RedisSessionStore
from tessera_verify.sessions import SessionManager, SessionPolicy
from tessera_verify.ttl_cache import TTLCache


@dataclass
class Figure:
    name: str
    seconds_per_op: float

    @property
    def micros(self) -> float:
        return self.seconds_per_op * 1e6


def _median_rate(run: Callable[[], float], rounds: int) -> float:
    return statistics.median(run() for _ in range(rounds))


async def _amedian(run: Callable[[], Awaitable[float]], rounds: int) -> float:
    return statistics.median([await run() for _ in range(rounds)])


@contextlib.contextmanager
def _dependencies() -> Iterator[tuple[str, str]]:
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        servers: list[PostgresServer | RedisServer] = []
        try:
            if not database_url:
                pg = PostgresServer(Path(tmp))
                pg.start()
                servers.append(pg)
                database_url = pg.url
            if not redis_url:
                rd = RedisServer(Path(tmp))
                rd.start()
                servers.append(rd)
                redis_url = rd.url
            yield database_url, redis_url
        finally:
            for server in servers:
                server.stop()


async def run(rounds: int, logins: int, verifications: int) -> dict[str, Any]:
    params = Argon2Parameters()
    with _dependencies() as (database_url, redis_url):
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            session_hash_key=secrets.token_bytes(32),
            key_encryption_key=secrets.token_bytes(32),
            environment="development",
            issuer="https://bench.tessera.test",
            audience="tessera-api",
            argon2=params,
            process=ProcessSettings(migrate_on_start=True),
        )
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        base = f"http://127.0.0.1:{port}"
        try:
            return await _measure(app, base, params, rounds, logins, verifications)
        finally:
            await runner.cleanup()


async def _measure(
    app: web.Application,
    base: str,
    params: Argon2Parameters,
    rounds: int,
    logins: int,
    verifications: int,
) -> dict[str, Any]:
    password = "correct horse battery staple"
    username = f"bench-{secrets.token_hex(4)}"
    hasher = argon2.PasswordHasher(
        time_cost=params.time_cost, memory_cost=params.memory_kib, parallelism=params.parallelism
    )
    encoded = hasher.hash(password)

    def raw_argon2() -> float:
        started = time.perf_counter()
        for _ in range(logins):
            hasher.verify(encoded, password)
        return (time.perf_counter() - started) / logins

    async with aiohttp.ClientSession(base) as http:
        await http.post("/auth/register", json={"username": username, "password": password})

        async def http_login(credential: str) -> float:
            body = {"username": username, "password": password, "credential": credential}
            started = time.perf_counter()
            for _ in range(logins):
                async with http.post("/auth/login", json=body) as response:
                    assert response.status == 200, await response.text()
                    await response.read()
            return (time.perf_counter() - started) / logins

        argon2_cost = _median_rate(raw_argon2, rounds)
        login_session = await _amedian(lambda: http_login("session"), rounds)
        login_token = await _amedian(lambda: http_login("token"), rounds)
        async with http.post(
            "/auth/login", json={"username": username, "password": password, "credential": "both"}
        ) as response:
            tokens = await response.json()
            session_id = response.cookies["__Host-tessera_session"].value

    token = tokens["access_token"]
    keyring = app[app_state.KEYRING]
    settings = app[app_state.SETTINGS]
    redis = app[app_state.REDIS]
    clock = app[app_state.CLOCK]
    public_key = (await keyring.verification_keys.get(keyring.active.kid)).key
    alg = keyring.algorithm
    feed = app[app_state.REVOCATIONS]
    assert feed.fresh, "the revocation feed should be up"

    def verifier(revocations: RevocationChecker | None, cache: bool) -> AccessTokenVerifier:
        return AccessTokenVerifier(
            keyring.verification_keys,
            issuer=settings.issuer,
            audience=settings.audience,
            algorithms=[alg],
            clock=clock,
            revocations=revocations,
            cache=TTLCache(10_000) if cache else None,
        )

    def raw_signature() -> float:
        started = time.perf_counter()
        for _ in range(verifications):
            jwt.decode(token, public_key, algorithms=[alg], options={"verify_aud": False})
        return (time.perf_counter() - started) / verifications

    def timed_checks(check: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            started = time.perf_counter()
            for _ in range(verifications):
                await check()
            return (time.perf_counter() - started) / verifications

        return run

    # Staleness bound 0: the local copy is never trusted, every check reads Redis.
    uncached_redis = verifier(RevocationCache(redis, clock, max_staleness=0), cache=False)
    uncached_local = verifier(feed, cache=False)
    cached_local = verifier(feed, cache=True)
    redis_sessions = SessionManager(
        RedisSessionStore(redis, clock),
        hash_key=settings.session_hash_key,
        policy=SessionPolicy(idle_timeout=settings.session_idle_timeout),
        clock=clock,
    )
    cached_sessions = app[app_state.SESSIONS]  # Redis behind a cache fed by the revocation feed

    async def session_check(manager: SessionManager) -> None:
        assert await manager.load(session_id) is not None

    signature = _median_rate(raw_signature, rounds)
    first_seen_redis = await _amedian(timed_checks(lambda: uncached_redis.verify(token)), rounds)
    first_seen_local = await _amedian(timed_checks(lambda: uncached_local.verify(token)), rounds)
    repeated = await _amedian(timed_checks(lambda: cached_local.verify(token)), rounds)
    session_redis = await _amedian(timed_checks(lambda: session_check(redis_sessions)), rounds)
    session_cached = await _amedian(timed_checks(lambda: session_check(cached_sessions)), rounds)
    propagation = await _propagation(redis, clock, app[app_state.REVOCATION_STORE], revocations=50)
    figures = [
        Figure(f"raw Argon2id verify (m={params.memory_kib},t={params.time_cost})", argon2_cost),
        Figure("HTTP login -> session cookie", login_session),
        Figure("HTTP login -> access + refresh token", login_token),
        Figure(f"raw pyjwt signature check ({alg})", signature),
        Figure("JWT check, first seen, denylist in Redis", first_seen_redis),
        Figure("JWT check, first seen, local revocation cache", first_seen_local),
        Figure("JWT check, repeated (verified-token cache)", repeated),
        Figure("session check, Redis every time", session_redis),
        Figure("session check, cached (feed-invalidated)", session_cached),
        Figure("revocation seen by 3 replicas (median)", propagation["median"]),
        Figure("revocation seen by 3 replicas (max)", propagation["max"]),
    ]
    return {
        "algorithm": alg,
        "rounds": rounds,
        "figures": {f.name: f.seconds_per_op for f in figures},
        "ratios": {
            "login_session_vs_argon2": login_session / argon2_cost,
            "login_token_vs_argon2": login_token / argon2_cost,
            "argon2_share_of_login": argon2_cost / login_session,
            "first_seen_jwt_overhead_us": (first_seen_local - signature) * 1e6,
            "redis_denylist_cost_us": (first_seen_redis - first_seen_local) * 1e6,
            "jwt_uncached_vs_cached": first_seen_redis / repeated,
            "session_uncached_vs_cached": session_redis / session_cached,
            "propagation_ms_median": propagation["median"] * 1e3,
            "propagation_ms_max": propagation["max"] * 1e3,
        },
        "table": figures,
    }


async def _propagation(
    redis: Redis, clock: Clock, publisher: RevocationStore, *, revocations: int
) -> dict[str, float]:
    """Time from publishing a revocation until three replicas' caches all hold it.

    Each "replica" is a RevocationCache on its own Redis connection, exactly what
    a resource replica runs; the clock is the wall clock, so this is end to end.
    """
    url = redis.connection_pool.connection_kwargs
    clients = [
        Redis(
            host=url.get("host", "127.0.0.1"),
            port=url.get("port", 6379),
            db=url.get("db", 0),
            username=url.get("username"),
            password=url.get("password"),
        )
        for _ in range(3)
    ]
    caches = [RevocationCache(client, clock) for client in clients]
    tasks = [asyncio.create_task(cache.run()) for cache in caches]
    try:
        for cache in caches:
            assert await cache.wait_fresh(5.0)
        delays: list[float] = []
        for _ in range(revocations):
            jti = secrets.token_urlsafe(8)
            started = time.perf_counter()
            until = clock.now() + 60
            await publisher.record(RevocationEvent(RevocationKind.TOKEN, jti, until, until))
            while not all(jti in cache._jti for cache in caches):
                await asyncio.sleep(0)
                if time.perf_counter() - started > 5:
                    raise RuntimeError("a revocation did not arrive within 5 s")
            delays.append(time.perf_counter() - started)
        return {"median": statistics.median(delays), "max": max(delays)}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.aclose()


def _print(result: dict[str, Any]) -> None:
    print(f"\ntessera micro-benchmark (median of {result['rounds']} rounds, loopback)\n")
    print(f"| {'operation':<48} | {'µs per op':>10} |")
    print(f"|{'-' * 50}|{'-' * 12}|")
    for figure in result["table"]:
        print(f"| {figure.name:<48} | {figure.micros:>10.1f} |")
    ratios = result["ratios"]
    print()
    print(f"login (session) / raw Argon2id      : {ratios['login_session_vs_argon2']:.2f}x")
    print(f"login (tokens)  / raw Argon2id      : {ratios['login_token_vs_argon2']:.2f}x")
    print(f"first-seen JWT beyond raw signature : {ratios['first_seen_jwt_overhead_us']:+.1f} µs")
    print(f"Redis denylist round-trip           : {ratios['redis_denylist_cost_us']:+.1f} µs")
    print(f"JWT check uncached / cached         : {ratios['jwt_uncached_vs_cached']:.1f}x")
    print(f"session check uncached / cached     : {ratios['session_uncached_vs_cached']:.1f}x")
    print(
        f"revocation propagation, 3 replicas  : median {ratios['propagation_ms_median']:.2f} ms, "
        f"max {ratios['propagation_ms_max']:.2f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--logins", type=int, default=20, help="logins per round")
    parser.add_argument("--verifications", type=int, default=2000, help="checks per round")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.rounds, args.logins, args.verifications))
    _print(result)
    if args.json:
        payload = {k: v for k, v in result.items() if k != "table"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nraw figures: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
