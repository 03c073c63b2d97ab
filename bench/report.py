"""The report a person reads at a glance: Markdown tables from the raw results.

``report.md`` has everything; ``summary.md`` (printed at the end of a run,
and what the README shows) has the budget and the headline tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import budget
from bench.budget import LOGIN_KINDS
from bench.stats import median, ratio

__all__ = ["render_report", "render_summary", "verdicts"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> str:
    """A Markdown table; columns from ``right`` on are right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if i >= right else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _n(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def _pct(value: Any) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.0%}"


def _shares(share: dict[str, float]) -> str:
    if not share:
        return "-"
    return "/".join(f"{round(100 * value)}" for _, value in sorted(share.items(), key=_rid))


def _rid(item: tuple[str, float]) -> int:
    rid = item[0]
    return int(rid[1:]) if rid[1:].isdigit() else 999


def _share_names(share: dict[str, float]) -> str:
    return "/".join(rid for rid, _ in sorted(share.items(), key=_rid))


def verdicts(results: dict[str, Any]) -> list[budget.Verdict]:
    found: list[budget.Verdict] = []
    if "validation" in results:
        found += budget.validation_verdicts(results["validation"])
    if "micro" in results:
        found += budget.micro_verdicts(results["micro"])
    if "logins" in results:
        found += budget.login_verdicts(results["logins"])
    if "rows" in results:
        found += budget.rows_verdicts(results["rows"])
    return found


def _budget_section(results: dict[str, Any]) -> str:
    rows = []
    for verdict in verdicts(results):
        mark = "n/a" if verdict.met is None else ("**met**" if verdict.met else "**missed**")
        rows.append([verdict.target, verdict.measured, mark, verdict.gap or ""])
    if not rows:
        return ""
    return "## Performance budget\n\n" + _table(["target", "measured", "", "gap"], rows, right=99)


def _validation_section(validation: dict[str, Any], meta: dict[str, Any]) -> str:
    scenarios = validation["scenarios"]
    base_cost = scenarios["baseline"]["cost_us"]
    rows = []
    # The compiled replica's rows have a section of their own, against its own baseline.
    for value in (v for v in scenarios.values() if v["kind"] != "compiled"):
        extra = value["cost_us"] - base_cost
        hit = value.get("cache_hit_ratio")
        rows.append(
            [
                value["label"],
                _n(value["rate"]),
                _pct(value["ratio_to_baseline"]),
                _pct(value["cost_ratio_to_baseline"]),
                _n(value["cost_us"]),
                "" if value["kind"] == "ceiling" else f"{extra:+.0f}",
                _n(value["p50_ms"], 2),
                _n(value["p99_ms"], 2),
                "-" if hit is None else _pct(hit),
            ]
        )
    cores = validation.get("cores")
    where = (
        f"the measured process alone on core {cores['server']}; wrk (1 thread, "
        f"{meta['config']['connections']} connections), nginx, the auth service, Redis, "
        f"PostgreSQL and the driver on core {cores['load']}"
        if cores
        else "nothing pinned (one core)"
    )
    forward = {
        key: scenarios[key]["cost_cpu_us"]
        for key in ("forward_auth", "forward_auth_cached")
        if key in scenarios
    }
    ceiling = scenarios["nginx_ceiling"]
    wrk_max = max(v["wrk_utilisation"] for v in scenarios.values())
    server_min = min(
        v["server_utilisation"]
        for key, v in scenarios.items()
        if v["kind"] != "ceiling" and not key.startswith("forward_auth")
    )
    text = [
        "## 1. Validation cost per request, one replica",
        "",
        f"Median of {meta['config']['rounds']} interleaved runs of "
        f"{meta['config']['run_seconds']:g} s each; {where}. *vs baseline (req/s)* is the "
        "measured throughput ratio within a round; *(CPU)* is the inverse ratio of the "
        "server's CPU time per request, i.e. the throughput ratio of a saturated core, "
        "which other programs taking the core for a while do not move.",
        "",
        _table(
            [
                "credential",
                "req/s",
                "vs baseline (req/s)",
                "vs baseline (CPU)",
                "CPU µs/req",
                "µs vs baseline",
                "p50 ms",
                "p99 ms",
                "cache hits",
            ],
            rows,
        ),
        "",
        f"- Raw {validation['algorithm']} signature check (pyjwt, signature only, same core): "
        f"**{validation['signature_us']:.0f} µs** of CPU. A first-seen token costs "
        f"{scenarios['jwt_first_seen']['cost_us'] - scenarios['jwt_repeated']['cost_us']:.0f} µs "
        "more than a repeated one.",
        "- Forward auth, CPU per request by process: "
        + "; ".join(
            f"{'with the cache on: ' if key.endswith('_cached') else ''}"
            + ", ".join(f"{name} {_n(us)} µs" for name, us in costs.items())
            for key, costs in forward.items()
        )
        + " (nginx with TLS and the auth service share the load core with wrk, so these rows "
        "are bound by that core, not by the replica).",
        f"- Load generator: wrk used at most {_pct(wrk_max)} of its core in any scenario, and "
        f"drove nginx alone to {_n(ceiling['rate'])} req/s; the measured Python process used at "
        f"least {_pct(server_min)} of its core in every run but forward auth's (100% = it was "
        "the bottleneck; less means another program had the core for a while). "
        f"Other programs on this machine used a median "
        f"{_n(median([v['background_cores'] for v in scenarios.values()]), 2)} cores during "
        "these runs.",
    ]
    return "\n".join(text)


