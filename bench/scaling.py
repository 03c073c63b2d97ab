"""Multi-core: what a second worker process (``TESSERA_WORKERS=2``) buys one replica.

Two replicas started for this part, outside nginx, differ only in their
worker count: ``workers-1`` runs one process, ``workers-2`` a supervisor and
two workers sharing its port with ``SO_REUSEPORT`` (the kernel spreads wrk's
connections over them). Both accept what the validation part's ``bench``
replica accepts minus sessions in the replica's memory, which a replica with
several workers refuses (README, Scaling, "Multi-core"): JWTs and shared
sessions. Each is driven by wrk with

* ``GET /api/me`` with one repeated JWT (the verified-token cache hit: the
  cheapest authenticated request, so the replica and not a dependency is what
  is measured), and
* ``GET /healthz`` (the same middleware, no authentication),

interleaved round by round (the order rotates), so drift on this shared
machine hits both replicas alike; the ratio 2 workers / 1 worker is taken
within a round, then the median over rounds.

Nothing is pinned: a pinned replica with two workers on one core would
measure nothing. Its workers, wrk (one thread) and the idle rest of the
stack share every core, so on a two-core machine the second worker competes
with wrk for the second core and the ratio stays below 2; the report shows
how busy each was. CPU microseconds per request count the replica's whole
process tree (supervisor, workers, multiprocessing's resource tracker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.config import BenchConfig, Cores
from bench.credentials import login_tokens, mint_access_tokens, register
from bench.procs import MACHINE, cpu_count, descendants, process_tree
from bench.stack import BenchStack, ExtraProcess
from bench.stats import median, ratio
from bench.validation import header_line
from bench.wrk import WrkResult, WrkRun, run_wrk

__all__ = ["METHODS", "WORKER_COUNTS", "run_scaling"]

#: The validation part's ``bench`` replica's methods minus ``local_session``.
METHODS = "jwt,shared_session"
WORKER_COUNTS = (1, 2)
TOKEN_TTL = 3600
READY_TIMEOUT = 60.0
LISTEN = "0A"


@dataclass(frozen=True)
class Request:
    key: str
    label: str
    path: str
    #: What the answer's X-Auth-Method must say.
    method: str


def _listening_sockets(port: int) -> int:
    """Listening IPv4 sockets on ``port``: one per worker with SO_REUSEPORT."""
    count = 0
    for line in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == LISTEN:
            count += 1
    return count


def _wait_listening(replica: ExtraProcess, workers: int) -> None:
    """Until every worker of ``replica`` listens (the first answers before the others)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while _listening_sockets(replica.port) < workers:
        if replica.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{replica.name}: {workers} workers did not all listen; see {replica.log_path}"
            )
        time.sleep(0.1)


async def _token(stack: BenchStack) -> str:
    """A JWT that outlives the part (the auth service's own issuer, audience and key)."""
    username = "bench-scaling"
    async with aiohttp.ClientSession() as http:
        await register(http, stack.auth_url, username)
        claims = (await login_tokens(http, stack.auth_url, username)).claims()
    minted = await mint_access_tokens(
        stack.auth_environment(),
        subject=str(claims["sub"]),
        session_link=str(claims["sid"]),
        count=1,
        ttl=TOKEN_TTL,
    )
    return minted[0]


async def _check(url: str, headers: dict[str, str], request: Request) -> None:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        await response.read()
        method = response.headers.get("X-Auth-Method")
        if response.status != 200 or method != request.method:
            raise RuntimeError(
                f"{url} answered {response.status} (X-Auth-Method {method}), "
                f"expected 200 ({request.method})"
            )


