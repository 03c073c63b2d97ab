"""The stack the benchmark measures: tessera's own launcher, in a run directory of its own.

The benchmark drives ``python -m tessera_stack`` as a subprocess exactly as
an operator would (``up``, ``row``, ``add-replica``, ``scale``,
``kill-replica``, ``down``), on free ports and in its own run directory, so
it never touches a stack started with ``make up``. Every service gets
``TESSERA_ACCESS_LOG=0`` and ``TESSERA_LOG_LEVEL=WARNING`` (the launcher
passes the caller's environment through), so what is measured is the
service and not its logging.

Processes the benchmark starts itself (the all-methods replica, the peers,
the throttled auth service of part 6) are :class:`ExtraProcess` objects:
started detached, checked to be the process that answers on their port (an
auth service names no identity: it must answer ``/readyz`` and still run),
stopped by pid.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.config import Cores
from bench.procs import ORIGINAL_CORES, pin, pinned_command, process_tree
from tessera_demo.stack_control import up_on_free_ports
from tessera_stack import free_port
from tessera_stack.nginx_conf import render_to, revocation_max_staleness
from tessera_stack.processes import StackError, is_alive
from tessera_stack.reconcile import nginx_config
from tessera_stack.servers.nginx_server import NginxServer
from tessera_stack.services import (
    AUTH_PROGRAM,
    REPLICA_PROGRAM,
    ServiceSettings,
    auth_env,
    readyz,
    replica_env,
    running_pid,
)
from tessera_stack.state import AUTH, Layout, ReplicaEntry, StackState

__all__ = ["BENCH_SERVICE_ENV", "BenchStack", "ExtraProcess", "healthz_id"]

LOOPBACK = "127.0.0.1"
#: What every measured service runs with: no per-request log line, warnings only.
#: The stack's nginx as by default, without the forward-auth cache, whatever the shell
#: running the bench asks for (part 1 measures the cache on a second nginx).
BENCH_SERVICE_ENV = {
    "TESSERA_ACCESS_LOG": "0",
    "TESSERA_LOG_LEVEL": "WARNING",
    "TESSERA_FORWARD_AUTH_CACHE_SECONDS": "0",
}
CLI_TIMEOUT = 240.0
READY_TIMEOUT = 30.0


def healthz_id(port: int, path: str = "/healthz") -> str | None:
    """The ``replica`` a service on ``port`` names in its /healthz answer, else ``None``."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        payload = json.loads(body)
        replica = payload.get("replica") if isinstance(payload, dict) else None
        return replica if isinstance(replica, str) else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()