#: The interpreted replica's scenarios and the compiled replica's, side by side.
_COMPILED_PAIRS = (
    ("baseline", "compiled_baseline", "no authentication (GET /healthz)"),
    ("jwt_repeated", "compiled_jwt_repeated", "JWT, repeated"),
    ("jwt_first_seen", "compiled_jwt_first_seen", "JWT, first seen"),
    ("shared_session", "compiled_shared_session", "shared Redis session"),
    ("local_session", "compiled_local_session", "session in the replica's memory"),
)


def _compiled_section(validation: dict[str, Any]) -> str:
    """The replica as it runs, next to the same replica with its hot modules compiled to C
    (bench/compiled.py): what machine code would recover of the missed lines."""
    scenarios = validation["scenarios"]
    build = validation.get("compiled")
    heading = "### The same replica compiled to C (mypyc)"
    if build is None:
        return f"{heading}\n\nNot part of this run (an older results file)."
    if "compiled_baseline" not in scenarios:
        return f"{heading}\n\nNot measured: {build['problem']}."
    rows = []
    for interpreted, compiled, label in _COMPILED_PAIRS:
        if compiled not in scenarios:
            continue
        rows.append(
            [
                label,
                _n(scenarios[interpreted]["cost_us"]),
                _n(scenarios[compiled]["cost_us"]),
                _pct(scenarios[interpreted]["cost_ratio_to_baseline"]),
                _pct(scenarios[compiled]["cost_ratio_to_baseline"]),
            ]
        )
    bare = scenarios.get("peer_bare")
    notes = (
        ""
        if bare is None
        else " Over aiohttp alone: "
        f"{scenarios['baseline']['cost_us'] / bare['cost_us'] - 1:+.0%} as it runs, "
        f"{scenarios['compiled_baseline']['cost_us'] / bare['cost_us'] - 1:+.0%} compiled "
        "(both replicas serve every scenario, so both sit above the fresh floor replica)."
    )
    if "compiled_jwt_first_seen" in scenarios:
        signature = validation["signature_us"]
        extras = [
            scenarios[first]["cost_us"] - scenarios[repeated]["cost_us"] - signature
            for first, repeated in (
                ("jwt_first_seen", "jwt_repeated"),
                ("compiled_jwt_first_seen", "compiled_jwt_repeated"),
            )
        ]
        notes += (
            f" A first-seen JWT costs {extras[0]:+.0f} µs beyond the raw signature as it "
            f"runs, {extras[1]:+.0f} µs compiled."
        )
    ran = "ran" if build.get("replica_runs_them") else "did NOT run"
    return "\n".join(
        [
            heading,
            "",
            f"{len(build['modules'])} modules a request passes through (the service "
            "middleware and its request ID, the authenticators and credential checks, their "
            "caches, the keys, the revocation copy, the replica's routes; the aiohttp "
            "middleware calling them stays Python: bench/compiled.py) compiled by mypyc "
            f"{build.get('mypyc', '')} ({build.get('build_seconds', 0):.0f} s; the replica "
            f"{ran} their shared library), the rest as it is: the same code, checks and "
            "configuration, measured in the same rounds. Shares are of each replica's own "
            "baseline, on CPU cost, the median of the rounds' ratios." + notes,
            "",
            _table(
                [
                    "credential",
                    "CPU µs/req",
                    "compiled: CPU µs/req",
                    "share of baseline",
                    "compiled: share",
                ],
                rows,
            ),
        ]
    )


