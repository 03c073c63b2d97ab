"""How long and how hard each part of the benchmark runs (``make bench``, ``make bench-quick``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from bench.procs import cpu_count

__all__ = ["FULL", "QUICK", "BenchConfig", "Cores"]


@dataclass(frozen=True)
class Cores:
    """Which core runs what where pinning makes a comparison fairer.

    The service under test gets a core of its own; the load generator and
    every other process (nginx, the auth service, Redis, PostgreSQL, the
    Python driver) share the other one. ``None`` on a one-core machine:
    nothing is pinned, and the report says so.
    """

    server: int
    load: int

    @classmethod
    def detect(cls) -> Cores | None:
        import os

        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return None
        return cls(server=available[-1], load=available[0])


@dataclass(frozen=True)
class BenchConfig:
    """Durations and sizes; every figure is the median of ``*_rounds`` runs."""

    name: str
    # 1 and 4: validation cost on one replica, and the peers (wrk, pinned).
    rounds: int
    run_seconds: float
    warmup_seconds: float
    connections: int
    # 2a: each row's capacity through nginx with 3 replicas (wrk).
    row_rounds: int
    row_seconds: float
    row_connections: int
    # 2b: each row under a steady load from many addresses, a replica killed / added.
    rows: tuple[int, ...]
    users: int
    offered_rate: float
    event_run_seconds: float
    # 3: logins and refreshes vs raw Argon2 (the auth service alone on a core).
    login_rounds: int
    login_seconds: float
    login_concurrency: int
    refresh_concurrency: int
    # The micro-benchmark (bench.micro) in its own process.
    micro_rounds: int
    micro_logins: int
    micro_verifications: int
    # py-spy profile of a scenario whose budget was missed.
    profile_seconds: float
    # 5: the shared store fails under the part-2 load (bench.failover).
    failover_rows: tuple[int, ...] = (4, 5)
    failover_seconds: float = 15.0
    failover_stores: tuple[str, ...] = ("single", "sentinel", "cluster")
    replicas: int = 3
    # 6: logins while an attacker floods the auth service (bench.attack); the legitimate
    # users are ``login_concurrency`` many.
    attack_rounds: int = 3
    attack_seconds: float = 5.0
    #: Requests per second of each of the attacker's four streams.
    attack_rate: float = 100.0
    #: Source addresses of each attacker stream, fresh each round.
    attack_addresses: int = 8
    # Multi-core: one replica with 1 and with 2 workers (bench.scaling, wrk, unpinned).
    scaling_rounds: int = 5
    scaling_seconds: float = 5.0
    scaling_connections: int = 32
    # 8: what a session, a login and a revocation leave in Redis and PostgreSQL
    # (bench.capacity): this many of each.
    capacity_items: int = 200
    #: Revocations measured (cheap: no hashing; many, since each leaves ~100 bytes).
    capacity_revocations: int = 2000
    #: redis-benchmark's requests of each command (GET, SET).
    capacity_redis_requests: int = 200_000

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_count"] = cpu_count()
        return data

    def scaled(self, **changes: Any) -> BenchConfig:
        return replace(self, **changes)


FULL = BenchConfig(
    name="full",
    rounds=5,
    run_seconds=5.0,
    warmup_seconds=1.0,
    connections=16,
    row_rounds=3,
    row_seconds=5.0,
    row_connections=32,
    rows=(1, 2, 3, 4, 5, 6),
    users=48,
    offered_rate=300.0,
    event_run_seconds=24.0,
    login_rounds=5,
    login_seconds=5.0,
    login_concurrency=4,
    refresh_concurrency=8,
    micro_rounds=5,
    micro_logins=20,
    micro_verifications=2000,
    profile_seconds=5.0,
)

QUICK = BenchConfig(
    name="quick",
    rounds=3,
    run_seconds=1.0,
    warmup_seconds=0.0,
    connections=16,
    row_rounds=1,
    row_seconds=1.0,
    row_connections=32,
    rows=(1, 2, 3, 4, 5, 6),
    users=24,
    offered_rate=200.0,
    event_run_seconds=4.5,
    login_rounds=2,
    login_seconds=1.5,
    login_concurrency=4,
    refresh_concurrency=8,
    micro_rounds=3,
    micro_logins=4,
    micro_verifications=500,
    profile_seconds=1.0,
    failover_rows=(4,),
    failover_seconds=4.5,
    capacity_items=40,
    capacity_revocations=200,
    capacity_redis_requests=20_000,
    attack_rounds=1,
    attack_seconds=3.0,
    scaling_rounds=3,
    scaling_seconds=1.0,
)
