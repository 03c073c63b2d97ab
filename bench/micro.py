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

from tessera_auth import appkeys
from tessera_auth.app import create_app
from tessera_auth.settings import Argon2Parameters, Settings
from tessera_stack import PostgresServer, RedisServer, free_port


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
            migrate_on_start=True,
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
    keyring = app[appkeys.KEYRING]
    verifier = app[appkeys.VERIFIER]
    sessions = app[appkeys.SESSIONS]
    public_key = (await keyring.verification_keys.get(keyring.active.kid)).key
    alg = keyring.algorithm

    def raw_signature() -> float:
        started = time.perf_counter()
        for _ in range(verifications):
            jwt.decode(token, public_key, algorithms=[alg], options={"verify_aud": False})
        return (time.perf_counter() - started) / verifications

    async def tessera_claims() -> float:
        started = time.perf_counter()
        for _ in range(verifications):
            await verifier.verify_signature_and_claims(token)
        return (time.perf_counter() - started) / verifications

    async def tessera_full() -> float:
        started = time.perf_counter()
        for _ in range(verifications):
            await verifier.verify(token)
        return (time.perf_counter() - started) / verifications

    async def session_lookup() -> float:
        started = time.perf_counter()
        for _ in range(verifications):
            assert await sessions.load(session_id) is not None
        return (time.perf_counter() - started) / verifications

    signature = _median_rate(raw_signature, rounds)
    claims = await _amedian(tessera_claims, rounds)
    full = await _amedian(tessera_full, rounds)
    session = await _amedian(session_lookup, rounds)
    figures = [
        Figure(f"raw Argon2id verify (m={params.memory_kib},t={params.time_cost})", argon2_cost),
        Figure("HTTP login -> session cookie", login_session),
        Figure("HTTP login -> access + refresh token", login_token),
        Figure(f"raw pyjwt signature check ({alg})", signature),
        Figure("tessera token check, no denylist", claims),
        Figure("tessera token check + Redis denylist", full),
        Figure("session lookup in Redis", session),
    ]
    return {
        "algorithm": alg,
        "rounds": rounds,
        "figures": {f.name: f.seconds_per_op for f in figures},
        "ratios": {
            "login_session_vs_argon2": login_session / argon2_cost,
            "login_token_vs_argon2": login_token / argon2_cost,
            "argon2_share_of_login": argon2_cost / login_session,
            "token_check_overhead_us": (claims - signature) * 1e6,
            "denylist_overhead_us": (full - claims) * 1e6,
        },
        "table": figures,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"\ntessera micro-benchmark (median of {result['rounds']} rounds, loopback)\n")
    print(f"| {'operation':<48} | {'µs per op':>10} |")
    print(f"|{'-' * 50}|{'-' * 12}|")
    for figure in result["table"]:
        print(f"| {figure.name:<48} | {figure.micros:>10.1f} |")
    ratios = result["ratios"]
    print()
    print(f"login (session) / raw Argon2id : {ratios['login_session_vs_argon2']:.2f}x")
    print(f"login (tokens)  / raw Argon2id : {ratios['login_token_vs_argon2']:.2f}x")
    print(f"Argon2id share of a login      : {ratios['argon2_share_of_login']:.0%}")
    print(f"token check beyond raw sig     : {ratios['token_check_overhead_us']:+.1f} µs")
    print(f"denylist check (Redis EXISTS)  : {ratios['denylist_overhead_us']:+.1f} µs")


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