def _peers_section(validation: dict[str, Any]) -> str:
    scenarios = validation["scenarios"]
    rows = []
    for ours, peer in (
        ("jwt_repeated", "peer_jwt"),
        ("jwt_first_seen", "peer_jwt"),
        ("shared_session", "peer_session"),
        ("local_session", "peer_session"),
    ):
        a, b = scenarios[ours], scenarios[peer]
        rows.append(
            [
                f"{a['label']} vs {b['label'].removeprefix('peer: ')}",
                _n(a["rate"]),
                _n(b["rate"]),
                f"{a['rate'] / b['rate']:.2f}x",
                f"{b['cost_us'] / a['cost_us']:.2f}x",
            ]
        )
    return "\n".join(
        [
            "## 4. Against what a Python user would otherwise pick",
            "",
            "Same machine, same run, same core, same wrk settings; the peers are minimal aiohttp "
            "apps (`bench/peers.py`) without tessera's middleware (request IDs, metrics, "
            "replica stamp). The session peer's cost includes Redis's CPU.",
            "",
            _table(
                ["comparison", "tessera req/s", "peer req/s", "speed-up (req/s)", "speed-up (CPU)"],
                rows,
            ),
        ]
    )


def _rows_section(rows: dict[str, Any]) -> str:
    entries = list(rows["rows"].values())
    capacity_rows = []
    for entry in entries:
        capacity = entry["capacity"]
        capacity_rows.append(
            [
                f"{entry['row']}",
                entry["label"],
                _n(capacity["rate"]),
                _pct(capacity["success_rate"]),
                _n(capacity["ok_rate"]),
                f"{_shares(capacity['share'])} ({_share_names(capacity['share'])})",
                _n(capacity["p50_ms"], 1),
                _n(capacity["p99_ms"], 1),
                str(capacity["server_errors"] + capacity["socket_errors"]),
                _pct(capacity["wrk_utilisation"]),
            ]
        )
    scale_rows = []
    kill_rows = []
    for entry in entries:
        scale, kill = entry["scale_out"], entry["kill"]
        added = scale["replica"]
        scale_rows.append(
            [
                f"{entry['row']}",
                entry["label"],
                _pct(scale["before"]["success_rate"]),
                _shares(scale["before"]["share"]),
                added,
                _pct(scale["settled"]["share"].get(added, 0.0)),
                "never" if scale.get("rebalance_s") is None else f"{scale['rebalance_s']:.1f} s",
                f"{scale['users_lost']} of {scale['users']}",
                str(scale["failed"]),
                _pct(scale["settled"]["success_rate"]),
            ]
        )
        last = kill["last_failure_after_event_s"]
        kill_rows.append(
            [
                f"{entry['row']}",
                entry["label"],
                _pct(kill["before"]["success_rate"]),
                _shares(kill["before"]["share"]),
                kill["replica"],
                str(kill["failed"]),
                "-" if last is None else f"{last:.1f} s",
                f"{kill['users_lost']} of {kill['users']}",
                _pct(kill["settled"]["success_rate"]),
                _shares(kill["settled"]["share"]),
                f"{_n(kill['before']['p99_ms'], 0)} / {_n(kill['settled']['p99_ms'], 0)}",
            ]
        )
    first = entries[0]
    lag = max(
        entry[kind]["driver_lag_p99_ms"] for entry in entries for kind in ("scale_out", "kill")
    )
    driver = max(
        entry[kind]["driver_utilisation"] for entry in entries for kind in ("scale_out", "kill")
    )
    return "\n".join(
        [
            "## 2. The demonstration rows under load (nginx with TLS, 3 replicas)",
            "",
            f"**Capacity** (wrk, closed loop, {first['capacity']['runs']} run(s) of each row, "
            f"median): {rows['users']} users logged in from 127.0.0.1, wrk's own address, their "
            "credentials sent in turn. *ok* = authenticated 2xx. Row 2 is therefore the "
            '"everyone behind one NAT" case: `ip_hash` gives all of them one replica.',
            "",
            _table(
                [
                    "row",
                    "credential / policy",
                    "req/s",
                    "ok",
                    "ok/s",
                    "% by replica",
                    "p50 ms",
                    "p99 ms",
                    "5xx+socket",
                    "wrk CPU",
                ],
                capacity_rows,
                right=2,
            ),
            "",
            f"**Scale-out** (Python driver): {rows['users']} users, each from its own /24 "
            f"(127.0.N.1), {rows['offered_rate']:g} requests/s in all (9 GET /api/me : 1 POST "
            "/api/comments); a replica added a third of the way in. *rebalance* = from the end "
            "of the scale-out until the new replica first carries half its fair share; "
            "*settled* = from one second after the event to the end.",
            "",
            _table(
                [
                    "row",
                    "credential / policy",
                    "ok before",
                    "% by r1/r2/r3",
                    "added",
                    "its share, settled",
                    "rebalance",
                    "users lost",
                    "failed",
                    "ok settled",
                ],
                scale_rows,
                right=2,
            ),
            "",
            "**Kill**: the same load; the replica most users live on (else r1) SIGKILLed a "
            "third of the way in, nginx not told. *failed* = 5xx or no answer, as users saw "
            "them (a POST in flight on the killed replica is not retried by nginx); *users "
            "lost* = a success before, none once settled.",
            "",
            _table(
                [
                    "row",
                    "credential / policy",
                    "ok before",
                    "% by replica",
                    "killed",
                    "failed",
                    "last failure after kill",
                    "users lost",
                    "ok settled",
                    "% by replica, settled",
                    "p99 ms before / settled",
                ],
                kill_rows,
                right=2,
            ),
            "",
            f"Driver check: it sent at most {lag:.0f} ms late (p99 of its schedule lag) and used "
            f"at most {_pct(driver)} of a core; wrk and the stack were not pinned in this part.",
        ]
    )


