"""The throwaway servers and the launcher's bookkeeping, against real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from tessera_auth.settings import load_settings as load_auth_settings
from tessera_resource.settings import load_settings as load_resource_settings
from tessera_stack import PostgresServer, RedisServer, StackError, free_port, services
from tessera_stack.cli import main
from tessera_stack.launcher import EXIT_NOT_RUNNING
from tessera_stack.processes import port_is_open
from tessera_stack.reconcile import SECRET_NAMES, ensure_secret
from tessera_stack.rows import ROWS
from tessera_stack.servers import sweep_orphaned_scratch
from tessera_stack.services import ServiceSettings
from tessera_stack.state import Layout, ReplicaEntry
from tessera_verify.env import RecordedEnviron


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


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
    for name in (*SECRET_NAMES, "jwt_hs256_secret"):
        ensure_secret(layout.secret(name))
    settings = ServiceSettings("postgresql://tessera@127.0.0.1/t", "redis://127.0.0.1/0", 1, 2, alg)
    environ = RecordedEnviron(services.auth_env(layout, settings))
    load_auth_settings(environ)
    assert environ.unread() == []
    for row in ROWS.values():
        environ = RecordedEnviron(
            services.replica_env(layout, settings, ReplicaEntry("r1", 3), row.methods)
        )
        load_resource_settings(environ)
        assert environ.unread() == [], f"row {row.number}"
