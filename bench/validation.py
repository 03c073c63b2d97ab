"""Parts 1 and 4: what validating a credential costs one replica, next to no authentication
and next to what a Python user would otherwise pick.

One replica started for the benchmark (``bench``) accepts JWTs, shared
sessions and sessions in its own memory, so every credential is measured on
the same process, the same routes and the same middleware:

* *baseline*: ``GET /healthz``, which runs the same middleware chain (request
  ID, metrics, the stamp, errors, tessera's authentication middleware, which
  skips public paths) and answers a small JSON object without authenticating;
* ``GET /api/me`` with a repeated JWT (verified-token cache hit), with a new JWT
  on every request (more distinct tokens than the cache holds, sent in turn,
  so the LRU cache misses every time: checked on the replica's /metrics), with
  a shared Redis session (cache fed by the revocation feed) and with a
  session in the replica's memory;
* forward auth through nginx (TLS, ``auth_request`` to the auth service, then
  the stack's replica r1), and nginx's own ``/nginx-health`` as the ceiling of
  wrk + TLS + nginx on this machine; and the same forward auth through a second
  nginx, rendered alike but with its 1 s cache of the auth service's answers on
  (``TESSERA_FORWARD_AUTH_CACHE_SECONDS=1``, off by default): the alternative with
  nginx's own tools, measured beside the default;
* the same replica with its hot modules compiled to C by mypyc (:mod:`bench.compiled`):
  its baseline, repeated JWT and sessions, each against its own baseline;
* the peers (:mod:`bench.peers`): pyjwt ``jwt.decode`` per request and
  aiohttp-session's Redis storage, as their own processes; and aiohttp alone
  (``GET /healthz`` without middleware), the floor under the baseline;
* the floor: ``GET /healthz`` on three more replicas like the baseline's that serve
  nothing else (the baseline's replica also holds every scenario's tokens and
  sessions): two on the services' default event loop, started alike (what they
  differ by is the spread between two processes on this machine; the floor is
  their mean), and one on the other (``TESSERA_EVENT_LOOP``), next to bare aiohttp
  on each loop: what tessera adds to aiohttp, and which loop is cheaper, each
  judged fresh against fresh.

The process under test runs alone on the server core; wrk (one thread) and
everything else share the other core. Scenarios are interleaved round by
round (the order rotates), and ratios are taken within a round, then the
median over rounds: the machine is noisy, and drift hits both sides of a
ratio alike.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import budget, compiled
from bench.budget import OTHER_LOOP
from bench.config import BenchConfig, Cores
from bench.credentials import (
    LOCAL_SESSION_COOKIE,
    SESSION_COOKIE,
    auth_settings,
    login_local,
    login_session,
    login_tokens,
    mint_access_tokens,
    register,
)
from bench.peers import PEER_SESSION_COOKIE
from bench.procs import MACHINE, bench_environment
from bench.profiling import Profile, start_recording, summarise
from bench.rawcost import measure_alone
from bench.stack import BenchStack, ExtraProcess
from bench.stats import median
from bench.wrk import WrkResult, WrkRun, run_wrk
from tessera_platform.process_settings import DEFAULT_EVENT_LOOP
from tessera_stack import free_port
from tessera_stack.nginx_conf import FORWARD_AUTH_CACHE_SECONDS
from tessera_stack.processes import StackError
from tessera_stack.servers.nginx_server import NginxServer

__all__ = ["Scenario", "header_line", "run_validation"]

#: The replicas' verified-token cache size (VerifyConfig's default).
TOKEN_CACHE_ENTRIES = 10_000
MINTED_TOKEN_TTL = 3600
ROUTE_COOKIE = "tessera_route"
#: The second nginx, the one with the forward-auth cache on (a CPU group of its own).
CACHED_FORWARD_NGINX = "nginx-cached"
# The auth service's count of forward-auth checks (tessera_http_requests_total).
# Its labels in whatever order the exposition writes them (today: method, route, status).
_FORWARD_METRIC = re.compile(
    r'^tessera_http_requests_total\{(?=[^}]*\broute="/auth/forward")[^}]*\}'
    r" (?P<value>[0-9.e+]+)$"
)
#: The replica whose hot modules mypyc compiled (bench/compiled.py).
COMPILED_REPLICA = "bench-compiled"
_METRIC = re.compile(
    r'^tessera_cache_requests_total\{cache="(?P<cache>[^"]+)",result="(?P<result>[^"]+)"\}'
    r" (?P<value>[0-9.e+]+)$"
)


def header_line(**headers: str) -> str:
    """One wrk request line (see lua/requests.lua): headers joined by TABs."""
    return "\t".join(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    url: str
    headers: Sequence[str]
    #: The CpuMeter group of the process that serves the request.
    server: str
    #: What the answer's X-Auth-Method must say (``None``: not checked).
    expect_method: str | None
    kind: str  # "tessera", "peer", "ceiling" or "compiled" (the mypyc-built replica)
    #: Processes whose CPU time makes up the request's cost (forward auth: several).
    cost_groups: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


def _metrics_lines(port: int) -> list[str]:
    """A service's /metrics on loopback ``port``, line by line."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode().splitlines()
    finally:
        connection.close()