def _logins_section(logins: dict[str, Any]) -> str:
    summary = logins["summary"]
    argon2 = logins["argon2"]
    rows = [
        [
            f"raw Argon2id verify (m={argon2['memory_kib']}, t={argon2['time_cost']}, "
            f"p={argon2['parallelism']}), 1 thread",
            _n(summary["argon2"]["rate"], 1),
            _n(summary["argon2"]["cpu_ms"], 1),
            "100%",
            "100%",
            "",
            "",
        ]
    ]
    for key, label in (
        ("login_session", "login -> session cookie"),
        ("login_token", "login -> access + refresh token"),
    ):
        entry = summary[key]
        rows.append(
            [
                label,
                _n(entry["rate"], 1),
                _n(entry["auth_cpu_ms"], 1),
                _pct(entry["rate_share_of_argon2"]),
                _pct(entry["cost_share_of_argon2"]),
                _n(entry["p50_ms"], 0),
                _n(entry["p99_ms"], 0),
            ]
        )
    refresh = summary["refresh"]
    rows.append(
        [
            "refresh (rotating refresh token, no hashing)",
            _n(refresh["rate"], 0),
            _n(refresh["auth_cpu_ms"], 2),
            f"{refresh['per_login']:.0f}x a login",
            "",
            _n(refresh["p50_ms"], 0),
            _n(refresh["p99_ms"], 0),
        ]
    )
    cores = logins.get("cores")
    where = (
        f"the auth service alone on core {cores['server']} (raw Argon2 there too); the driver, "
        f"PostgreSQL and Redis on core {cores['load']}"
        if cores
        else "nothing pinned"
    )
    concurrency = logins["concurrency"]
    driver = max(
        summary[kind]["driver_utilisation"] for kind in ("login_session", "login_token", "refresh")
    )
    return "\n".join(
        [
            "## 3. Logins and refreshes vs raw Argon2",
            "",
            f"{where}; {concurrency['login']} concurrent logins, {concurrency['refresh']} "
            "concurrent refresh chains, median of interleaved rounds. *vs raw* columns: measured "
            "rate / raw rate, and raw CPU per hash / the service's CPU per login.",
            "",
            _table(
                [
                    "operation",
                    "per second",
                    "CPU ms each",
                    "vs raw (rate)",
                    "vs raw (CPU)",
                    "p50 ms",
                    "p99 ms",
                ],
                rows,
            ),
            "",
            f"A login spends {summary['login_session']['not_hashing_ms']:.1f} ms of CPU (session) "
            f"and {summary['login_token']['not_hashing_ms']:.1f} ms (tokens) on everything but "
            f"the hash. Driver: at most {_pct(driver)} of its core.",
            _login_breakdown(logins),
        ]
    )