@dataclass
class ExtraProcess:
    """A process the benchmark started itself (not through the launcher)."""

    name: str
    #: What its /healthz names; ``None`` for a process that names nothing (an auth service).
    identity: str | None
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def answers(self) -> bool:
        """Whether this process answers on its port: /healthz names it, or /readyz says 200."""
        if self.identity is None:
            # Nothing to tell it from another program by: it must still run once it answers
            # (a process that could not bind its port exits).
            return readyz(self.port) and self.proc.poll() is None
        return healthz_id(self.port) == self.identity

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until this process answers; a port taken by someone else is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode}; see {self.log_path}"
                )
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout:g} s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class BenchStack:
    """A tessera stack in ``run_dir`` that the benchmark starts, drives and stops."""

    def __init__(self, run_dir: Path, *, alg: str = "ES256") -> None:
        self.layout = Layout(run_dir.absolute())
        self.alg = alg
        self.env = {**os.environ, **BENCH_SERVICE_ENV}
        self.extras: list[ExtraProcess] = []
        #: Second nginx servers in front of the same stack (:meth:`start_side_nginx`).
        self.side_nginx: dict[str, NginxServer] = {}

    # -- the launcher ----------------------------------------------------------------

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run one launcher command and return its output; RuntimeError when it fails."""
        command = [sys.executable, "-m", "tessera_stack", "--run-dir", str(self.layout.root)]
        try:
            result = subprocess.run(
                [*command, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"tessera_stack {' '.join(args)} took over {timeout:g} s") from None
        if result.returncode != 0:
            raise RuntimeError(
                f"tessera_stack {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def up(self, *, row: int, replicas: int, redis: str = "single") -> None:
        """Start the stack on free ports (twice at most: another program may take one);
        ``redis``: the topology of its own Redis (``up --redis``)."""
        problem = ""
        for _ in range(2):
            try:
                self.cli(
                    *up_on_free_ports(
                        "--row",
                        str(row),
                        "--alg",
                        self.alg,
                        *(("--redis", redis) if redis != "single" else ()),
                        replicas=replicas,
                    )
                )
                self.check_replicas()
                return
            except RuntimeError as exc:
                problem = str(exc)
                self.cli("down")
        raise RuntimeError(f"could not start the benchmark's stack: {problem}")

    def row(self, number: int) -> None:
        self.cli("row", str(number))
        self.check_replicas()

    def add_replica(self) -> str:
        before = {entry.id for entry in self.state().replicas}
        self.cli("add-replica")
        self.check_replicas()
        added = [entry.id for entry in self.state().replicas if entry.id not in before]
        return added[0] if added else ""

    def scale(self, count: int) -> None:
        self.cli("scale", str(count))
        self.check_replicas()

    def kill_replica(self, replica_id: str) -> None:
        self.cli("kill-replica", replica_id)

    def down(self, keep_logs_in: Path | None = None) -> None:
        """Stop the extras and the stack; copy the service logs first (not nginx's access log)."""
        for extra in reversed(self.extras):
            extra.stop()
        self.extras.clear()
        for name in list(self.side_nginx):
            self.stop_side_nginx(name)
        if keep_logs_in is not None and self.layout.logs.is_dir():
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for log in self.layout.logs.glob("*.log"):
                if log.name != "nginx-access.log":
                    shutil.copy2(log, keep_logs_in / log.name)
        if self.layout.root.exists():
            self.cli("down", "--purge")

    def check_replicas(self) -> None:
        """Every replica the state lists runs and is the process answering on its port.

        Other programs on this machine may use loopback ports too; a replica
        that could not bind would otherwise go unnoticed behind someone
        else's answer.
        """
        for entry in self.state().replicas:
            if running_pid(self.layout, entry.process, REPLICA_PROGRAM) is None:
                raise RuntimeError(f"replica {entry.id} is not running (port {entry.port} taken?)")
            if healthz_id(entry.port) != entry.id:
                raise RuntimeError(f"port {entry.port} is not answered by replica {entry.id}")

    # -- what runs --------------------------------------------------------------------

    def state(self) -> StackState:
        return StackState.load(self.layout)

    @property
    def settings(self) -> ServiceSettings:
        state = self.state()
        assert state.port is not None
        assert state.https_port is not None
        return ServiceSettings(
            database_url=state.database_url,
            redis_url=state.redis_url,
            auth_port=state.port,
            https_port=state.https_port,
            alg=state.alg or self.alg,
        )

    @property
    def base_url(self) -> str:
        """nginx, with TLS."""
        return self.settings.issuer

    @property
    def auth_url(self) -> str:
        """The auth service directly (plain HTTP on loopback)."""
        return self.settings.auth_internal_url

    @property
    def ca_cert(self) -> Path:
        return self.layout.tls.ca_cert.absolute()

    def replicas(self) -> list[ReplicaEntry]:
        return list(self.state().replicas)

    def replica_url(self, replica_id: str) -> str:
        entry = self.state().replica(replica_id)
        if entry is None:
            raise KeyError(replica_id)
        return f"http://{LOOPBACK}:{entry.port}"

    def replica_pid(self, replica_id: str) -> int | None:
        entry = self.state().replica(replica_id)
        if entry is None:
            return None
        return running_pid(self.layout, entry.process, REPLICA_PROGRAM)

    def auth_pid(self) -> int | None:
        return running_pid(self.layout, AUTH, AUTH_PROGRAM)

    def nginx_pids(self) -> list[int]:
        https_port = self.state().https_port
        if https_port is None:
            return []
        master = self.layout.nginx_server(https_port).pid
        return process_tree(master) if master is not None else []

    def redis_pids(self) -> list[int]:
        pid = self.layout.redis().pid
        return [pid] if pid is not None and is_alive(pid) else []

    def postgres_pids(self) -> list[int]:
        pid = self.layout.postgres().pid
        return process_tree(pid) if pid is not None and is_alive(pid) else []

    def service_pids(self) -> dict[str, list[int]]:
        """Every process of the stack, by name: auth, r1..., nginx, redis, postgres."""
        groups: dict[str, list[int]] = {}
        if (auth := self.auth_pid()) is not None:
            groups["auth"] = [auth]
        for entry in self.replicas():
            if (pid := self.replica_pid(entry.id)) is not None:
                groups[entry.id] = [pid]
        groups["nginx"] = self.nginx_pids()
        groups["redis"] = self.redis_pids()
        groups["postgres"] = self.postgres_pids()
        for extra in self.extras:
            if extra.proc.poll() is None:
                groups[extra.name] = [extra.pid]
        for name, server in self.side_nginx.items():
            master = server.pid
            groups[name] = process_tree(master) if master is not None else []
        return groups

    def pin_all(self, cores: Sequence[int]) -> None:
        """Pin every process of the stack (and the extras) to ``cores``."""
        pin([pid for pids in self.service_pids().values() for pid in pids], cores)

    def pin_for_measurement(self, cores: Cores, measured: Iterable[int]) -> None:
        """The stack and this process (the load) on the load core, ``measured`` alone on the
        server core; :meth:`unpin` undoes it."""
        self.pin_all([cores.load])
        pin([os.getpid()], [cores.load])
        pin(measured, [cores.server])

    def unpin(self) -> None:
        """This process and the stack back on the cores this process started with."""
        pin([os.getpid()], ORIGINAL_CORES)
        self.pin_all(ORIGINAL_CORES)

    # -- processes of the benchmark's own ---------------------------------------------

    def auth_environment(self) -> dict[str, str]:
        """The auth service's environment (to read its settings: Argon2 cost, key ring)."""
        env = auth_env(self.layout, self.settings)
        env.update(BENCH_SERVICE_ENV)
        return env

    def spawn_replica(
        self, name: str, methods: str, changes: Mapping[str, str] | None = None
    ) -> ExtraProcess:
        """One more resource replica, outside nginx, accepting ``methods``, its
        environment the launcher's with ``changes``."""
        identity = f"{name}{secrets.token_hex(3)}"
        port = free_port()
        env = replica_env(self.layout, self.settings, ReplicaEntry(identity, port), methods)
        env.update(BENCH_SERVICE_ENV)
        env.update(changes or {})
        return self.spawn(
            name, identity, port, [sys.executable, "-m", REPLICA_PROGRAM, "serve"], env
        )

    def spawn_auth(
        self, name: str, changes: Mapping[str, str], cores: Sequence[int] | None
    ) -> ExtraProcess:
        """One more auth service on the stack's PostgreSQL and Redis, outside nginx, its
        environment the launcher's with ``changes``; started on ``cores`` (so it sizes its
        Argon2 pool for them)."""
        port = free_port()
        env = {**self.auth_environment(), **changes, "TESSERA_PORT": str(port)}
        command = pinned_command([sys.executable, "-m", AUTH_PROGRAM, "serve"], cores)
        return self.spawn(name, None, port, command, env)

    def start_side_nginx(self, name: str, *, forward_auth_cache_seconds: int) -> NginxServer:
        """A second nginx in front of the same auth service and replicas, on a port of its
        own: the stack's policy, TLS and secret, rendered by the launcher's own code, but
        with ``forward_auth_cache_seconds`` (which the launcher checks as it would its
        own: never past the services' staleness bound). Measured beside the stack's
        nginx; its CPU is the group ``name`` of :meth:`service_pids`. Started twice at
        most: another program may take the port it was given."""
        root = self.layout.root / name
        state = self.state()
        problem = ""
        for _ in range(2):
            port = free_port()
            config = replace(
                nginx_config(self.layout, state, state.replicas),
                nginx_dir=root.absolute(),
                log_dir=(root / "logs").absolute(),
                https_port=port,
                live_port=None,
                forward_auth_cache_seconds=forward_auth_cache_seconds,
                revocation_max_staleness=revocation_max_staleness(self.env),
            )
            if problems := config.problems():
                raise RuntimeError(f"{name}: {'; '.join(problems)}")
            (root / "logs").mkdir(parents=True, exist_ok=True)
            server = NginxServer(
                root,
                render_to(config, root / "conf").entry,
                port=port,
                log_path=root / "logs" / "nginx.log",
                pid_path=root / "nginx-master.pid",
                detached=True,
            )
            try:
                server.start()
            except StackError as exc:
                problem = str(exc)
                continue
            self.side_nginx[name] = server
            return server
        raise RuntimeError(f"{name} did not start: {problem}")

    def stop_side_nginx(self, name: str) -> None:
        """Stop the second nginx ``name`` (if it runs), its log kept with the stack's."""
        server = self.side_nginx.pop(name, None)
        if server is None:
            return
        server.stop(timeout=10.0)
        log = self.layout.root / name / "logs" / "nginx.log"
        if log.is_file():
            self.layout.logs.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log, self.layout.log(name))

    def spawn(
        self,
        name: str,
        identity: str | None,
        port: int,
        command: Sequence[str],
        env: dict[str, str],
    ) -> ExtraProcess:
        """Start ``command`` detached (log in the run directory) and wait until it answers."""
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.layout.log(f"bench-{name}")
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        extra = ExtraProcess(name, identity, port, proc, log_path)
        self.extras.append(extra)
        extra.wait_ready()
        return extra
