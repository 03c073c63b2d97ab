"""Raw costs the service figures are compared with, measured alone in their own process.

    python -m bench.rawcost argon2 --memory-kib 19456 --time-cost 2 --parallelism 1 --seconds 3
    python -m bench.rawcost jwt --jwks-url http://127.0.0.1:P/.well-known/jwks.json --token T
    python -m bench.rawcost roundtrips --redis-url redis://127.0.0.1:P/0 --database-url URL

``argon2``: Argon2id verifications per CPU-second in one thread, with the given
parameters (what the auth service does once per login). ``jwt``: pyjwt's
signature check alone (no claim checks), in CPU microseconds, on the key the
token names. ``roundtrips``: the CPU microseconds of one round trip to Redis and to
PostgreSQL on a uvloop event loop, one after the other: over a bare asyncio
stream (a PING, the floor), through redis-py as the services make it
(``instrumented_redis``), through asyncpg on one connection, through the
services' pool (``create_pool``) and through asyncpg's own pool, which resets
every connection it takes back with one more round trip. The benchmark runs
them under ``taskset`` on the core the service under test had, and reads the
JSON line they print (:func:`measure_alone`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import argon2
import asyncpg
import jwt
import uvloop
from redis.asyncio.connection import parse_url

from bench.config import Cores
from bench.procs import bench_environment, pinned_command
from tessera_platform.pg_migrations import create_pool
from tessera_verify.dependency_metrics import instrumented_redis

__all__ = [
    "argon2_rate",
    "jwt_signature_us",
    "main",
    "measure_alone",
    "measured_alone",
    "round_trip_us",
]

PASSWORD = "correct horse battery staple"  # the cost does not depend on it
_SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}


class _Slices:
    """CPU seconds per operation in each of ``chunks`` slices of about ``seconds`` in all.

    CPU time of this thread, not wall time: on a shared machine another
    process may take the core for a while, and that is not the operation's
    cost. The services' costs are CPU times too (from /proc), so the two compare.
    Iterate over it, and run the operation until :meth:`counted` says the slice
    is over; ``results`` then holds one figure per slice.
    """

    def __init__(self, seconds: float, chunks: int = 5) -> None:
        self.per_chunk = seconds / chunks
        self.chunks = chunks
        self.results: list[float] = []
        self._count = 0
        self._wall = 0.0

    def __iter__(self) -> Iterator[_Slices]:
        for _ in range(self.chunks):
            self._count = 0
            self._wall = time.perf_counter()
            started = time.thread_time()
            yield self
            self.results.append((time.thread_time() - started) / self._count)

    def counted(self) -> bool:
        """One more operation done: whether this slice is over."""
        self._count += 1
        return time.perf_counter() - self._wall >= self.per_chunk


def _chunked(operation: Callable[[], object], seconds: float, chunks: int = 5) -> list[float]:
    """:class:`_Slices` of a plain call."""
    slices = _Slices(seconds, chunks)
    for current in slices:
        while True:
            operation()
            if current.counted():
                break
    return slices.results


async def _chunked_async(
    operation: Callable[[], Awaitable[object]], seconds: float, chunks: int = 5
) -> list[float]:
    """:class:`_Slices` of an awaitable: CPU of this thread (the event loop's), so the
    wait for the answer is not counted but the loop's wake-up is."""
    slices = _Slices(seconds, chunks)
    for current in slices:
        while True:
            await operation()
            if current.counted():
                break
    return slices.results


def _loopback(url: str) -> str:
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
        raise ValueError(f"round trips to loopback only, not {url!r}")
    return url


async def _round_trips(redis_url: str, database_url: str, seconds: float) -> dict[str, float]:
    per = seconds / 5
    _loopback(database_url)
    options = parse_url(_loopback(redis_url))
    reader, writer = await asyncio.open_connection(options["host"], options.get("port", 6379))
    client = instrumented_redis(redis_url, timeout=5.0, latency=None)
    connection = await asyncpg.connect(database_url)
    pool = await create_pool(database_url, max_size=1, timeout=5.0)
    # asyncpg's own pool, as the services' was before it skipped the reset round trip.
    resetting = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        if options.get("password"):
            writer.write(
                f"AUTH {options.get('username') or 'default'} {options['password']}\r\n".encode()
            )
            await reader.readline()

        async def bare() -> None:
            writer.write(b"PING\r\n")
            await reader.readline()

        async def redis_get() -> None:
            await client.get("bench:round-trip")

        async def postgres_direct() -> None:
            await connection.fetchval("SELECT $1::int", 1)

        async def postgres_pool() -> None:
            await pool.fetchval("SELECT $1::int", 1)

        async def postgres_pool_reset() -> None:
            await resetting.fetchval("SELECT $1::int", 1)

        figures: dict[str, float] = {}
        for name, operation in (
            ("bare_stream_us", bare),
            ("redis_us", redis_get),
            ("postgres_direct_us", postgres_direct),
            ("postgres_pool_us", postgres_pool),
            ("postgres_pool_reset_us", postgres_pool_reset),
        ):
            await _chunked_async(operation, min(0.2, per))  # warm-up
            figures[name] = statistics.median(await _chunked_async(operation, per)) * 1e6
        return figures
    finally:
        writer.close()
        await client.aclose()
        await connection.close()
        await pool.close()
        await resetting.close()


def round_trip_us(redis_url: str, database_url: str, seconds: float) -> dict[str, float]:
    """Median CPU µs of one round trip each way :mod:`bench.rawcost` measures (on uvloop,
    the services' event loop)."""
    return uvloop.run(_round_trips(redis_url, database_url, seconds))


def argon2_rate(memory_kib: int, time_cost: int, parallelism: int, seconds: float) -> float:
    """Median Argon2id verifications per CPU-second, one thread."""
    hasher = argon2.PasswordHasher(
        time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
    )
    encoded = hasher.hash(PASSWORD)
    per_op = _chunked(lambda: hasher.verify(encoded, PASSWORD), seconds)
    return 1.0 / statistics.median(per_op)


def _jwks_key(jwks_url: str, token: str) -> jwt.PyJWK:
    if not jwks_url.startswith(("http://127.", "http://localhost")):
        raise ValueError("JWKS from loopback only")
    with urllib.request.urlopen(jwks_url, timeout=5) as response:  # noqa: S310 - checked above
        jwks = json.load(response)
    kid = jwt.get_unverified_header(token).get("kid")
    for item in jwks["keys"]:
        if item.get("kid") == kid:
            return jwt.PyJWK(item)
    raise KeyError(f"no key {kid!r} in {jwks_url}")


def jwt_signature_us(jwks_url: str, token: str, seconds: float) -> float:
    """Median CPU microseconds of one pyjwt signature check of ``token`` (no claim checks)."""
    key = _jwks_key(jwks_url, token)
    algorithms = [key.algorithm_name]
    per_op = _chunked(
        lambda: jwt.decode(token, key, algorithms=algorithms, options=_SIGNATURE_ONLY), seconds
    )
    return statistics.median(per_op) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rawcost", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser("argon2")
    hashing.add_argument("--memory-kib", type=int, default=19 * 1024)
    hashing.add_argument("--time-cost", type=int, default=2)
    hashing.add_argument("--parallelism", type=int, default=1)
    hashing.add_argument("--seconds", type=float, default=3.0)
    signature = commands.add_parser("jwt")
    signature.add_argument("--jwks-url", required=True)
    signature.add_argument("--token", required=True)
    signature.add_argument("--seconds", type=float, default=2.0)
    trips = commands.add_parser("roundtrips")
    trips.add_argument("--redis-url", required=True)
    trips.add_argument("--database-url", required=True)
    trips.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.command == "argon2":
        rate = argon2_rate(args.memory_kib, args.time_cost, args.parallelism, args.seconds)
        print(json.dumps({"argon2_per_second": rate}))
    elif args.command == "roundtrips":
        print(json.dumps(round_trip_us(args.redis_url, args.database_url, args.seconds)))
    else:
        print(
            json.dumps({"signature_us": jwt_signature_us(args.jwks_url, args.token, args.seconds)})
        )


def measure_alone(args: Sequence[str], figure: str, cores: Cores | None, timeout: float) -> float:
    """``python -m bench.rawcost ARGS`` in a process of its own on the server core (anywhere
    without ``cores``); the ``figure`` of the JSON line it prints."""
    return float(measured_alone(args, cores, timeout)[figure])


def measured_alone(args: Sequence[str], cores: Cores | None, timeout: float) -> dict[str, Any]:
    """The JSON line ``python -m bench.rawcost ARGS`` prints, run as :func:`measure_alone`."""
    command = pinned_command(
        [sys.executable, "-m", "bench.rawcost", *args], None if cores is None else [cores.server]
    )
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=bench_environment(),
        check=True,
        timeout=timeout,
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    main()