def _login_breakdown(logins: dict[str, Any]) -> str:
    """Where a login's CPU besides the hash goes: the light service, the round trips."""
    summary = logins["summary"]
    light = summary.get("light")
    trips = summary.get("round_trip_us")
    if "calls" not in summary["login_session"]:  # results of a bench before these figures
        return ""
    rows: list[list[str]] = [
        [
            "CPU besides the hash, the service's own Argon2 (above)",
            *(_n(summary[kind]["not_hashing_ms"], 2) for kind in LOGIN_KINDS),
        ]
    ]
    if light is not None:
        memory = logins.get("light", {}).get("argon2", {}).get("memory_kib", "?")
        rows += [
            [
                f"the same service with a {memory} KiB hash, at the same logins/s",
                *(_n(light[kind]["not_hashing_ms"], 2) for kind in LOGIN_KINDS),
            ],
            [
                "so the big hash costs the rest of the login",
                *(_n(light[kind]["hash_aftermath_ms"], 2) for kind in LOGIN_KINDS),
            ],
            [
                "the light service as fast as it goes: "
                + " / ".join(f"{light[kind]['busy_rate']:,.0f}" for kind in LOGIN_KINDS)
                + " logins/s",
                *(_n(light[kind]["busy_not_hashing_ms"], 2) for kind in LOGIN_KINDS),
            ],
            [
                "so an event loop that waits between the steps of a login costs",
                *(_n(light[kind]["idle_wakeups_ms"], 2) for kind in LOGIN_KINDS),
            ],
        ]
    rows.append(
        [
            "Redis round trips / PostgreSQL statements per login (background checks included)",
            *(
                "{redis:.1f} / {postgresql:.1f}".format(**summary[kind]["calls"])
                for kind in LOGIN_KINDS
            ),
        ]
    )
    if trips is not None:
        rows.append(
            [
                "those calls at their cost alone on the core (below)",
                *(
                    _n(
                        (
                            summary[kind]["calls"]["redis"] * trips["redis_us"]
                            + summary[kind]["calls"]["postgresql"] * trips["postgres_pool_us"]
                        )
                        / 1000,
                        2,
                    )
                    for kind in LOGIN_KINDS
                ),
            ]
        )
    text = [
        "",
        "Where it goes (ms of CPU per login, medians of the same rounds):",
        "",
        _table(["", "session", "tokens"], rows),
    ]
    if light is None and logins.get("light", {}).get("problem"):
        text += ["", f"The light-hash service did not start: {logins['light']['problem']}"]
    if trips is not None:
        text += [
            "",
            "One round trip, alone on the server core (`python -m bench.rawcost roundtrips`, "
            f"uvloop, CPU µs): a bare stream to Redis {_n(trips['bare_stream_us'], 0)}, "
            f"redis-py as the services make it {_n(trips['redis_us'], 0)}, asyncpg on one "
            f"connection {_n(trips['postgres_direct_us'], 0)}, through the services' pool "
            f"{_n(trips['postgres_pool_us'], 0)}"
            + (
                f" (through asyncpg's own pool, which resets each connection with one more "
                f"round trip: {_n(trips['postgres_pool_reset_us'], 0)})"
                if "postgres_pool_reset_us" in trips
                else ""
            )
            + ".",
        ]
    return "\n".join(text)


def _micro_section(micro: dict[str, Any]) -> str:
    rows = [[name, _n(seconds * 1e6, 1)] for name, seconds in micro["figures"].items()]
    return "\n".join(
        [
            "## Micro-benchmark (`python -m bench.micro`, in-process, own PostgreSQL and Redis)",
            "",
            _table(["operation", "µs per op"], rows),
        ]
    )


def _profile_costs(results: dict[str, Any]) -> dict[str, float]:
    """CPU µs per request of each profiled validation scenario, to put µs on the shares."""
    costs: dict[str, float] = {}
    for key, value in results.get("validation", {}).get("scenarios", {}).items():
        costs[key] = float(value["server_cpu_us"])
    # Not for logins: the auth service hashes in an executor thread, and a sample of
    # the event loop waiting for the core to come back counts as runnable, so its
    # shares are of wall time, not of the CPU time per login.
    return costs


def _profiles_section(results: dict[str, Any]) -> str:
    profiles: dict[str, Any] = {}
    profiles.update(results.get("validation", {}).get("profiles", {}))
    profiles.update(results.get("logins", {}).get("profiles", {}))
    if not profiles:
        return ""
    costs = _profile_costs(results)
    text = [
        "## Where the time goes (py-spy, for the missed targets)",
        "",
        "Share of samples in which a thread of the measured process was running or runnable "
        "(threads waiting in epoll or for executor work left out), in separate runs under "
        "the same load; *≈ µs* applies the share to the CPU time per request measured above. "
        "*Including callees* leaves out what more than 60% of samples pass through (the "
        "middleware chain every request runs). Collapsed stacks are in `profiles/`.",
    ]
    for key, profile in profiles.items():
        if not profile["samples"]:
            continue
        cost = costs.get(key)

        def share(value: float, cost: float | None = cost) -> str:
            return f"{value:.0%}" if cost is None else f"{value:.0%} ≈ {value * cost:,.0f} µs"

        components = ", ".join(f"{name} {share(s)}" for name, s in profile["by_component"][:8])
        own = "; ".join(f"{name} {share(s)}" for name, s in profile["self_time"][:8])
        below = [(name, s) for name, s in profile["inclusive"] if s <= 0.6][:8]
        inclusive = "; ".join(f"{name} {share(s)}" for name, s in below)
        per = "" if cost is None else f", {cost:,.0f} µs of CPU per request"
        text += [
            "",
            f"**{key}** ({profile['samples']} samples{per})",
            f"- by component: {components}",
            f"- own time: {own}",
            f"- including callees: {inclusive or '-'}",
        ]
    return "\n".join(text)


