"""Optional local monitoring (``up --monitoring``, ``make up MONITORING=1``): Prometheus
on 127.0.0.1 scraping the stack's auth service and replicas, with the project's
alert rules (``deploy/prometheus/rules/``) loaded.

The configuration is ``deploy/prometheus/prometheus.yml``'s made local: the same
job names (the contract with the dashboard and the rules) and rule files, the
compose DNS discovery replaced by target files (``file_sd``) that every command
changing the replicas rewrites and Prometheus rereads by itself, and a 5 s
scrape interval for a stack one watches while changing it. It is written as
JSON, which YAML reads as it is, so the runtime install needs no YAML library.
``down`` stops Prometheus; its time series stay in ``data/prometheus`` until
``down --purge``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tessera_stack.processes import StackError, free_port, port_is_bindable, port_is_open
from tessera_stack.servers import LOOPBACK, PrometheusServer
from tessera_stack.state import Layout, StackState

__all__ = [
    "AUTH_JOB",
    "DEFAULT_PORT",
    "REPLICA_JOB",
    "ensure",
    "rules_dir",
    "stop",
    "write_targets",
]

DEFAULT_PORT = 9090
SCRAPE_INTERVAL = "5s"
#: The job names of deploy/prometheus/prometheus.yml (the dashboard's and the rules').
AUTH_JOB = "tessera-auth"
REPLICA_JOB = "tessera-resource"
STOP_TIMEOUT = 10.0


def rules_dir() -> Path:
    """``deploy/prometheus/rules/`` (the package lives in ``deploy/``)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "prometheus", Path.cwd() / "deploy" / "prometheus"):
        if (candidate / "rules").is_dir():
            return candidate / "rules"
    raise StackError(
        f"alert rules not found (looked in {here.parents[1] / 'prometheus' / 'rules'} "
        "and ./deploy/prometheus/rules)"
    )


def _targets_file(layout: Layout, job: str) -> Path:
    return layout.prometheus / "targets" / f"{job}.json"


def _config(layout: Layout, port: int) -> dict[str, Any]:
    def job(name: str) -> dict[str, Any]:
        return {
            "job_name": name,
            "metrics_path": "/metrics",
            "file_sd_configs": [{"files": [str(_targets_file(layout, name))]}],
        }

    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [str(rules_dir() / "*.yml")],
        "scrape_configs": [
            job(AUTH_JOB),
            job(REPLICA_JOB),
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{LOOPBACK}:{port}"]}]},
        ],
    }


def _write_json(path: Path, value: Any) -> None:
    """Atomically: Prometheus may read the file at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_targets(layout: Layout, state: StackState) -> None:
    """The auth service and the replicas as the stack runs them now."""
    auth = [f"{LOOPBACK}:{state.port}"] if state.port is not None else []
    replicas = [f"{LOOPBACK}:{entry.port}" for entry in state.replicas]
    for job, targets in ((AUTH_JOB, auth), (REPLICA_JOB, replicas)):
        _write_json(_targets_file(layout, job), [{"targets": targets}] if targets else [])


def _port(state: StackState) -> int:
    """The recorded port; else 9090 when free, else any free one."""
    if state.prometheus_port is not None:
        return state.prometheus_port
    if port_is_bindable(DEFAULT_PORT, LOOPBACK):
        return DEFAULT_PORT
    return free_port(LOOPBACK)


def ensure(layout: Layout, state: StackState) -> PrometheusServer:
    """Prometheus running with the stack's targets (started unless it runs), its port
    recorded in ``state``."""
    port = _port(state)
    server = layout.prometheus_server(port)
    _write_json(layout.prometheus / "prometheus.yml", _config(layout, port))
    write_targets(layout, state)
    if not server.running:
        if port_is_open(port, LOOPBACK):
            raise StackError(
                f"port {port} on {LOOPBACK}, where the stack's Prometheus listens, is in use "
                "by another program: stop it, or `./tessera down` and `up --monitoring` again "
                "(a new port is chosen)"
            )
        print(f"starting Prometheus on port {port} ...", flush=True)
        server.stop()  # clears a stale pid file
        server.start()
    state.prometheus_port = port
    return server


def stop(layout: Layout, state: StackState) -> bool:
    """Stop the stack's Prometheus; whether it ran."""
    server = layout.prometheus_server(state.prometheus_port or DEFAULT_PORT)
    running = server.running
    server.stop(timeout=STOP_TIMEOUT)
    return running
