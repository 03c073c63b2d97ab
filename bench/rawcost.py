"""Raw costs the service figures are compared with, measured alone in their own process.

    python -m bench.rawcost argon2 --memory-kib 19456 --time-cost 2 --parallelism 1 --seconds 3
    python -m bench.rawcost jwt --jwks-url http://127.0.0.1:P/.well-known/jwks.json --token T

``argon2``: Argon2id verifications per CPU-second in one thread, with the given
parameters (what the auth service does once per login). ``jwt``: pyjwt's
signature check alone (no claim checks), in CPU microseconds, on the key the
token names. The benchmark runs both under ``taskset`` on the core the
service under test had, and reads the JSON line they print
(:func:`measure_alone`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import argon2
import jwt

from bench.config import Cores
from bench.procs import bench_environment, pinned_command

__all__ = ["argon2_rate", "jwt_signature_us", "main", "measure_alone"]

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


def _chunked(operation: Callable[[], object], seconds: float, chunks: int = 5) -> list[float]:
    """CPU seconds per operation in each of ``chunks`` slices of about ``seconds`` in all.

    CPU time of this thread, not wall time: on a shared machine another
    process may take the core for a while, and that is not the operation's
    cost. The services' costs are CPU times too (from /proc), so the two compare.
    """
    per_chunk = seconds / chunks
    results: list[float] = []
    for _ in range(chunks):
        count = 0
        wall = time.perf_counter()
        started = time.thread_time()
        while True:
            operation()
            count += 1
            if time.perf_counter() - wall >= per_chunk:
                break
        results.append((time.thread_time() - started) / count)
    return results


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
    args = parser.parse_args(argv)
    if args.command == "argon2":
        rate = argon2_rate(args.memory_kib, args.time_cost, args.parallelism, args.seconds)
        print(json.dumps({"argon2_per_second": rate}))
    else:
        print(
            json.dumps({"signature_us": jwt_signature_us(args.jwks_url, args.token, args.seconds)})
        )


def measure_alone(args: Sequence[str], figure: str, cores: Cores | None, timeout: float) -> float:
    """``python -m bench.rawcost ARGS`` in a process of its own on the server core (anywhere
    without ``cores``); the ``figure`` of the JSON line it prints."""
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
    return float(json.loads(result.stdout.strip().splitlines()[-1])[figure])


if __name__ == "__main__":
    main()