def _failover_section(failover: dict[str, Any]) -> str:
    """Part 5: p99 and failures before / during / after each fault of the shared store."""
    lines = []
    for run in failover["runs"]:
        before, during, after = run["before"], run["during"], run["after"]
        lines.append(
            [
                run["store"],
                f"{run['row']} {run['label']}",
                f"{run['event_end'] - run['event_start']:.1f} s",
                f"{run['unavailable_s']:.1f} s",
                f"{_n(before['p99_ms'])} / {_n(during['p99_ms'])} / {_n(after['p99_ms'])}",
                f"{before['failed']} / {during['failed']} / {after['failed']}",
                str(run["statuses_502"]),
                f"{run['users_lost']} of {run['users']}",
            ]
        )
    if not lines:
        return ""
    return (
        "## 5. The shared store fails under load\n\n"
        f"{failover['users']} users from distinct /24s, {_n(failover['offered_rate'])} req/s "
        f"through nginx for {failover['seconds']:g} s; the fault a third of the way in "
        "(*during* = from the SIGKILL until the store serves again: the restarted Redis "
        "answers PING, or a new primary is named). failed = 5xx or no answer; "
        "unavailable = from the first failed request to the last one's answer.\n\n"
        + _table(
            [
                "shared store / fault",
                "row",
                "fault lasted",
                "unavailable",
                "p99 ms before / during / after",
                "failed before / during / after",
                "502",
                "users lost",
            ],
            lines,
            right=2,
        )
    )


def _refused(entry: dict[str, Any]) -> str:
    return f"{entry['throttled']} / {entry['busy']} / {entry['unavailable']}"


def _attack_user_rows(summary: dict[str, Any]) -> list[list[str]]:
    baseline, under = summary["baseline"], summary["attack"]
    rows = [
        [
            label,
            _n(entry["rate"], 1),
            _n(entry["p50_ms"], 0),
            _n(entry["p99_ms"], 0),
            str(entry["ok"]),
            _refused(entry),
            _pct(entry["auth_utilisation"]),
        ]
        for label, entry in (("no attack", baseline), ("under attack", under))
    ]
    rows.append(
        [
            "under attack / no attack",
            _pct(summary["rate_ratio"]),
            _times(ratio(under["p50_ms"], baseline["p50_ms"])),
            _times(summary["p99_ratio"]),
            "",
            "",
            "",
        ]
    )
    return rows


def _attack_stream_rows(tallies: list[dict[str, Any]]) -> list[list[str]]:
    fields = ("sent", "throttled", "busy", "unavailable", "hashed")
    rows = [
        [
            tally["label"],
            *(str(tally[field]) for field in fields),
            str(tally["other"] + tally["no_answer"]),
        ]
        for tally in tallies
    ]
    rows.append(
        [
            "**all**",
            *(str(sum(tally[field] for tally in tallies)) for field in fields),
            str(sum(tally["other"] + tally["no_answer"] for tally in tallies)),
        ]
    )
    return rows


def _attack_section(attack: dict[str, Any]) -> str:
    """Part 6: the users' logins with no attack and under attack, and the attacker's requests."""
    summary = attack["summary"]
    under = summary["attack"]
    throttles = attack["throttles"]
    argon2 = attack["argon2"]
    cores = attack.get("cores")
    where = f"alone on core {cores['server']}" if cores else "unpinned"
    tallies = list(summary["attackers"].values())
    not_sent = sum(tally["not_sent"] for tally in tallies)
    unsent = (
        f"{not_sent} attacker requests were due but never sent ({attack['max_in_flight']} "
        "in flight per stream at most). "
        if not_sent
        else ""
    )
    quiet, loud = summary["server"]["baseline"], summary["server"]["attack"]
    rounds = len(attack["rounds"])
    return "\n".join(
        [
            "## 6. Logins while an attacker floods the auth service",
            "",
            f"{attack['users']} users log in over and over with their right password (session "
            f"cookie), each from a loopback address of its own: {attack['seconds']:g} s with no "
            f"attack, then {attack['seconds']:g} s while an attacker sends four streams of "
            f"{attack['rate_per_stream']:g} requests/s each, each stream from "
            f"{attack['addresses_per_stream']} addresses of its own (127.B.X.Y, fresh every "
            f"round; {rounds} round(s), medians, ratios paired within a round). The auth service "
            f"is one of the benchmark's own, {where}, with the production throttles: "
            f"{throttles['max_failures_per_pair']} failures per account and address, "
            f"{throttles['max_failures_per_address']} per address, past "
            f"{throttles['max_failures_per_account']} per account one guess per backoff slot "
            f"(at most {throttles['max_backoff']:g} s), "
            f"{throttles['max_registrations_per_address']} registrations per address, over "
            f"{throttles['window']} s windows; an Argon2 queue of "
            f"{throttles['argon2_max_pending'] or '2 x CPUs + 2'} jobs (m={argon2['memory_kib']}, "
            f"t={argon2['time_cost']}). A refused login is tried again 50 ms later; "
            "latencies are of successful logins.",
            "",
            _table(
                [
                    "legitimate users",
                    "logins/s",
                    "p50 ms",
                    "p99 ms",
                    "logins ok",
                    "refused 429 / 503 busy / 503 other",
                    "auth CPU",
                ],
                _attack_user_rows(summary),
            ),
            "",
            "Where the attacker's requests ended (all rounds). *429*: the regulator refused "
            "them before any hashing; *503 busy*: admitted by the regulator, refused by the "
            "full Argon2 queue (`server_busy`); *503 other*: a dependency failed (e.g. the "
            "service ran out of Redis connections); *reached Argon2*: answered only after a "
            "hash (a wrong password verified, an account created, a wrong current password "
            "checked).",
            "",
            _table(
                [
                    "attacker stream",
                    "sent",
                    "429",
                    "503 busy",
                    "503 other",
                    "reached Argon2",
                    "other / no answer",
                ],
                _attack_stream_rows(tallies),
            ),
            "",
            f"The service's own counters (`tessera_http_requests_total`): with no attack "
            f"{quiet['hashed']} requests reached Argon2 ({_n(quiet['hashed_per_s'], 1)}/s); "
            f"under attack {loud['hashed']} ({_n(loud['hashed_per_s'], 1)}/s), of which "
            f"{under['ok']} were the users' logins, while it answered {loud['429']} "
            f"429s and {loud['503']} 503s. {unsent}"
            f"Driver: at most {_pct(under['driver_utilisation'])} of its core.",
        ]
    )


