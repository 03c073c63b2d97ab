"""tessera's own processes in the local stack: the auth service and the replicas.

Both are ``python -m <package> serve`` processes, detached from the
launcher (they outlive it), with stdout and stderr in ``logs/NAME.log`` and
their pid in ``pids/NAME.pid``; "ready" means ``GET /readyz`` answers 200.
The environment each gets is built here, from the stack's settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tessera_stack.processes import (
    StackError,
    answers_200,
    is_alive,
    log_tail,
    read_pid_file,
    terminate,
    wait_until,
    write_pid_file,
)
from tessera_stack.redis_acl import AUTH_USER, REPLICA_USER
from tessera_stack.servers import LOOPBACK
from tessera_stack.state import Layout, ReplicaEntry

__all__ = [
    "AUTH_PROGRAM",
    "REPLICA_PROGRAM",
    "Running",
    "ServiceSettings",
    "addresses",
    "auth_env",
    "migrate",
    "readyz",
    "replica_env",
    "replica_pid",
    "running_pid",
    "spawn",
    "stop",
    "wait_ready",
]

AUTH_PROGRAM = "tessera_auth"
REPLICA_PROGRAM = "tessera_resource"
READY_TIMEOUT = 30.0
MIGRATE_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
# nginx connects to the services from this address; only it may set
# X-Forwarded-For.
TRUSTED_PROXIES = f"{LOOPBACK}/32"
# Inline values the launcher replaces with *_FILE variables (the services
# refuse a secret given both ways), and development switches the stack
# must not inherit from the caller's shell.
_SCRUBBED = (
    "TESSERA_SESSION_HASH_KEY",
    "TESSERA_KEY_ENCRYPTION_KEY",
    "TESSERA_FORWARD_AUTH_SECRET",
    "TESSERA_JWT_HS256_SECRET",
    "TESSERA_INTROSPECTION_CLIENTS",
    "TESSERA_COOKIE_INSECURE",
    # The launcher's own, for nginx: no service reads it (each would warn so).
    "TESSERA_FORWARD_AUTH_CACHE_SECONDS",
)
# What a service reads once at start and connects to (or announces, or lets in)
# for as long as it runs: when one of these changes, the service must restart.
ADDRESS_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "TESSERA_PORT",
    "TESSERA_ISSUER",
    "TESSERA_AUTH_URL",
    "TESSERA_INTROSPECTION_CLIENTS_FILE",
)
#: The stack's introspection client (RFC 7662's protected resource): its secret is
#: secrets/introspection_client_secret, and stack.env hands both to scripts.
INTROSPECTION_CLIENT_ID = "resource-server"


@dataclass(frozen=True)
class ServiceSettings:
    """What the auth service and the replicas must agree on."""

    database_url: str
    redis_url: str
    auth_port: int
    https_port: int
    alg: str
    #: The Redis URL each role's user logs in with (empty: every service uses ``redis_url``).
    redis_role_urls: Mapping[str, str] = field(default_factory=dict)
    #: The replicas' own PostgreSQL role (empty: they use ``database_url``).
    replica_database_url: str = ""

    def redis_url_for(self, user: str) -> str:
        return self.redis_role_urls.get(user, self.redis_url)

    @property
    def issuer(self) -> str:
        """Tokens' ``iss``: the public origin, nginx with TLS."""
        return f"https://{LOOPBACK}:{self.https_port}"

    @property
    def auth_internal_url(self) -> str:
        """The auth service itself, behind nginx (JWKS and password checks)."""
        return f"http://{LOOPBACK}:{self.auth_port}"


def _base_env(layout: Layout, settings: ServiceSettings, redis_user: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url_for(redis_user),
        # Development allows the cheap Argon2 settings the tests use; the
        # secrets are real random ones and cookies are Secure regardless.
        TESSERA_ENV="development",
        TESSERA_HOST=LOOPBACK,
        TESSERA_ISSUER=settings.issuer,
        TESSERA_JWT_ALG=settings.alg,
        TESSERA_TRUSTED_PROXIES=TRUSTED_PROXIES,
        PYTHONUNBUFFERED="1",
    )
    return env


def _hs256_secret(layout: Layout, settings: ServiceSettings) -> dict[str, str]:
    """HS256's shared secret, for those who sign or verify JWTs in that mode."""
    if settings.alg != "HS256":
        return {}
    return {"TESSERA_JWT_HS256_SECRET_FILE": str(layout.secret("jwt_hs256_secret"))}


def auth_env(layout: Layout, settings: ServiceSettings) -> dict[str, str]:
    """The auth service's environment."""
    env = _base_env(layout, settings, AUTH_USER)
    env.update(
        TESSERA_PORT=str(settings.auth_port),
        TESSERA_SESSION_HASH_KEY_FILE=str(layout.secret("session_hash_key")),
        TESSERA_KEY_ENCRYPTION_KEY_FILE=str(layout.secret("key_encryption_key")),
        # The demo and the bench log dozens of users in at once to measure the
        # replicas, not Argon2 admission (503 server_busy past 2 x CPUs + 2 jobs).
        TESSERA_ARGON2_MAX_PENDING="256",
        TESSERA_INTROSPECTION_CLIENTS_FILE=str(layout.secret("introspection_clients")),
        **_hs256_secret(layout, settings),
    )
    return env


