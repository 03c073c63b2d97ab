"""TESSERA_WORKERS: N worker processes serve one port, and stop together.

Real processes only: a resource replica (and the auth service) started as
``python -m ...`` with two workers, against the test PostgreSQL and Redis.
Which process answered a request is read from the kernel, not from the
service: the worker whose file descriptors hold the server side of the
client's TCP connection (``/proc/net/tcp`` and ``/proc/<pid>/fd``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tessera_stack import free_port

from .fixtures_infra import throwaway_database

#: Bounds on polling loops (the machine may be busy): never asserted as durations.
READY_WITHIN = 60.0
STOP_WITHIN = 60.0
CONNECTIONS_TRIED = 200
LISTEN = "0A"
ESTABLISHED = "01"


def _tcp_sockets() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket."""
    found = []
    for line in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        found.append(
            (int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state, int(inode))
        )
    return found


def _listeners(port: int) -> int:
    return sum(1 for local, _, state, _ in _tcp_sockets() if local == port and state == LISTEN)


def _children(pid: int) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text(encoding="ascii")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(entry.name))
    return children


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _worker_pids(supervisor: int, port: int) -> set[int]:
    """The supervisor's children that hold a listening socket on ``port``."""
    listening = {
        inode for local, _, state, inode in _tcp_sockets() if local == port and state == LISTEN
    }
    return {pid for pid in _children(supervisor) if _socket_inodes(pid) & listening}


def _serving_pid(candidates: set[int], port: int, client_port: int) -> int | None:
    """Which of ``candidates`` holds the server side of the connection from ``client_port``."""
    server_side = {
        inode
        for local, remote, state, inode in _tcp_sockets()
        if local == port and remote == client_port and state == ESTABLISHED
    }
    for pid in candidates:
        if _socket_inodes(pid) & server_side:
            return pid
    return None


def _workers_answering(
    workers: set[int], port: int, path: str, check: Callable[[Any], bool]
) -> set[int]:
    """Which of ``workers`` answered ``GET path`` on new connections (each answer a 200
    whose JSON body passes ``check``), connecting until all have or the tries run out.

    The kernel spreads connections over the workers by their addresses: new
    connections, kept open until the serving process is known."""
    served_by: set[int] = set()
    for _ in range(CONNECTIONS_TRIED):
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as connection:
            connection.request("GET", path)
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 200
            assert check(body)
            assert connection.sock is not None
            client_port = connection.sock.getsockname()[1]
            pid = _serving_pid(workers, port, client_port)
            assert pid is not None, "no worker holds the connection"
            served_by.add(pid)
        if served_by == workers:
            break
    return served_by


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as connection:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())


#: A service's supervisor process and its port.
Service = tuple[subprocess.Popen[bytes], int]


def _environment(database_url: str, redis_url: str, port: int, **changes: str) -> dict[str, str]:
    return {
        **os.environ,
        "TESSERA_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TESSERA_PORT": str(port),
        # Nothing listens there: these tests never need the auth service.
        "TESSERA_AUTH_URL": f"http://127.0.0.1:{free_port()}",
        "TESSERA_AUTH_METHODS": "shared_session",
        "TESSERA_REPLICA_ID": "multi",
        "TESSERA_WORKERS": "2",
        "TESSERA_LOG_FORMAT": "text",
        "TESSERA_ACCESS_LOG": "0",
        **changes,
    }