def _scaling_section(scaling: dict[str, Any]) -> str:
    """Part 7: one replica with 1 and with 2 worker processes (TESSERA_WORKERS)."""
    lines = []
    for scenario in scaling["scenarios"].values():
        one, two = scenario["by_workers"]["1"], scenario["by_workers"]["2"]
        lines.append(
            [
                scenario["label"],
                _n(one["rate"]),
                _n(two["rate"]),
                _times(scenario["ratio"]),
                f"{_n(one['cpu_us'])} / {_n(two['cpu_us'])}",
                f"{_n(one['service_cores'], 2)} / {_n(two['service_cores'], 2)}",
                f"{_n(one['wrk_cores'], 2)} / {_n(two['wrk_cores'], 2)}",
                f"{_n(one['machine_cores'], 2)} / {_n(two['machine_cores'], 2)}",
                _pct(two["busiest_worker_share"]),
                str(one["failures"] + two["failures"]),
            ]
        )
    return (
        "## 7. Multi-core: one replica with 1 and 2 workers\n\n"
        f"The same replica ({scaling['methods']}) with `TESSERA_WORKERS=1` and `=2` "
        "(two processes on one port, `SO_REUSEPORT`), wrk (one thread, "
        f"{scaling['connections']} connections) at each in turn, {scaling['rounds']} "
        f"interleaved rounds of {scaling['seconds']:g} s, medians; 2w/1w is the ratio of "
        f"request rates within a round. Nothing pinned: on {scaling['cpus']} cores the "
        "replica's workers, wrk and the rest of the stack share every core, so a ratio "
        "below the number of workers is the machine, not the design. CPU is the replica's "
        "whole process tree; cores = cores' worth of CPU used during the run (machine: "
        "everything, ours or not); busiest worker = its share of the two workers' CPU "
        "(50% is an even spread)."
        + _saturated(scaling)
        + "\n\n"
        + _table(
            [
                "request",
                "req/s 1 worker",
                "req/s 2 workers",
                "2w/1w",
                "CPU µs/req 1w / 2w",
                "replica cores 1w / 2w",
                "wrk cores 1w / 2w",
                "machine cores 1w / 2w",
                "busiest worker",
                "failed",
            ],
            lines,
        )
    )


def _capacity_section(capacity: dict[str, Any]) -> str:
    """Part 8: what one login (a shared session) and one revocation leave behind."""
    rows = [
        [
            label,
            _n(capacity[key]["redis_bytes"]),
            _n(capacity[key]["redis_keys"], 2),
            _n(capacity[key]["redis_commands"], 1),
            _n(capacity[key]["pg_rows"], 2),
        ]
        for key, label in (
            ("login", "login -> shared session"),
            ("token_login", "login -> token pair (a refresh family)"),
            ("refresh", "refresh (rotating refresh token), within the grace window"),
            ("refresh_kept", "refresh, once the grace window is over"),
            ("revocation", "access token revoked (/auth/revoke)"),
        )
        if key in capacity
    ]
    return (
        "## 8. What a session and a revocation leave behind\n\n"
        f"{capacity['count']} logins and {capacity.get('revocations', capacity['count'])} "
        "revocations on the bench's stack, before anything else ran on "
        "it: Redis's own `used_memory`, key count and commands processed (the revocation "
        "feed's few a second included), and PostgreSQL's rows written "
        "(`pg_stat_database`: inserted + updated + deleted) over them, per item. The "
        "inputs of README's capacity model.\n\n"
        + _table(
            ["per item", "Redis bytes", "Redis keys", "Redis commands", "PostgreSQL rows written"],
            rows,
        )
        + _redis_rate(capacity)
    )