def replica_env(
    layout: Layout, settings: ServiceSettings, replica: ReplicaEntry, methods: str
) -> dict[str, str]:
    """Replica ``replica``'s environment, accepting the credentials in ``methods``."""
    env = _base_env(layout, settings, REPLICA_USER)
    env.update(
        DATABASE_URL=settings.replica_database_url or settings.database_url,
        TESSERA_PORT=str(replica.port),
        TESSERA_REPLICA_ID=replica.id,
        TESSERA_AUTH_URL=settings.auth_internal_url,
        TESSERA_AUTH_METHODS=methods,
    )
    # Each secret only where the replica's methods need it (least privilege).
    accepted = {method.strip() for method in methods.split(",")}
    if "jwt" in accepted:
        env.update(_hs256_secret(layout, settings))
    if "shared_session" in accepted:
        env["TESSERA_SESSION_HASH_KEY_FILE"] = str(layout.secret("session_hash_key"))
    if "forward" in accepted:
        env["TESSERA_FORWARD_AUTH_SECRET_FILE"] = str(layout.secret("forward_auth_secret"))
    return env


def addresses(env: Mapping[str, str]) -> dict[str, str]:
    """The addresses in a service's environment (``ADDRESS_VARIABLES``) it holds while it runs."""
    return {name: env[name] for name in ADDRESS_VARIABLES if name in env}


def migrate(layout: Layout, program: str, env: dict[str, str]) -> None:
    """Run ``python -m <program> migrate``; its output goes to ``logs/migrate.log``."""
    log_path = layout.log("migrate")
    with log_path.open("ab") as log:
        log.write(f"\n--- tessera_stack: python -m {program} migrate\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                [sys.executable, "-m", program, "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
                timeout=MIGRATE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"{program} migration did not finish within {MIGRATE_TIMEOUT:g} s; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            ) from None
    if result.returncode != 0:
        raise StackError(
            f"{program} migration failed with status {result.returncode}; "
            f"last lines of {log_path}:\n{log_tail(log_path)}"
        )


def readyz(port: int) -> bool:
    """Whether ``http://127.0.0.1:PORT/readyz`` answers 200 (one quick probe)."""
    return answers_200(port, "/readyz", LOOPBACK)


def running_pid(layout: Layout, name: str, program: str) -> int | None:
    """The pid of process ``name`` when it runs ``program``, else ``None``."""
    pid = read_pid_file(layout.pid(name))
    return pid if pid is not None and is_alive(pid, program) else None


def replica_pid(layout: Layout, replica: ReplicaEntry) -> int | None:
    """The pid of ``replica`` while it runs, else ``None``."""
    return running_pid(layout, replica.process, REPLICA_PROGRAM)


@dataclass
class Running:
    """A service process that was just started and is not yet known to be ready."""

    name: str
    program: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path


def spawn(layout: Layout, name: str, program: str, env: dict[str, str], port: int) -> Running:
    """Start ``python -m <program> serve`` as process ``name``, detached."""
    log_path = layout.log(name)
    with log_path.open("ab") as log:
        log.write(f"\n--- tessera_stack: python -m {program} serve (port {port})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", program, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    write_pid_file(layout.pid(name), proc.pid)
    return Running(name, program, port, proc, log_path)


def wait_ready(layout: Layout, started: Running, timeout: float = READY_TIMEOUT) -> None:
    """Block until ``started`` answers ``/readyz``; stop it and raise StackError if not."""

    def exited() -> str | None:
        code = started.proc.poll()
        return None if code is None else f"{started.name} exited with status {code}"

    try:
        ready = wait_until(lambda: readyz(started.port), timeout=timeout, abort=exited)
    except StackError as exc:
        layout.pid(started.name).unlink(missing_ok=True)
        raise StackError(
            f"{exc}; last lines of {started.log_path}:\n{log_tail(started.log_path)}"
        ) from None
    if not ready:
        terminate(started.proc.pid, timeout=STOP_TIMEOUT)
        layout.pid(started.name).unlink(missing_ok=True)
        raise StackError(
            f"http://{LOOPBACK}:{started.port}/readyz ({started.name}) did not answer 200 "
            f"within {timeout:g} s; last lines of {started.log_path}:\n"
            f"{log_tail(started.log_path)}"
        )


def stop(layout: Layout, name: str, program: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM process ``name`` (graceful: in-flight requests finish); True if it ran."""
    pid = read_pid_file(layout.pid(name))
    stopped = pid is not None and terminate(pid, timeout=timeout, expect=program)
    layout.pid(name).unlink(missing_ok=True)
    return stopped