@contextmanager
def _started(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running until the block ends; killed (its workers too) if still running."""
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            workers = _children(process.pid)
            process.kill()
            process.wait()
            for pid in workers:  # the death signal stops them; make sure
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _wait_for_workers(process: subprocess.Popen[bytes], port: int, count: int) -> set[int]:
    """Until ``count`` workers listen on ``port`` and /readyz answers 200; their pids."""
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        workers = _worker_pids(process.pid, port)
        if len(workers) == count and _listeners(port) == count:
            try:
                if _get(port, "/readyz")[0] == 200:
                    return workers
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not start listening on {port}")


def _wait_exit(process: subprocess.Popen[bytes]) -> int:
    return process.wait(STOP_WITHIN)


@pytest.fixture
def replica(test_database_url: str, redis_url: str) -> Iterator[Service]:
    """A resource replica with TESSERA_WORKERS=2, both workers listening."""
    port = free_port()
    env = _environment(test_database_url, redis_url, port)
    with _started([sys.executable, "-m", "tessera_resource", "serve"], env) as process:
        _wait_for_workers(process, port, 2)
        yield process, port


def test_two_worker_processes_answer_on_the_one_port(
    replica: Service,
) -> None:
    process, port = replica
    workers = _worker_pids(process.pid, port)
    assert len(workers) == 2
    assert process.pid not in workers  # the supervisor itself serves nothing
    served_by = _workers_answering(
        workers, port, "/healthz", lambda body: body["replica"] == "multi"
    )
    assert served_by == workers


def test_sigterm_to_the_supervisor_stops_every_worker_and_exits_0(
    replica: Service,
) -> None:
    process, port = replica
    workers = _worker_pids(process.pid, port)
    process.send_signal(signal.SIGTERM)
    assert _wait_exit(process) == 0
    assert not any(_is_running(pid) for pid in workers)
    assert _listeners(port) == 0


def test_a_worker_killed_stops_the_service_and_the_supervisor_exits_1(
    replica: Service,
) -> None:
    process, port = replica
    workers = _worker_pids(process.pid, port)
    killed, other = sorted(workers)
    os.kill(killed, signal.SIGKILL)
    # Not restarted, not left serving with one worker: the other drains, the service ends.
    assert _wait_exit(process) == 1
    assert not _is_running(other)
    assert _listeners(port) == 0


def test_the_workers_stop_when_the_supervisor_is_killed(
    replica: Service,
) -> None:
    process, port = replica
    workers = _worker_pids(process.pid, port)
    process.kill()
    process.wait()
    deadline = time.monotonic() + STOP_WITHIN
    while any(_is_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_is_running(pid) for pid in workers)
    assert _listeners(port) == 0


def _serve_until_it_exits(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A replica started with ``env`` that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "tessera_resource", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_replica_keeping_sessions_in_memory_refuses_two_workers() -> None:
    env = _environment(
        "postgresql://tessera@127.0.0.1:1/none",
        "redis://127.0.0.1:1/0",
        free_port(),
        TESSERA_AUTH_METHODS="jwt,local_session",
    )
    result = _serve_until_it_exits(env)
    assert result.returncode == 2
    assert "TESSERA_WORKERS=2 cannot serve local_session" in result.stderr


def test_workers_refuse_a_port_another_program_listens_on(
    test_database_url: str, redis_url: str
) -> None:
    # SO_REUSEPORT would let the workers share it unseen with a program that set it too.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _environment(test_database_url, redis_url, port)
        result = _serve_until_it_exits(env)
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr


def test_the_auth_service_runs_two_workers_that_both_load_the_keys(
    database_url: str, redis_url: str
) -> None:
    # Two workers starting at once on a fresh key ring (a database of its own: the run's
    # shared one holds keys other tests sealed with their own key-encryption key): one
    # creates the keys (advisory lock), both serve them.
    port = free_port()
    with throwaway_database(database_url, "tessera_workers") as fresh_database_url:
        env = {
            name: value
            for name, value in _environment(fresh_database_url, redis_url, port).items()
            if name not in ("TESSERA_AUTH_URL", "TESSERA_AUTH_METHODS", "TESSERA_REPLICA_ID")
        }
        _serve_two_auth_workers(env, port)


def _serve_two_auth_workers(env: dict[str, str], port: int) -> None:
    with _started([sys.executable, "-m", "tessera_auth", "serve"], env) as process:
        workers = _wait_for_workers(process, port, 2)
        seen = _workers_answering(
            workers, port, "/readyz", lambda body: body["checks"]["keys"] == "ok"
        )
        assert seen == workers
        process.send_signal(signal.SIGTERM)
        assert _wait_exit(process) == 0