def _redis_rate(capacity: dict[str, Any]) -> str:
    rates = capacity.get("redis_commands_per_s")
    if not rates:
        return ""
    return (
        f"\n\nOne Redis process (one core) on this machine, `redis-benchmark` on loopback "
        f"(50 connections, no pipelining, 64-byte values): {_n(rates['get'])} GET/s, "
        f"{_n(rates['set'])} SET/s (the benchmark's own client shares the machine)."
    )


def _saturated(scaling: dict[str, Any]) -> str:
    """A warning when programs other than the replica and wrk took a core's share while the
    2 workers ran (a full machine of our own load is what the part measures)."""
    others = [
        two["machine_cores"] - two["service_cores"] - two["wrk_cores"]
        for two in (scenario["by_workers"]["2"] for scenario in scaling["scenarios"].values())
    ]
    if not others or median(others) < 0.25:
        return ""
    return (
        f" **Other programs took {_n(median(others), 2)} cores** while the 2 workers ran "
        f"(of {scaling['cpus']}): the ratio measures that contention as well as scaling."
    )


def _times(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def _header(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# tessera benchmark, {meta['started']}",
        "",
        f"`{meta['command']}` ({meta['config']['name']} mode, {meta['elapsed_s'] / 60:.1f} min) · "
        f"git {meta['git']} · {meta['cpu_model']}, {meta['cpus']} cores · Python "
        f"{meta['python']} · {meta['algorithm']} · loopback only · load average "
        f"{meta['loadavg_before']} before, {meta['loadavg_after']} after. Every figure is a "
        "median of repeated runs; the headline figures are ratios measured side by side.",
    ]
    return "\n".join(lines)


def render_summary(results: dict[str, Any]) -> str:
    """Budget and headline tables: what the README shows."""
    parts = [_header(results), _budget_section(results)]
    meta = results["meta"]
    if "validation" in results:
        parts.append(_validation_section(results["validation"], meta))
        parts.append(_peers_section(results["validation"]))
        parts.append(_compiled_section(results["validation"]))
    if "rows" in results and results["rows"].get("rows"):
        parts.append(_rows_section(results["rows"]))
    if "logins" in results:
        parts.append(_logins_section(results["logins"]))
    if "failover" in results:
        parts.append(_failover_section(results["failover"]))
    if "attack" in results:
        parts.append(_attack_section(results["attack"]))
    if "scaling" in results:
        parts.append(_scaling_section(results["scaling"]))
    if "capacity" in results:
        parts.append(_capacity_section(results["capacity"]))
    return "\n\n".join(part for part in parts if part) + "\n"


def render_report(results: dict[str, Any], charts: Sequence[str]) -> str:
    """Everything: the summary, the micro-benchmark, the profiles, the charts, the method."""
    parts = [render_summary(results).rstrip("\n")]
    if "micro" in results:
        parts.append(_micro_section(results["micro"]))
    parts.append(_profiles_section(results))
    if charts:
        parts.append("## Charts\n\n" + "\n\n".join(f"![{name}]({name})" for name in charts))
    parts.append(
        "## How this was measured\n\n"
        "- The stack is tessera's own launcher (`python -m tessera_stack`) in a run directory "
        "of the benchmark's, on free loopback ports, with `TESSERA_ACCESS_LOG=0` and "
        "`TESSERA_LOG_LEVEL=WARNING` so that logging is not what is measured.\n"
        "- Raw throughput comes from wrk (Debian's package, one thread, Lua script "
        "`bench/lua/requests.lua` that formats every request once and sends them in turn); "
        "scenario logic (many source addresses, kills, scale-out, logins, refresh chains) "
        "from a Python driver whose own CPU use and schedule lag are reported.\n"
        '- CPU time per process comes from /proc; "other programs" is the machine\'s busy '
        "time minus ours. The machine is shared and noisy: compare ratios, not absolute rates.\n"
        "- First-seen JWTs: more distinct tokens than the replica's verified-token cache holds "
        "(LRU), minted with the auth service's issuer and active key, sent in turn and carried "
        "on from run to run; the replica's /metrics confirms the cache missed.\n"
        "- Raw JSON: `results.json`; service logs: `logs/`."
    )
    return "\n\n".join(part for part in parts if part) + "\n"