async def run_scaling(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Measure the replica with 1 and with 2 workers on ``stack``; leaves nothing pinned."""
    if cores is not None:
        stack.unpin()  # an earlier part's pinning would put both workers on one core
    progress(f"starting replicas with {' and '.join(map(str, WORKER_COUNTS))} workers")
    replicas: dict[int, ExtraProcess] = {}
    try:
        for workers in WORKER_COUNTS:
            replica = stack.spawn_replica(
                f"workers-{workers}", METHODS, {"TESSERA_WORKERS": str(workers)}
            )
            replicas[workers] = replica
            await asyncio.to_thread(_wait_listening, replica, workers)
        return await _measure(config, progress, replicas, await _token(stack))
    finally:
        for replica in replicas.values():
            replica.stop()
            stack.extras.remove(replica)


async def _measure(
    config: BenchConfig,
    progress: Callable[[str], None],
    replicas: dict[int, ExtraProcess],
    token: str,
) -> dict[str, Any]:
    requests = [
        Request("jwt_repeated", "JWT, repeated (GET /api/me)", "/api/me", "jwt"),
        Request("baseline", "no authentication (GET /healthz)", "/healthz", "none"),
    ]
    headers = {
        "jwt_repeated": {"Authorization": f"Bearer {token}"},
        "baseline": {},
    }
    for request in requests:
        for replica in replicas.values():
            await _check(replica.url + request.path, headers[request.key], request)
    # The replica's whole tree is its cost; each worker alone shows how the kernel
    # spread the connections.
    groups: dict[str, list[int]] = {}
    worker_pids: dict[int, list[int]] = {}
    for workers, replica in replicas.items():
        groups[f"w{workers}"] = process_tree(replica.pid)
        worker_pids[workers] = [replica.pid] if workers == 1 else _workers_of(replica)
        for pid in worker_pids[workers]:
            groups[f"w{workers}:{pid}"] = [pid]
    scenarios = [(request, workers) for request in requests for workers in replicas]

    def run(request: Request, workers: int, seconds: float) -> WrkResult:
        line = header_line(**headers[request.key]) if headers[request.key] else "-"
        return run_wrk(
            WrkRun(
                url=replicas[workers].url + request.path,
                headers=[line],
                duration=seconds,
                connections=config.scaling_connections,
            ),
            groups,
        )

    if config.warmup_seconds > 0:
        progress("warming up both replicas")
        for request, workers in scenarios:
            run(request, workers, config.warmup_seconds)
    runs: dict[str, dict[int, list[WrkResult]]] = {
        r.key: {n: [] for n in replicas} for r in requests
    }
    ratios: dict[str, list[float]] = {r.key: [] for r in requests}
    for round_number in range(config.scaling_rounds):
        progress(f"round {round_number + 1}/{config.scaling_rounds}: 1 vs 2 workers")
        shift = round_number % len(scenarios)
        for request, workers in scenarios[shift:] + scenarios[:shift]:
            runs[request.key][workers].append(run(request, workers, config.scaling_seconds))
        for request in requests:
            one, two = runs[request.key][1][-1], runs[request.key][2][-1]
            ratios[request.key].append(ratio(two.rate, one.rate))
    return {
        "methods": METHODS,
        "workers": list(WORKER_COUNTS),
        "cpus": cpu_count(),
        "pinned": False,
        "rounds": config.scaling_rounds,
        "seconds": config.scaling_seconds,
        "connections": config.scaling_connections,
        "scenarios": {
            request.key: {
                "label": request.label,
                "ratio": median(ratios[request.key]),
                "ratios": ratios[request.key],
                "by_workers": {
                    str(workers): _summary(runs[request.key][workers], workers, worker_pids)
                    for workers in replicas
                },
            }
            for request in requests
        },
        "runs": {
            key: {str(workers): [run.to_json() for run in done] for workers, done in by.items()}
            for key, by in runs.items()
        },
    }


def _workers_of(replica: ExtraProcess) -> list[int]:
    """The replica's workers: its supervisor's descendants but multiprocessing's resource
    tracker (whose command line names it)."""
    found = []
    for pid in descendants(replica.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            found.append(pid)
    return sorted(found)


def _summary(
    done: list[WrkResult], workers: int, worker_pids: dict[int, list[int]]
) -> dict[str, Any]:
    group = f"w{workers}"
    shares = []
    for run in done:
        per_worker = [run.cpu_seconds.get(f"{group}:{pid}", 0.0) for pid in worker_pids[workers]]
        total = sum(per_worker)
        shares.append(max(per_worker) / total if total else float("nan"))
    return {
        "runs": len(done),
        "rate": median([run.rate for run in done]),
        "cpu_us": median([run.cpu_us_per_request(group) for run in done]),
        "service_cores": median([run.utilisation(group) for run in done]),
        "wrk_cores": median([run.wrk_utilisation for run in done]),
        "machine_cores": median([run.utilisation(MACHINE) for run in done]),
        "p99_ms": median([run.latency_us["p99"] / 1000 for run in done]),
        "failures": sum(run.failures for run in done),
        "busiest_worker_share": median(shares),
    }