def _cache_counts(port: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in _metrics_lines(port):
        if match := _METRIC.match(line):
            counts[f"{match['cache']}:{match['result']}"] = float(match["value"])
    return counts


async def _check(http: aiohttp.ClientSession, scenario: Scenario) -> None:
    """One request as the scenario sends it: it must be answered, and as expected."""
    first = scenario.headers[0]
    headers = {}
    if first != "-":
        for field_text in first.split("\t"):
            name, _, value = field_text.partition(": ")
            headers[name] = value
    tls = scenario.ssl_context if scenario.ssl_context is not None else True
    async with http.get(scenario.url, headers=headers, ssl=tls) as response:
        await response.read()
        method = response.headers.get("X-Auth-Method")
        if response.status != 200 or (
            scenario.expect_method is not None and method != scenario.expect_method
        ):
            raise RuntimeError(
                f"{scenario.label}: {scenario.url} answered {response.status} "
                f"(X-Auth-Method {method}), expected 200 ({scenario.expect_method})"
            )


def _raw_signature_us(jwks_url: str, token: str, seconds: float, cores: Cores | None) -> float:
    args = ["jwt", "--jwks-url", jwks_url, "--token", token, "--seconds", str(seconds)]
    return measure_alone(args, "signature_us", cores, timeout=120)


def cost_us(scenario: Scenario, run: WrkResult) -> float:
    """CPU microseconds per request in every process that served it."""
    return sum(
        run.cpu_us_per_request(group) for group in scenario.cost_groups or (scenario.server,)
    )


def _summary(
    scenario: Scenario,
    runs: list[WrkResult],
    ratios: list[float],
    cost_ratios: list[float],
    hits: list[float],
) -> dict[str, Any]:
    cost_groups = scenario.cost_groups or (scenario.server,)
    return {
        "label": scenario.label,
        "kind": scenario.kind,
        "url": scenario.url,
        "server": scenario.server,
        "runs": len(runs),
        "rate": median([run.rate for run in runs]),
        "ratio_to_baseline": median(ratios),
        "cost_us": median([cost_us(scenario, run) for run in runs]),
        "cost_ratio_to_baseline": median(cost_ratios),
        "p50_ms": median([run.latency_us["p50"] / 1000 for run in runs]),
        "p90_ms": median([run.latency_us["p90"] / 1000 for run in runs]),
        "p99_ms": median([run.latency_us["p99"] / 1000 for run in runs]),
        "server_cpu_us": median([run.cpu_us_per_request(scenario.server) for run in runs]),
        "cost_cpu_us": {
            group: median([run.cpu_us_per_request(group) for run in runs]) for group in cost_groups
        },
        "server_utilisation": median([run.utilisation(scenario.server) for run in runs]),
        "wrk_utilisation": median([run.wrk_utilisation for run in runs]),
        "background_cores": median([_background(run) for run in runs]),
        "failures": sum(run.failures for run in runs),
        "cache_hit_ratio": median(hits) if hits else None,
    }


def _background(run: WrkResult) -> float:
    """Cores' worth of CPU used by processes that are not ours during the run."""
    ours = sum(value for name, value in run.cpu_seconds.items() if name != MACHINE)
    machine = run.cpu_seconds.get(MACHINE, 0.0)
    return max(0.0, machine - ours - run.wrk_cpu_seconds) / run.seconds if run.seconds else 0.0


def _spawn_peer(stack: BenchStack, kind: str, *args: str, name: str | None = None) -> ExtraProcess:
    """``python -m bench.peers KIND ... ARGS`` (:mod:`bench.peers`) on a free port, as
    ``name`` (default ``peer-KIND``)."""
    identity = f"peer{kind}{secrets.token_hex(3)}"
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bench.peers",
        kind,
        "--port",
        str(port),
        "--identity",
        identity,
        *args,
    ]
    return stack.spawn(name or f"peer-{kind}", identity, port, command, bench_environment())


