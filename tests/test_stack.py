"""The throwaway servers and the launcher's bookkeeping, against real processes; the
``./tessera`` command a newcomer runs, and the stack in a shell that sourced stack.env."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import yaml
from redis.asyncio import Redis

from tessera_auth.settings import load_settings as load_auth_settings
from tessera_demo.stack_control import up_on_free_ports
from tessera_platform.program import distribution_version
from tessera_resource.settings import load_settings as load_resource_settings
from tessera_stack import (
    PostgresServer,
    RedisServer,
    StackError,
    free_port,
    monitoring,
    services,
)
from tessera_stack.cli import main
from tessera_stack.launcher import EXIT_NOT_RUNNING
from tessera_stack.processes import port_is_open, read_pid_file
from tessera_stack.reconcile import ensure_secrets
from tessera_stack.rows import ROWS
from tessera_stack.servers import sweep_orphaned_scratch
from tessera_stack.services import INTROSPECTION_CLIENT_ID, ServiceSettings
from tessera_stack.state import Layout, ReplicaEntry, StackState
from tessera_verify.env import RecordedEnviron
from tests.stack_clients import https_client

from .private_stack import CHEAP_ARGON2, own_stack

REPO = Path(__file__).resolve().parents[1]


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_is_one_the_kernel_never_hands_out_meanwhile() -> None:
    """Below the ephemeral range: nothing bound to port 0 and no outgoing connection can
    take it before the caller binds it (nginx found its chosen port taken in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    # Hold a few chosen ports while choosing the next: none is handed out twice.
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            port = free_port()
            assert port < low
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    finally:
        for sock in held:
            sock.close()


async def test_postgres_server_serves_the_tessera_database_until_stopped(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path)
    server.start()
    try:
        assert server.url == f"postgresql://tessera@127.0.0.1:{server.port}/tessera"
        connection = await asyncpg.connect(server.url)
        try:
            row = await connection.fetchrow(
                "SELECT current_database() AS db, current_user AS usr, "
                "current_setting('listen_addresses') AS listen, current_setting('fsync') AS fsync"
            )
            assert row is not None
            assert dict(row) == {
                "db": "tessera",
                "usr": "tessera",
                "listen": "127.0.0.1",
                "fsync": "off",
            }
        finally:
            await connection.close()
        port = server.port
    finally:
        server.stop()
    assert not server.running
    assert not port_is_open(port)
    server.remove_data()


async def test_postgres_data_survives_a_restart_and_remove_data_deletes_it(
    tmp_path: Path,
) -> None:
    server = PostgresServer(tmp_path)
    with server:
        connection = await asyncpg.connect(server.url)
        try:
            await connection.execute("CREATE TABLE kept (value text)")
            await connection.execute("INSERT INTO kept VALUES ('still here')")
        finally:
            await connection.close()
    data_dir = server.data_dir
    assert (data_dir / "PG_VERSION").is_file()

    with server:
        connection = await asyncpg.connect(server.url)
        try:
            assert await connection.fetchval("SELECT value FROM kept") == "still here"
        finally:
            await connection.close()

    server.remove_data()
    assert not data_dir.exists()
    assert not (tmp_path / "postgres").exists()
    # As root, pytest's 0700 tmp_path sends the cluster to a scratch wrapper.
    assert not data_dir.parent.name.startswith("tessera-postgres-") or not (
        data_dir.parent.exists()
    )


def test_detached_postgres_is_stopped_by_a_new_object_through_its_pid_file(
    tmp_path: Path,
) -> None:
    pid_path = tmp_path / "pids" / "postgres.pid"
    first = PostgresServer(tmp_path, pid_path=pid_path, detached=True)
    first.start()
    port = first.port
    try:
        assert pid_path.read_text().strip() == str(first.pid)
        later = PostgresServer(tmp_path, pid_path=pid_path)
        assert later.pid == first.pid
        later.stop()
        assert not later.running
        assert not pid_path.exists()
        assert not port_is_open(port)
    finally:
        first.stop()
        first.remove_data()


async def test_redis_server_answers_and_keeps_nothing_across_restarts(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = Redis.from_url(server.url)
        try:
            assert await client.ping()
            assert await client.config_get("save") == {"save": ""}
            assert await client.config_get("appendonly") == {"appendonly": "no"}
            await client.set("k", "v")
        finally:
            await client.aclose()
        port = server.port
    assert not server.running
    assert not port_is_open(port)

    with server:
        client = Redis.from_url(server.url)
        try:
            assert await client.get("k") is None
        finally:
            await client.aclose()


async def test_persistent_redis_comes_back_from_sigkill_on_its_port_with_its_data(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path, port=free_port(), persistent=True)
    with server:
        client = Redis.from_url(server.url)
        try:
            assert await client.config_get("appendonly") == {"appendonly": "yes"}
            assert await client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert await client.config_get("aof-use-rdb-preamble") == {
                "aof-use-rdb-preamble": "yes"
            }
            await client.set("session", "kept", ex=600)
        finally:
            await client.aclose()
        pid, port = server.pid, server.port
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash: no shutdown, no final save
        for _ in range(200):
            if not server.running:
                break
            await asyncio.sleep(0.02)
        assert not server.running
        assert (server.data_dir / "appendonlydir").is_dir()

    with server:
        assert server.port == port
        client = Redis.from_url(server.url)
        try:
            assert await client.get("session") == b"kept"
            assert 0 < await client.ttl("session") <= 600
        finally:
            await client.aclose()
    server.remove_data()
    assert not server.data_dir.exists()


def test_detached_redis_is_stopped_by_a_new_object_through_its_pid_file(tmp_path: Path) -> None:
    pid_path = tmp_path / "redis.pid"
    first = RedisServer(tmp_path, pid_path=pid_path, detached=True)
    first.start()
    port = first.port
    try:
        later = RedisServer(tmp_path, pid_path=pid_path)
        assert later.pid == first.pid
        later.stop()
        assert not pid_path.exists()
        assert not port_is_open(port)
    finally:
        first.stop()


def test_a_requested_port_that_is_taken_is_refused_without_touching_its_owner(
    tmp_path: Path,
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} .* already in use"):
            RedisServer(tmp_path, port=port).start()
        assert port_is_open(port)


def test_stale_pid_file_of_another_program_is_not_treated_as_the_server(
    tmp_path: Path,
) -> None:
    pid_path = tmp_path / "redis.pid"
    # Our own pid: alive, but not redis-server.
    pid_path.write_text(f"{os.getpid()}\n")
    server = RedisServer(tmp_path, pid_path=pid_path)
    assert not server.running
    server.stop()
    assert not pid_path.exists()


def test_status_and_down_without_a_stack_report_nothing_running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == EXIT_NOT_RUNNING
    status = capsys.readouterr().out
    assert [line.split() for line in status.splitlines()] == [
        ["auth", "stopped"],
        ["postgres", "stopped"],
        ["redis", "stopped"],
    ]
    assert main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "nothing was running"
    assert not (tmp_path / ".run" / "stack.env").exists()


def test_orphaned_scratch_clusters_are_swept_and_referenced_ones_kept(tmp_path: Path) -> None:
    def scratch(name: str, owner: Path, *, age: float) -> Path:
        wrapper = tmp_path / f"tessera-postgres-{name}"
        (wrapper / "data").mkdir(parents=True)
        (wrapper / "owner").write_text(f"{owner}\n")
        stamp = time.time() - age
        os.utime(wrapper, (stamp, stamp))
        return wrapper

    hour = 3600.0
    orphan = scratch("orphan", tmp_path / "gone" / "postgres", age=hour)
    young = scratch("young", tmp_path / "gone-too" / "postgres", age=1.0)
    link = tmp_path / "base" / "postgres"
    link.parent.mkdir()
    referenced = scratch("referenced", link, age=hour)
    link.symlink_to(referenced / "data")
    os.utime(referenced, (time.time() - hour, time.time() - hour))
    unrelated = tmp_path / "tessera-postgres-without-owner"
    unrelated.mkdir()
    os.utime(unrelated, (time.time() - hour, time.time() - hour))

    sweep_orphaned_scratch(tmp_path)

    assert not orphan.exists()
    assert young.exists()
    assert referenced.exists()
    assert unrelated.exists()


@pytest.mark.parametrize("alg", ["ES256", "HS256"])
def test_the_stack_gives_each_service_only_variables_it_reads(
    alg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variable a service does not read is logged as a warning at its start
    # (a misspelling, or a secret handed to a process that has no use for it).
    for name in [name for name in os.environ if name.startswith("TESSERA_")]:
        monkeypatch.delenv(name)
    layout = Layout(tmp_path)
    layout.create()
    ensure_secrets(layout, alg)
    settings = ServiceSettings("postgresql://tessera@127.0.0.1/t", "redis://127.0.0.1/0", 1, 2, alg)
    environ = RecordedEnviron(services.auth_env(layout, settings))
    auth = load_auth_settings(environ)
    assert environ.unread() == []
    # The stack's introspection client, as stack.env names it.
    secret = layout.secret("introspection_client_secret").read_text().strip()
    assert auth.introspection_clients == ((INTROSPECTION_CLIENT_ID, secret.encode()),)
    for row in ROWS.values():
        environ = RecordedEnviron(
            services.replica_env(layout, settings, ReplicaEntry("r1", 3), row.methods)
        )
        load_resource_settings(environ)
        assert environ.unread() == [], f"row {row.number}"


# -- the tessera command and the shell that sourced stack.env ------------------------------

TESSERA = REPO / "tessera"
PASSWORD = "correct horse battery staple"


def _tessera(
    run_dir: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``./tessera --run-dir RUN_DIR ARGS`` as a newcomer runs it: no variable of ours set."""
    plain = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run(
        [str(TESSERA), "--run-dir", str(run_dir), *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        env={**plain, **CHEAP_ARGON2, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _exported(stack_env: Path) -> dict[str, str]:
    """What ``set -a; . .run/stack.env`` exports."""
    lines = stack_env.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


async def test_tessera_runs_the_stack_and_admin_commands_with_nothing_set(tmp_path: Path) -> None:
    run_dir = tmp_path / ".run"
    up = _tessera(run_dir, *up_on_free_ports(replicas=1))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "./tessera down" in up.stdout
        created = _tessera(run_dir, "users", "create", "Alice", "--password-stdin", stdin=PASSWORD)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["username"] == "alice"
        no_terminal = _tessera(run_dir, "users", "create", "bob")
        assert no_terminal.returncode == 2, no_terminal
        assert "--password-stdin" in no_terminal.stderr
        shown = _tessera(run_dir, "users", "show", "alice")
        assert json.loads(shown.stdout)["disabled"] is False
        keys = _tessera(run_dir, "keys", "status", "--json")
        assert keys.returncode == 0, keys.stderr
        assert json.loads(keys.stdout)["keys"]
        # The account is the running service's: it logs in through nginx.
        stack = _exported(run_dir / "stack.env")
        async with https_client(Path(stack["CA_CERT"])) as http:
            body = {"username": "alice", "password": PASSWORD, "credential": "token"}
            async with http.post(f"{stack['AUTH_URL']}/auth/login", json=body) as response:
                assert response.status == 200, await response.text()
                token = (await response.json())["access_token"]
            # stack.env's introspection client is one the auth service knows.
            client = f"{stack['INTROSPECTION_CLIENT_ID']}:{stack['INTROSPECTION_CLIENT_SECRET']}"
            basic = {"Authorization": "Basic " + base64.b64encode(client.encode()).decode()}
            async with http.post(
                stack["INTROSPECTION_URL"], data={"token": token}, headers=basic
            ) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["active"] is True
        assert stat.S_IMODE((run_dir / "stack.env").stat().st_mode) == 0o600
    finally:
        down = _tessera(run_dir, "down", "--purge")
    assert down.returncode == 0, down.stderr
    gone = _tessera(run_dir, "users", "show", "alice")
    assert gone.returncode == 1
    assert "the stack is not running; start it with `./tessera up`" in gone.stderr


def test_tessera_help_names_the_stack_demo_and_admin_commands_without_a_stack(
    tmp_path: Path,
) -> None:
    result = _tessera(tmp_path / ".run", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tessera ")
    for command in ("up", "down", "status", "logs", "row", "scale", "demo", "outage-probe"):
        assert f"\n    {command} " in result.stdout, command
    for command in ("users", "sessions", "keys", "audit"):
        assert f"\n    {command} " in result.stdout, command
    users = _tessera(tmp_path / ".run", "users", "--help")
    assert users.returncode == 0, users.stderr
    assert users.stdout.startswith("usage: tessera users [-h] COMMAND ...")
    version = _tessera(tmp_path / ".run", "--version")
    assert version.stdout.strip() == f"tessera {distribution_version('tessera-stack')}"


def test_a_shell_that_sourced_stack_env_restarts_the_stack_on_its_own_servers(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / ".run"
    up = _tessera(run_dir, *up_on_free_ports(replicas=1))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exported = _exported(run_dir / "stack.env")
        postgres = StackState.load(Layout(run_dir)).postgres_port
        # `up` again from that shell leaves the running servers alone.
        again = _tessera(run_dir, "up", env=exported)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "DATABASE_URL in the environment is the stack's own" in again.stdout
        state = StackState.load(Layout(run_dir))
        assert (state.postgres, state.redis, state.postgres_port) == (
            "managed",
            "managed",
            postgres,
        )
        assert "stopping the stack's own" not in again.stdout
        # down and up in that shell: the exported URLs name the stopped servers.
        assert _tessera(run_dir, "down", env=exported).returncode == 0
        restarted = _tessera(run_dir, *up_on_free_ports(replicas=1), env=exported)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        state = StackState.load(Layout(run_dir))
        assert (state.postgres, state.redis) == ("managed", "managed")
        assert state.database_url != exported["DATABASE_URL"]
    finally:
        assert _tessera(run_dir, "down", "--purge").returncode == 0
    # After --purge the stack no longer knows them: a server nobody runs is refused, clearly.
    refused = _tessera(run_dir, *up_on_free_ports(replicas=1), env=exported)
    try:
        assert refused.returncode == 1
        assert "where nothing answers" in refused.stderr
        assert "unset DATABASE_URL REDIS_URL" in refused.stderr
        assert "Traceback" not in refused.stdout + refused.stderr
    finally:
        _tessera(run_dir, "down", "--purge")


# -- optional monitoring: up --monitoring (make up MONITORING=1) -----------------------------

RULES_DIR = REPO / "deploy" / "prometheus" / "rules"


async def _prometheus_api(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with http.get(f"{url}/api/v1/{path}") as response:
        body = await response.json()
        assert body["status"] == "success", body
        return body["data"]


async def _targets_up(
    http: aiohttp.ClientSession, url: str, expected: dict[str, set[str]]
) -> dict[str, set[str]]:
    """Poll Prometheus until the tessera jobs' targets are ``expected`` and all up (at
    most a minute: the stack's scrape interval is 5 s); what it has at the end."""
    seen: dict[str, set[str]] = {}
    for _ in range(300):
        active = (await _prometheus_api(http, url, "targets"))["activeTargets"]
        seen = {}
        for target in active:
            if target["labels"]["job"].startswith("tessera-") and target["health"] == "up":
                seen.setdefault(target["labels"]["job"], set()).add(target["labels"]["instance"])
        if seen == expected:
            break
        await asyncio.sleep(0.2)
    return seen


async def test_monitoring_runs_prometheus_on_the_stack_with_the_alert_rules(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / ".run"
    up = _tessera(run_dir, *up_on_free_ports("--monitoring", replicas=2))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        stack = _exported(run_dir / "stack.env")
        prometheus = stack["PROMETHEUS_URL"]
        assert f"prometheus  {prometheus}" in up.stdout
        auth = urlsplit(stack["AUTH_INTERNAL_URL"]).netloc

        def expected() -> dict[str, set[str]]:
            replicas = _exported(run_dir / "stack.env")["REPLICA_URLS"].split(",")
            return {
                "tessera-auth": {auth},
                "tessera-resource": {urlsplit(url).netloc for url in replicas},
            }

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            assert await _targets_up(http, prometheus, expected()) == expected()
            groups = (await _prometheus_api(http, prometheus, "rules"))["groups"]
            loaded = {rule["name"] for group in groups for rule in group["rules"]}
            written = {
                rule.get("alert") or rule.get("record")
                for path in RULES_DIR.glob("*.yml")
                for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
                for rule in group["rules"]
            }
            assert loaded == written
            # Replicas that come later are scraped too, without restarting Prometheus.
            pid = read_pid_file(Layout(run_dir).pid("prometheus"))
            scaled = _tessera(run_dir, "scale", "3")
            assert scaled.returncode == 0, scaled.stdout + scaled.stderr
            assert len(expected()["tessera-resource"]) == 3
            assert await _targets_up(http, prometheus, expected()) == expected()
            assert read_pid_file(Layout(run_dir).pid("prometheus")) == pid
        status = _tessera(run_dir, "status")
        assert any(
            line.split()[:2] == ["prometheus", "running"] for line in status.stdout.splitlines()
        )
    finally:
        down = _tessera(run_dir, "down", "--purge")
    assert down.returncode == 0, down.stderr
    assert "prometheus" in down.stdout
    assert not port_is_open(urlsplit(prometheus).port or 0)


def test_the_local_monitoring_keeps_the_job_names_of_the_compose_configuration() -> None:
    # The dashboard and the alert rules select by job: the local Prometheus must not rename.
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {monitoring.AUTH_JOB, monitoring.REPLICA_JOB} <= jobs
    assert monitoring.rules_dir() == RULES_DIR


async def test_a_replica_whose_port_was_taken_meanwhile_moves_to_a_free_one(
    tmp_path: Path,
) -> None:
    """A replica's port is chosen free, but another program may bind it before the
    replica does (under load), or take it while the replica is down (here: killed,
    then ``up`` restarts it on its recorded port): the replica moves to a free port
    and nginx is told, instead of ``up`` failing."""
    with own_stack(tmp_path / "run") as stack:
        first = StackState.load(stack.layout).replicas[0]
        code, output = stack.run("kill-replica", first.id)
        assert code == 0, output
        with socket.socket() as squatter:
            # The killed replica's connections may linger in TIME_WAIT: a listener may
            # still bind with SO_REUSEADDR (the replica's own bind then fails: a listener
            # is there), once the kernel has let go of the killed one.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for _ in range(50):
                try:
                    squatter.bind(("127.0.0.1", first.port))
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail(f"port {first.port} stayed held after the replica was killed")
            squatter.listen()
            code, output = await asyncio.to_thread(stack.run, "up")
            assert code == 0, output
            assert f"{first.id}: port {first.port} is taken; moving to" in output
            moved = next(r for r in StackState.load(stack.layout).replicas if r.id == first.id)
            assert moved.port != first.port
            nginx_conf = "\n".join(
                path.read_text() for path in stack.layout.nginx_conf.glob("*.conf")
            )
            assert f"127.0.0.1:{moved.port}" in nginx_conf
            assert f"127.0.0.1:{first.port}" not in nginx_conf
            async with aiohttp.ClientSession() as session:
                ready = await session.get(f"http://127.0.0.1:{moved.port}/readyz")
                assert ready.status == 200
