"""The running stack under operation: a real Prometheus scrapes it with
deploy/prometheus/'s configuration and rules, and a rolling restart of every
replica through real nginx fails no request.

The stack (auth, three replicas, nginx with TLS) is started by the launcher in a
temporary run directory on free ports, on the test session's PostgreSQL and
Redis. Prometheus runs from the Debian package on loopback with a 1 s scrape
interval; its configuration is deploy/prometheus/prometheus.yml with the DNS
discovery of the compose services swapped for the stack's addresses.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from tessera_demo.stack_control import StackControl
from tessera_stack import free_port
from tessera_stack.processes import read_pid_file
from tests.stack_clients import https_client

from .private_stack import private_stack_fixture
from .test_prometheus_metrics import dashboard_queries, rule_queries

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PASSWORD = "correct horse battery staple"
# Bounds for the polling loops (counts, not timing assertions).
POLLS = 300
POLL_INTERVAL = 0.1
# Each client stops after this many requests even if the restart never ends.
MAX_REQUESTS_PER_CLIENT = 50_000


stack = private_stack_fixture(redis_db=6, name="live")


def _scrape_targets(stack: StackControl) -> dict[str, list[str]]:
    env = stack.env()
    return {
        "tessera-auth": [urlsplit(env["AUTH_INTERNAL_URL"]).netloc],
        "tessera-resource": [urlsplit(url).netloc for url in env["REPLICA_URLS"].split(",")],
    }


@pytest.fixture(scope="module")
def prometheus(stack: StackControl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the stack every second; its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs it (Debian package prometheus)"
    directory = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = _scrape_targets(stack)
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue  # Prometheus's own
        job = {key: value for key, value in job.items() if not key.endswith("_sd_configs")}
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
        jobs.append(job)
    assert {job["job_name"] for job in jobs} == set(targets)
    config["scrape_configs"] = jobs
    shutil.copytree(PROMETHEUS_DIR / "rules", directory / "rules")
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        problem = asyncio.run(_wait_ready(url, process))
        assert problem is None, f"{problem}:\n{(directory / 'prometheus.log').read_text()}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


async def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> str | None:
    """None once Prometheus answers /-/ready, else why it did not."""
    async with aiohttp.ClientSession() as http:
        for _ in range(POLLS):
            if process.poll() is not None:
                return f"prometheus exited with status {process.returncode}"
            try:
                async with http.get(f"{url}/-/ready") as response:
                    if response.status == 200:
                        return None
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(POLL_INTERVAL)
    return "prometheus did not become ready"


async def _api(http: aiohttp.ClientSession, url: str, path: str, **params: str) -> Any:
    async with http.get(f"{url}/api/v1/{path}", params=params) as response:
        body = await response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]


# -- Prometheus ---------------------------------------------------------------------


async def test_prometheus_scrapes_auth_and_every_replica_and_finds_every_target_up(
    stack: StackControl, prometheus: str
) -> None:
    env = stack.env()
    expected = {f"{env['AUTH_INTERNAL_URL']}/metrics"} | {
        f"{url}/metrics" for url in env["REPLICA_URLS"].split(",")
    }
    assert len(expected) == 4
    async with aiohttp.ClientSession() as http:
        for _ in range(POLLS):
            targets = (await _api(http, prometheus, "targets"))["activeTargets"]
            if len(targets) == 4 and all(target["health"] == "up" for target in targets):
                break
            await asyncio.sleep(POLL_INTERVAL)
        assert {target["scrapeUrl"] for target in targets} == expected
        assert [target["lastError"] for target in targets if target["health"] != "up"] == []
        jobs = Counter(target["labels"]["job"] for target in targets)
        assert jobs == {"tessera-auth": 1, "tessera-resource": 3}
        up = await _api(http, prometheus, "query", query='up{job=~"tessera-.*"}')
        assert sorted(float(series["value"][1]) for series in up["result"]) == [1.0] * 4


async def test_every_dashboard_and_alert_query_runs_on_the_scraped_metrics(
    stack: StackControl, prometheus: str
) -> None:
    queries = {**dashboard_queries(), **rule_queries()}
    per_replica = dashboard_queries()["tessera.json: Requests per replica [A]"]
    async with aiohttp.ClientSession() as http:
        for key, expr in queries.items():
            data = await _api(http, prometheus, "query", query=expr)
            assert data["resultType"] in ("vector", "scalar"), key
        # Once two scrapes are in, the load-balancer panel has a line per replica.
        for _ in range(POLLS):
            result = (await _api(http, prometheus, "query", query=per_replica))["result"]
            if len(result) == 3:
                break
            await asyncio.sleep(POLL_INTERVAL)
        assert {series["metric"]["instance"] for series in result} == set(
            _scrape_targets(stack)["tessera-resource"]
        )
        # The alert rules load and evaluate.
        for _ in range(POLLS):
            groups = (await _api(http, prometheus, "rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if rules and all(rule["health"] == "ok" for rule in rules):
                break
            await asyncio.sleep(POLL_INTERVAL)
        assert {rule["name"] for rule in rules} == {key.split(": ", 1)[1] for key in rule_queries()}
        assert [rule for rule in rules if rule["health"] != "ok"] == []
        firing = [rule["name"] for rule in rules if rule["state"] == "firing"]
        assert firing == []


# -- rolling restart ------------------------------------------------------------------


def _new_lines(path: Path, offset: int) -> list[str]:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()


async def _lines_for(path: Path, offset: int, marker: str, count: int) -> list[str]:
    """The lines after ``offset`` that hold ``marker``, once there are ``count`` of them
    (or after 5 s, a deadline: then as many as there are)."""
    for _ in range(50):
        lines = [line for line in _new_lines(path, offset) if marker in line]
        if len(lines) >= count:
            break
        await asyncio.sleep(0.1)
    return lines


def _replica_pids(stack: StackControl) -> dict[str, int | None]:
    return {
        entry.id: read_pid_file(stack.layout.pid(entry.process)) for entry in stack.state().replicas
    }


async def test_a_rolling_restart_of_every_replica_fails_no_request(stack: StackControl) -> None:
    base_url = stack.base_url
    before = _replica_pids(stack)
    assert len(before) == 3
    access_log, error_log = stack.layout.log("nginx-access"), stack.layout.log("nginx")
    access_start, error_start = access_log.stat().st_size, error_log.stat().st_size
    outcomes: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    async with https_client(stack.ca_cert) as http:
        username = f"rolling-{secrets.token_hex(4)}"
        credentials = {"username": username, "password": PASSWORD}
        async with http.post(f"{base_url}/auth/register", json=credentials) as response:
            assert response.status == 201
        async with http.post(f"{base_url}/auth/login", json=credentials) as response:
            assert response.status == 200
        done = asyncio.Event()

        async def client() -> None:
            # Keep-alive connections to nginx, as a browser's: nginx's graceful
            # reloads must not break them either.
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if done.is_set():
                    return
                try:
                    async with http.get(f"{base_url}/api/me") as response:
                        await response.read()
                        outcomes[str(response.status)] += 1
                        served_by[response.headers.get("X-Served-By", "?")] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcomes[type(exc).__name__] += 1

        clients = [asyncio.create_task(client()) for _ in range(4)]
        try:
            await asyncio.sleep(0)
            output = await stack.cli("restart-replicas", timeout=180)
        finally:
            done.set()
            await asyncio.gather(*clients)
        assert all(not task.exception() for task in clients)

        assert outcomes["200"] > 0
        assert outcomes == {"200": outcomes["200"]}, f"failed requests: {dict(outcomes)}"
        assert set(served_by) <= {"r1", "r2", "r3"}
        for replica_id in ("r1", "r2", "r3"):
            assert f"restarted replica {replica_id}" in output
        after = _replica_pids(stack)
        assert set(after) == set(before)
        assert all(after[r] is not None and after[r] != before[r] for r in before)

        # nginx saw no error either: it never sent a request to a stopping
        # replica, so it retried nothing (one upstream per request) and logged
        # no upstream failure.
        # nginx writes a request's line once the response is sent (its log phase): the
        # last ones may reach the file just after their client had its answer.
        proxied = await _lines_for(access_log, access_start, '"GET /api/me ', outcomes["200"])
        assert len(proxied) >= outcomes["200"]
        retried = [line for line in proxied if "upstream=" not in line or ", " in line]
        assert retried == []
        assert all(" ustatus=200 " in line for line in proxied)
        errors = [
            line
            for line in _new_lines(error_log, error_start)
            if "[error]" in line or "[crit]" in line or ("[warn]" in line and "upstream" in line)
        ]
        assert errors == []

        # Back in rotation, every restarted replica serves again.
        again: set[str] = set()
        for _ in range(9):
            async with http.get(f"{base_url}/api/me") as response:
                assert response.status == 200
                again.add(response.headers["X-Served-By"])
        assert again == {"r1", "r2", "r3"}