async def run_validation(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    out_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Measure parts 1 and 4 on ``stack`` (row 6, one replica); leaves nothing pinned."""
    settings = auth_settings(stack.auth_environment())
    jwks_url = f"{stack.auth_url}/.well-known/jwks.json"
    progress("starting the all-methods replica and the peers")
    methods = "jwt,shared_session,local_session"
    replica = stack.spawn_replica("bench", methods)
    peer_jwt = _spawn_peer(
        stack,
        "jwt",
        "--jwks-url",
        jwks_url,
        "--issuer",
        settings.issuer,
        "--audience",
        settings.audience,
    )
    peer_session = _spawn_peer(stack, "session", "--redis-url", stack.settings.redis_url)
    floors = Floors(
        # The same replica as the baseline's, serving nothing but the floor's requests:
        # the baseline's replica also holds every other scenario's tokens and sessions.
        stack.spawn_replica("bench-floor", methods),
        # And its twin, started alike: the spread between two processes.
        stack.spawn_replica("bench-floor-twin", methods),
        # The same again but for its event loop.
        stack.spawn_replica("bench-other-loop", methods, {"TESSERA_EVENT_LOOP": OTHER_LOOP}),
        _spawn_peer(stack, "bare", "--loop", DEFAULT_EVENT_LOOP),
        _spawn_peer(stack, "bare", "--loop", OTHER_LOOP, name="peer-bare-other-loop"),
        _spawn_peer(stack, "bare", "--middleware", "empty", name="peer-bare-empty"),
        _spawn_peer(stack, "bare", "--middleware", "service", name="peer-bare-service"),
    )
    alternatives = None
    try:
        alternatives = _start_alternatives(stack, methods, progress)
        return await _measure(
            stack,
            config,
            cores,
            out_dir,
            progress,
            replica,
            peer_jwt,
            peer_session,
            floors,
            alternatives,
            jwks_url,
        )
    finally:
        if cores is not None:
            stack.unpin()
        stack.stop_side_nginx(CACHED_FORWARD_NGINX)
        compiled_replica = () if alternatives is None else alternatives.processes
        for extra in (*compiled_replica, *floors.processes, peer_session, peer_jwt, replica):
            extra.stop()
            stack.extras.remove(extra)


@dataclass(frozen=True)
class Alternatives:
    """What the missed lines are measured against outside tessera's default: forward auth
    through a second nginx with its cache on, and the replica with its hot modules
    compiled to C by mypyc. Each is None when it could not be had (the problem says why:
    the rest of the bench goes on without it)."""

    cached_forward: NginxServer | None
    cached_forward_problem: str
    build: compiled.Build
    compiled: ExtraProcess | None
    compiled_problem: str

    @property
    def processes(self) -> tuple[ExtraProcess, ...]:
        return () if self.compiled is None else (self.compiled,)


def _start_alternatives(
    stack: BenchStack, methods: str, progress: Callable[[str], None]
) -> Alternatives:
    cached_forward, cached_problem = None, ""
    if stack.state().policy != "forward_auth":
        cached_problem = "the stack does not run forward auth"
    else:
        progress("starting a second nginx with the forward-auth cache on")
        try:
            cached_forward = stack.start_side_nginx(
                CACHED_FORWARD_NGINX, forward_auth_cache_seconds=FORWARD_AUTH_CACHE_SECONDS
            )
        except (RuntimeError, StackError) as exc:
            cached_problem = f"the second nginx did not start: {exc}"
            progress(cached_problem)
    progress("compiling the replica's hot modules with mypyc")
    build = compiled.build(stack.layout.root / "compiled")
    if build.path is None:
        progress(f"no compiled replica: {build.problem}")
        return Alternatives(cached_forward, cached_problem, build, None, build.problem)
    changes = {
        "PYTHONPATH": os.pathsep.join(
            part for part in (str(build.path), os.environ.get("PYTHONPATH", "")) if part
        ),
        # No working directory ahead of the build on the path (``python -m`` puts it
        # first): a checkout's interpreted packages there would win over the compiled.
        "PYTHONSAFEPATH": "1",
    }
    try:
        replica = stack.spawn_replica(COMPILED_REPLICA, methods, changes)
    except RuntimeError as exc:
        problem = f"the compiled replica did not start: {exc}"
        progress(problem)
        return Alternatives(cached_forward, cached_problem, build, None, problem)
    if not compiled.loaded_from(replica.pid, build.path):
        replica.stop()
        stack.extras.remove(replica)
        problem = f"the compiled replica did not run {build.path}'s shared library"
        progress(problem)
        return Alternatives(cached_forward, cached_problem, build, None, problem)
    return Alternatives(cached_forward, cached_problem, build, replica, "")


def _alternative_scenarios(
    alternatives: Alternatives,
    *,
    forward_cookie: str,
    forward_replica: str,
    tls: ssl.SSLContext,
    jwt_header: str,
    first_seen: Sequence[str],
    shared_cookie: str,
    local_cookie: str | None,
) -> list[Scenario]:
    """Forward auth through the nginx with its cache on; the compiled replica's baseline
    and its repeated JWT and sessions, the same requests as the interpreted replica's."""
    scenarios = []
    if (cached := alternatives.cached_forward) is not None:
        scenarios.append(
            Scenario(
                "forward_auth_cached",
                f"forward auth via nginx, its {FORWARD_AUTH_CACHE_SECONDS} s cache on (opt-in; "
                "one credential repeated)",
                f"{cached.url}/api/me",
                [header_line(Cookie=forward_cookie)],
                forward_replica,
                "forward",
                "tessera",
                cost_groups=(forward_replica, "auth", CACHED_FORWARD_NGINX, "redis"),
                ssl_context=tls,
            )
        )
    if (replica := alternatives.compiled) is None or local_cookie is None:
        return scenarios
    route = f"{ROUTE_COOKIE}={replica.identity}"
    label = "compiled (mypyc)"
    return [
        *scenarios,
        Scenario(
            "compiled_baseline",
            f"{label}: no authentication (GET /healthz)",
            f"{replica.url}/healthz",
            [header_line(Cookie=route)],
            COMPILED_REPLICA,
            None,
            "compiled",
        ),
        Scenario(
            "compiled_jwt_repeated",
            f"{label}: JWT, repeated",
            f"{replica.url}/api/me",
            [header_line(Authorization=jwt_header, Cookie=route)],
            COMPILED_REPLICA,
            "jwt",
            "compiled",
        ),
        Scenario(
            "compiled_jwt_first_seen",
            f"{label}: JWT, first seen",
            f"{replica.url}/api/me",
            [header_line(Authorization=header, Cookie=route) for header in first_seen],
            COMPILED_REPLICA,
            "jwt",
            "compiled",
        ),
        Scenario(
            "compiled_shared_session",
            f"{label}: shared Redis session",
            f"{replica.url}/api/me",
            [header_line(Cookie=f"{shared_cookie}; {route}")],
            COMPILED_REPLICA,
            "shared_session",
            "compiled",
            cost_groups=(COMPILED_REPLICA, "redis"),
        ),
        Scenario(
            "compiled_local_session",
            f"{label}: session in the replica's memory",
            f"{replica.url}/api/me",
            [header_line(Cookie=f"{local_cookie}; {route}")],
            COMPILED_REPLICA,
            "local_session",
            "compiled",
        ),
    ]


@dataclass(frozen=True)
class Floors:
    """What the baseline is measured against: a replica like it that serves only the
    floor's requests, on each event loop, aiohttp alone on each loop, and the rungs
    between aiohttp alone and the replica (behind an empty middleware, behind tessera's
    service middleware)."""

    baseline_fresh: ExtraProcess
    #: A second replica started exactly like ``baseline_fresh``: what two processes
    #: started alike differ by on this machine, measured in the same rounds.
    baseline_twin: ExtraProcess
    baseline_other_loop: ExtraProcess
    bare: ExtraProcess
    bare_other_loop: ExtraProcess
    bare_empty: ExtraProcess
    bare_service: ExtraProcess

    @property
    def processes(self) -> tuple[ExtraProcess, ...]:
        return (
            self.baseline_fresh,
            self.baseline_twin,
            self.baseline_other_loop,
            self.bare,
            self.bare_other_loop,
            self.bare_empty,
            self.bare_service,
        )


async def _measure(
    stack: BenchStack,
    config: BenchConfig,
    cores: Cores | None,
    out_dir: Path,
    progress: Callable[[str], None],
    replica: ExtraProcess,
    peer_jwt: ExtraProcess,
    peer_session: ExtraProcess,
    floors: Floors,
    alternatives: Alternatives,
    jwks_url: str,
) -> dict[str, Any]:
    auth_env = stack.auth_environment()
    username = f"bench-v-{secrets.token_hex(3)}"
    progress("logging in (shared session, tokens, a session in the replica's memory)")
    async with aiohttp.ClientSession() as http:
        await register(http, stack.auth_url, username)
        shared = await login_session(http, stack.auth_url, username)
        pair = await login_tokens(http, stack.auth_url, username)
        local = await login_local(http, replica.url, username)
        compiled_local = (
            None
            if alternatives.compiled is None
            else await login_local(http, alternatives.compiled.url, username)
        )
        claims = pair.claims()
        async with http.post(
            f"{peer_session.url}/login", json={"user_id": claims["sub"], "username": username}
        ) as response:
            peer_cookie = response.cookies[PEER_SESSION_COOKIE].value
    first_seen_count = int(TOKEN_CACHE_ENTRIES * 1.25)
    progress(f"minting {first_seen_count} distinct access tokens (first-seen JWTs)")
    minted = await mint_access_tokens(
        auth_env,
        subject=str(claims["sub"]),
        session_link=str(claims["sid"]),
        count=first_seen_count + 1,
        ttl=MINTED_TOKEN_TTL,
    )
    repeated, first_seen = minted[0], minted[1:]
    route = f"{ROUTE_COOKIE}={replica.identity}"
    r1 = stack.replicas()[0]
    tls = ssl.create_default_context(cafile=str(stack.ca_cert))
    scenarios = [
        Scenario(
            "baseline",
            "no authentication (GET /healthz)",
            f"{replica.url}/healthz",
            [header_line(Cookie=route)],
            "bench",
            None,
            "tessera",
        ),
        Scenario(
            "baseline_fresh",
            f"no authentication, a replica serving only this (on {DEFAULT_EVENT_LOOP})",
            f"{floors.baseline_fresh.url}/healthz",
            [header_line(Cookie=f"{ROUTE_COOKIE}={floors.baseline_fresh.identity}")],
            "bench-floor",
            None,
            "tessera",
        ),
        Scenario(
            "baseline_twin",
            "no authentication, a second replica started alike (the spread between processes)",
            f"{floors.baseline_twin.url}/healthz",
            [header_line(Cookie=f"{ROUTE_COOKIE}={floors.baseline_twin.identity}")],
            "bench-floor-twin",
            None,
            "tessera",
        ),
        Scenario(
            "baseline_other_loop",
            f"no authentication, the same on {OTHER_LOOP}",
            f"{floors.baseline_other_loop.url}/healthz",
            [header_line(Cookie=f"{ROUTE_COOKIE}={floors.baseline_other_loop.identity}")],
            "bench-other-loop",
            None,
            "tessera",
        ),
        Scenario(
            "peer_bare",
            f"peer: aiohttp alone (GET /healthz, no middleware), on {DEFAULT_EVENT_LOOP}",
            f"{floors.bare.url}/healthz",
            ["-"],
            "peer-bare",
            None,
            "peer",
        ),
        Scenario(
            "peer_bare_other_loop",
            f"peer: aiohttp alone, on {OTHER_LOOP}",
            f"{floors.bare_other_loop.url}/healthz",
            ["-"],
            "peer-bare-other-loop",
            None,
            "peer",
        ),
        Scenario(
            "peer_bare_empty",
            f"peer: aiohttp behind one empty middleware, on {DEFAULT_EVENT_LOOP}",
            f"{floors.bare_empty.url}/healthz",
            ["-"],
            "peer-bare-empty",
            None,
            "peer",
        ),
        Scenario(
            "peer_bare_service",
            f"peer: aiohttp behind tessera's service middleware, on {DEFAULT_EVENT_LOOP}",
            f"{floors.bare_service.url}/healthz",
            ["-"],
            "peer-bare-service",
            None,
            "peer",
        ),
        Scenario(
            "jwt_repeated",
            "JWT, repeated (verified-token cache)",
            f"{replica.url}/api/me",
            [header_line(Authorization=f"Bearer {repeated}", Cookie=route)],
            "bench",
            "jwt",
            "tessera",
        ),
        Scenario(
            "jwt_first_seen",
            f"JWT, first seen ({first_seen_count} distinct, LRU misses)",
            f"{replica.url}/api/me",
            [header_line(Authorization=f"Bearer {token}", Cookie=route) for token in first_seen],
            "bench",
            "jwt",
            "tessera",
        ),
        Scenario(
            "shared_session",
            "shared Redis session (feed-invalidated cache)",
            f"{replica.url}/api/me",
            [header_line(Cookie=f"{SESSION_COOKIE}={shared}; {route}")],
            "bench",
            "shared_session",
            "tessera",
            cost_groups=("bench", "redis"),
        ),
        Scenario(
            "local_session",
            "session in the replica's memory",
            f"{replica.url}/api/me",
            [header_line(Cookie=f"{LOCAL_SESSION_COOKIE}={local}; {route}")],
            "bench",
            "local_session",
            "tessera",
        ),
        Scenario(
            "forward_auth",
            "forward auth via nginx (TLS, auth_request)",
            f"{stack.base_url}/api/me",
            [header_line(Cookie=f"{SESSION_COOKIE}={shared}; {ROUTE_COOKIE}={r1.id}")],
            r1.id,
            "forward",
            "tessera",
            cost_groups=(r1.id, "auth", "nginx", "redis"),
            ssl_context=tls,
        ),
        Scenario(
            "nginx_ceiling",
            "nginx alone (TLS, GET /nginx-health)",
            f"{stack.base_url}/nginx-health",
            ["-"],
            "nginx",
            None,
            "ceiling",
            ssl_context=tls,
        ),
        Scenario(
            "peer_jwt",
            "peer: pyjwt jwt.decode per request",
            f"{peer_jwt.url}/api/me",
            [header_line(Authorization=f"Bearer {repeated}")],
            "peer-jwt",
            None,
            "peer",
        ),
        Scenario(
            "peer_session",
            "peer: aiohttp-session + RedisStorage",
            f"{peer_session.url}/api/me",
            [header_line(Cookie=f"{PEER_SESSION_COOKIE}={peer_cookie}")],
            "peer-session",
            None,
            "peer",
            cost_groups=("peer-session", "redis"),
        ),
    ]
    scenarios += _alternative_scenarios(
        alternatives,
        forward_cookie=f"{SESSION_COOKIE}={shared}; {ROUTE_COOKIE}={r1.id}",
        forward_replica=r1.id,
        tls=tls,
        jwt_header=f"Bearer {repeated}",
        first_seen=[f"Bearer {token}" for token in first_seen],
        shared_cookie=f"{SESSION_COOKIE}={shared}",
        local_cookie=None if compiled_local is None else f"{LOCAL_SESSION_COOKIE}={compiled_local}",
    )
    async with aiohttp.ClientSession() as http:
        for scenario in scenarios:
            await _check(http, scenario)
        # A token from /auth/login works the same as the minted ones.
        async with http.get(
            f"{replica.url}/api/me", headers={"Authorization": f"Bearer {pair.access_token}"}
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"a logged-in token was refused: {response.status}")

    if cores is not None:
        r1_pid = stack.replica_pid(r1.id)
        stack.pin_for_measurement(
            cores,
            [
                replica.pid,
                peer_jwt.pid,
                peer_session.pid,
                *(extra.pid for extra in floors.processes),
                *([] if alternatives.compiled is None else [alternatives.compiled.pid]),
                *([] if r1_pid is None else [r1_pid]),
            ],
        )
    load_cores = None if cores is None else [cores.load]
    groups = stack.service_pids()

    # Where each scenario's request list goes on from: a run of first-seen tokens
    # starts after the last token the previous run sent, so no token comes back
    # while the cache could still hold it.
    sent: dict[str, int] = {}

    def run(scenario: Scenario, seconds: float) -> WrkResult:
        offset = sent.get(scenario.key, 0) % len(scenario.headers)
        result = run_wrk(
            WrkRun(
                url=scenario.url,
                headers=[*scenario.headers[offset:], *scenario.headers[:offset]],
                duration=seconds,
                connections=config.connections,
                cores=load_cores,
            ),
            groups,
        )
        sent[scenario.key] = offset + result.requests
        return result

    if config.warmup_seconds > 0:
        progress("warming up every scenario")
        for scenario in scenarios:
            run(scenario, config.warmup_seconds)

    compiled_port = None if alternatives.compiled is None else alternatives.compiled.port
    auth_port = stack.state().port

    def counts(scenario: Scenario) -> dict[str, float]:
        """What tells the scenario's cache hits: the replica's cache counters, or for
        forward auth how often nginx asked the auth service."""
        if scenario.server == "bench":
            return _cache_counts(replica.port)
        if scenario.server == COMPILED_REPLICA and compiled_port is not None:
            return _cache_counts(compiled_port)
        if scenario.expect_method == "forward" and auth_port is not None:
            return {"auth_forward": auth_forward_count(auth_port)}
        return {}

    results: dict[str, list[WrkResult]] = {s.key: [] for s in scenarios}
    ratios: dict[str, list[float]] = {s.key: [] for s in scenarios}
    # Throughput a saturated core would give, relative to the baseline: the
    # inverse ratio of CPU time per request. Unlike the measured rates it does
    # not move when another program takes the core for a while.
    cost_ratios: dict[str, list[float]] = {s.key: [] for s in scenarios}
    by_key = {s.key: s for s in scenarios}
    hits: dict[str, list[float]] = {s.key: [] for s in scenarios}
    signature_us: list[float] = []
    for round_number in range(config.rounds):
        progress(f"round {round_number + 1}/{config.rounds}: {len(scenarios)} scenarios")
        shift = round_number % len(scenarios)
        order = scenarios[shift:] + scenarios[:shift]
        this_round: dict[str, WrkResult] = {}
        for scenario in order:
            before = counts(scenario)
            result = run(scenario, config.run_seconds)
            hit_ratio = _hit_ratio(before, counts(scenario), scenario.key, result.requests)
            if hit_ratio is not None:
                hits[scenario.key].append(hit_ratio)
            results[scenario.key].append(result)
            this_round[scenario.key] = result
        for key, result in this_round.items():
            # The compiled replica's scenarios against its own baseline, in the same round.
            own = "compiled_baseline" if by_key[key].kind == "compiled" else "baseline"
            baseline = this_round[own].rate
            baseline_cost = cost_us(by_key[own], this_round[own])
            ratios[key].append(result.rate / baseline if baseline else float("nan"))
            cost = cost_us(by_key[key], result)
            cost_ratios[key].append(baseline_cost / cost if cost else float("nan"))
        signature_us.append(
            _raw_signature_us(jwks_url, repeated, max(0.5, config.run_seconds / 2), cores)
        )

    summaries = {
        s.key: _summary(s, results[s.key], ratios[s.key], cost_ratios[s.key], hits[s.key])
        for s in scenarios
    }
    profiles = _profiles(
        summaries, median(signature_us), scenarios, run, config, out_dir, groups, progress
    )
    return {
        "user": username,
        "first_seen_tokens": first_seen_count,
        "token_cache_entries": TOKEN_CACHE_ENTRIES,
        "compiled": {
            "modules": list(compiled.HOT_MODULES),
            "mypyc": alternatives.build.mypyc_version,
            "problem": alternatives.compiled_problem,
            "build_seconds": alternatives.build.seconds,
            # Checked as it started (_start_alternatives): none is kept that did not.
            "replica_runs_them": alternatives.compiled is not None,
        },
        "cached_forward_problem": alternatives.cached_forward_problem,
        "algorithm": stack.settings.alg,
        "cores": None if cores is None else {"server": cores.server, "load": cores.load},
        "signature_us": median(signature_us),
        "signature_us_runs": signature_us,
        "scenarios": summaries,
        "runs": {key: [run.to_json() for run in runs] for key, runs in results.items()},
        "profiles": {key: profile.to_json() for key, profile in profiles.items()},
    }


def auth_forward_count(port: int) -> float:
    """How many ``GET /auth/forward`` the auth service has answered (its /metrics)."""
    return sum(
        float(match["value"])
        for line in _metrics_lines(port)
        if (match := _FORWARD_METRIC.match(line))
    )


def _hit_ratio(
    before: dict[str, float], after: dict[str, float], key: str, requests: int
) -> float | None:
    """The share of the scenario's requests its cache answered: the replica's own counters
    (the compiled replica's for its scenarios), or for forward auth the requests nginx did
    not ask the auth service about."""
    if "auth_forward" in after:
        asked = after["auth_forward"] - before.get("auth_forward", 0.0)
        return max(0.0, 1.0 - asked / requests) if requests else None
    cache = {
        "jwt_repeated": "verified_tokens",
        "jwt_first_seen": "verified_tokens",
        "shared_session": "sessions",
    }.get(key.removeprefix("compiled_"))
    if cache is None:
        return None
    hit = after.get(f"{cache}:hit", 0.0) - before.get(f"{cache}:hit", 0.0)
    miss = after.get(f"{cache}:miss", 0.0) - before.get(f"{cache}:miss", 0.0)
    return hit / (hit + miss) if hit + miss else None


def _profiles(
    summaries: dict[str, dict[str, Any]],
    signature_us: float,
    scenarios: list[Scenario],
    run: Callable[[Scenario, float], WrkResult],
    config: BenchConfig,
    out_dir: Path,
    groups: dict[str, list[int]],
    progress: Callable[[str], None],
) -> dict[str, Profile]:
    """py-spy profiles of the scenarios whose budget was missed (and of the baseline then)."""
    verdicts = budget.validation_verdicts({"scenarios": summaries, "signature_us": signature_us})
    missed = list(dict.fromkeys(v.profile for v in verdicts if v.profile is not None))
    if not missed:
        return {}
    wanted = list(dict.fromkeys(["baseline", *missed]))
    by_key = {scenario.key: scenario for scenario in scenarios}
    profiles: dict[str, Profile] = {}
    profile_dir = out_dir / "profiles"
    profile_dir.mkdir(parents=True, exist_ok=True)
    for key in wanted:
        scenario = by_key[key]
        pids = groups.get(scenario.server, [])
        if not pids:
            continue
        progress(f"profiling {key} with py-spy ({config.profile_seconds:g} s)")
        output = profile_dir / f"{key}.collapsed.txt"
        recorder = start_recording(pids[0], config.profile_seconds, output)
        time.sleep(0.3)  # py-spy attaches
        run(scenario, config.profile_seconds + 1)
        recorder.communicate(timeout=60)
        if output.exists():
            profiles[key] = summarise(output)
    return profiles
