"""tessera's benchmark and load-test harness.

    make bench          # python -m bench           (about 15 minutes here)
    make bench-quick    # python -m bench --quick   (about 4 minutes: every code path, short runs)

Starts a stack of its own (PostgreSQL, Redis, the auth service, replicas,
nginx with TLS, all on loopback), measures

1. the validation cost per request on one replica, next to no authentication;
2. the demonstration rows under load through nginx with three replicas,
   with a replica added and a replica killed mid-run;
3. logins and refreshes against the raw Argon2 rate;
4. the same requests served by the peers a Python user would otherwise pick;
5. rows 4 and 5 under the same load while the shared store fails: one Redis
   SIGKILLed and restarted, a Sentinel primary and Cluster primaries SIGKILLed
   (each on a stack of its own with ``--redis sentinel|cluster``);
6. legitimate logins with no attack and while an attacker floods the auth
   service with wrong passwords, registrations and password changes from many
   addresses, side by side, and where the attacker's requests ended (429, 503,
   or a password hash);
7. multi-core (``scaling``): one replica with ``TESSERA_WORKERS=1`` next to
   the same replica with 2 workers sharing its port;
8. what one shared session, one login and one revocation leave in Redis and
   PostgreSQL (``capacity``), the inputs of README's capacity model;

plus the in-process micro-benchmark (``bench.micro``), then writes
``bench/results/<timestamp>/`` (``report.md``, ``summary.md``, PNG charts,
``results.json``, profiles, service logs), prints the summary and stops
everything it started. Load goes to loopback addresses only, for bounded
times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.attack import run_attack
from bench.capacity import run_capacity
from bench.charts import draw_all
from bench.config import FULL, QUICK, BenchConfig, Cores
from bench.failover import run_failover
from bench.logins import run_logins
from bench.procs import REPO_ROOT, bench_environment
from bench.profiling import summarise
from bench.report import render_report, render_summary, verdicts
from bench.rows import run_rows
from bench.scaling import run_scaling
from bench.stack import BenchStack
from bench.validation import run_validation
from bench.wrk import ensure_wrk
from tessera_demo.stack_control import own_servers_env

__all__ = ["SECTIONS", "main", "run"]

SECTIONS = (
    "validation",
    "logins",
    "attack",
    "micro",
    "rows",
    "failover",
    "scaling",
    "capacity",
)
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _git() -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    except OSError:
        return "n/a"


def _micro(config: BenchConfig, cores: Cores | None, out_dir: Path) -> dict[str, Any]:
    """``python -m bench.micro`` in a process of its own (own PostgreSQL and Redis), server core."""
    output = out_dir / "micro.json"
    env = own_servers_env(bench_environment())
    command = [
        sys.executable,
        "-m",
        "bench.micro",
        "--rounds",
        str(config.micro_rounds),
        "--logins",
        str(config.micro_logins),
        "--verifications",
        str(config.micro_verifications),
        "--json",
        str(output),
    ]
    if cores is not None:
        command = ["taskset", "-c", str(cores.server), *command]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"bench.micro failed:\n{result.stdout}{result.stderr}")
    micro: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return micro


async def run(
    config: BenchConfig,
    out_dir: Path,
    sections: tuple[str, ...],
    *,
    alg: str,
    command: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run the sections into ``out_dir``; the results (also written as results.json)."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    cores = Cores.detect()
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "config": config.to_json(),
            "sections": list(sections),
            "git": _git(),
            "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "algorithm": alg,
            "cores": None if cores is None else {"server": cores.server, "load": cores.load},
            "loadavg_before": _loadavg(),
        }
    }

    def save() -> None:
        results["meta"]["elapsed_s"] = time.monotonic() - started
        results["meta"]["loadavg_after"] = _loadavg()
        (out_dir / "results.json").write_text(
            json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8"
        )

    if {"validation", "logins", "attack", "rows", "scaling", "capacity"} & set(sections):
        ensure_wrk()
        with tempfile.TemporaryDirectory(prefix="tessera-bench-") as run_dir:
            stack = BenchStack(Path(run_dir) / "run", alg=alg)
            try:
                progress("starting the stack (row 6, one replica)")
                stack.up(row=6, replicas=1)
                if "capacity" in sections:
                    # First, while nothing else has written to the stack's Redis.
                    progress("8: what a session, a login and a revocation leave behind")
                    results["capacity"] = await run_capacity(stack, config, progress)
                    save()
                if "validation" in sections:
                    progress("1+4: validation cost on one replica, and the peers")
                    results["validation"] = await run_validation(
                        stack, config, cores, out_dir, progress
                    )
                    save()
                if "logins" in sections:
                    progress("3: logins and refreshes vs raw Argon2")
                    results["logins"] = await run_logins(stack, config, cores, out_dir, progress)
                    save()
                if "attack" in sections:
                    progress("6: logins while an attacker floods the auth service")
                    results["attack"] = await run_attack(stack, config, cores, progress)
                    save()
                if "scaling" in sections:
                    progress("7: multi-core, one replica with 1 and with 2 workers")
                    results["scaling"] = await run_scaling(stack, config, cores, progress)
                    save()
                if "rows" in sections:
                    progress(f"2: the rows under load, {config.replicas} replicas")
                    stack.scale(config.replicas)
                    results["rows"] = await run_rows(stack, config, progress)
                    save()
            finally:
                progress("stopping the stack")
                stack.down(keep_logs_in=out_dir / "logs")
    if "failover" in sections:
        with tempfile.TemporaryDirectory(prefix="tessera-bench-failover-") as run_dir:
            progress("5: the shared store fails under load (rows 4 and 5)")
            results["failover"] = await run_failover(config, Path(run_dir), alg, progress)
            save()
    if "micro" in sections:
        progress("micro-benchmark (in-process)")
        results["micro"] = await asyncio.to_thread(_micro, config, cores, out_dir)
    save()
    render(results, out_dir)
    save()
    return results


def render(results: dict[str, Any], out_dir: Path) -> None:
    """Verdicts, charts, ``summary.md`` and ``report.md`` from ``results``."""
    results["verdicts"] = [verdict.to_json() for verdict in verdicts(results)]
    charts = draw_all(results, out_dir)
    (out_dir / "summary.md").write_text(render_summary(results), encoding="utf-8")
    (out_dir / "report.md").write_text(render_report(results, charts), encoding="utf-8")


def rerender(out_dir: Path) -> dict[str, Any]:
    """Render a finished run again (after a change to the report), profiles included."""
    results: dict[str, Any] = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    for section in ("validation", "logins"):
        for key in results.get(section, {}).get("profiles", {}):
            collapsed = out_dir / "profiles" / f"{key}.collapsed.txt"
            if collapsed.exists():
                results[section]["profiles"][key] = summarise(collapsed).to_json()
    render(results, out_dir)
    (out_dir / "results.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8"
    )
    return results


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs (bench-quick)")
    parser.add_argument(
        "--only", type=_sections, default=SECTIONS, help=f"comma list of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<time>)")
    parser.add_argument("--alg", default="ES256", help="JWT algorithm of the stack (default ES256)")
    parser.add_argument(
        "--render", type=Path, metavar="DIR", help="only render DIR's results.json again"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render_summary(rerender(args.render)))
        return 0
    config = QUICK if args.quick else FULL
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out or RESULTS_DIR / f"{stamp}-{config.name}"
    command = "make bench-quick" if args.quick else "make bench"
    if args.only != SECTIONS:
        command += f" BENCH_ARGS='--only {','.join(args.only)}'"
    began = time.monotonic()

    def progress(message: str) -> None:
        elapsed = time.monotonic() - began
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        results = asyncio.run(
            run(config, out_dir, args.only, alg=args.alg, command=command, progress=progress)
        )
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render_summary(results))
    print(f"report: {out_dir / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
