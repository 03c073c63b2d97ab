"""The local stack launcher behind ``python -m tessera_stack``.

``up`` starts PostgreSQL and Redis (unless ``DATABASE_URL`` / ``REDIS_URL``
point elsewhere), generates the secrets and the TLS certificate once,
migrates the databases, and starts the auth service, N resource replicas
and nginx in front of them, all as background processes that outlive the
launcher. The replicas and the nginx policy follow a row of the
load-balancer demonstration (``--row``, see :mod:`tessera_stack.rows`).

While the stack runs, ``row N`` switches it to another row, ``add-replica``
/ ``remove-replica`` / ``scale N`` change the number of replicas (nginx
reloads gracefully: requests in flight finish, new ones see the new set),
``kill-replica ID`` SIGKILLs one (a crash: nginx is not told),
``restart-replicas`` restarts them one at a time with nginx routing around
each (a rolling restart that fails no request), ``status``
shows what runs, ``logs NAME`` prints a log, ``demo`` walks every row, and
``down`` stops everything. Every command that changes the stack brings it
to its recorded shape, so a killed replica comes back with the next one.

``up`` on a running stack restarts exactly what needs it. A dead PostgreSQL
or Redis comes back on the port recorded in the state, with its data (Redis
keeps an AOF), so the services that hold its address need no restart; if
that port has been taken meanwhile, ``up`` stops with an error rather than
move the server. A dead service is started again. A live service is left
alone unless an address it was started with (``DATABASE_URL``,
``REDIS_URL``, the auth service's URL, ...) is no longer the stack's: then
it restarts with the new one. A stack on an external server
(``DATABASE_URL`` / ``REDIS_URL`` set at its first ``up``) stays on it until
``down`` (or until ``up`` is given another URL). After restarting a server
``up`` returns once every service answers ``/readyz``. ``up --redis
sentinel|cluster`` runs the stack's Redis as a group instead (see
:mod:`tessera_stack.stack_redis`), whose dead nodes ``up`` restarts the same
way.

Files live under the run directory (``--run-dir``, default ``./.run``); see
:mod:`tessera_stack.state`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from tessera_stack import redis_acl, services, stack_redis
from tessera_stack.nginx_conf import NginxConfig, Replica, render_to
from tessera_stack.processes import (
    StackError,
    free_port,
    log_tail,
    port_is_bindable,
    port_is_open,
    read_pid_file,
    terminate,
    wait_until,
)
from tessera_stack.rows import DEFAULT_ROW, ROWS, Row, policy_problem
from tessera_stack.servers import PostgresServer, RedisServer
from tessera_stack.services import AUTH_PROGRAM, REPLICA_PROGRAM, ServiceSettings
from tessera_stack.state import (
    AUTH,
    NGINX,
    POSTGRES_SUPERUSER,
    REPLICA_DB_ROLE,
    REPLICA_PREFIX,
    Layout,
    ReplicaEntry,
    StackState,
)
from tessera_stack.tls import ensure_certificate

__all__ = ["EXIT_NOT_RUNNING", "UpOptions"]

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_HTTPS_PORT = 8443
DEFAULT_ALG = "ES256"
DEFAULT_REPLICAS = 3
MAX_REPLICAS = 16
STOP_TIMEOUT = 10.0
SECRET_NAMES = ("session_hash_key", "key_encryption_key", "forward_auth_secret")
# Exit status of "status" when the stack is not running (as LSB init scripts).
EXIT_NOT_RUNNING = 3


@dataclass(frozen=True)
class StackUrls:
    """The URLs a running stack answers on, as written to ``stack.env``."""

    https_port: int
    auth_port: int
    database_url: str
    redis_url: str
    replicas: tuple[ReplicaEntry, ...]
    row: int
    policy: str
    ca_cert: Path

    @property
    def base_url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}"

    def env(self) -> dict[str, str]:
        return {
            "BASE_URL": self.base_url,
            # nginx routes /auth/ and /.well-known/ to the auth service.
            "AUTH_URL": self.base_url,
            "JWKS_URL": f"{self.base_url}/.well-known/jwks.json",
            "METADATA_URL": f"{self.base_url}/.well-known/oauth-authorization-server",
            "REPLICA_URLS": ",".join(f"http://{LOOPBACK}:{r.port}" for r in self.replicas),
            "AUTH_INTERNAL_URL": f"http://{LOOPBACK}:{self.auth_port}",
            "ROW": str(self.row),
            "POLICY": self.policy,
            "CA_CERT": str(self.ca_cert),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
        }


@dataclass(frozen=True)
class UpOptions:
    """``up``'s options; ``None`` keeps what runs (or takes the default)."""

    port: int | None = None
    https_port: int | None = None
    alg: str | None = None
    row: int | None = None
    policy: str | None = None
    replicas: int | None = None
    redis: str | None = None


# -- small helpers ------------------------------------------------------------


def _auth_pid(layout: Layout) -> int | None:
    return services.running_pid(layout, AUTH, AUTH_PROGRAM)


def _replica_pid(layout: Layout, replica: ReplicaEntry) -> int | None:
    return services.running_pid(layout, replica.process, REPLICA_PROGRAM)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _ensure_secret(path: Path) -> None:
    """Create ``path`` with a fresh secret once; never overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_urlsafe(48))


def _settings(layout: Layout, state: StackState) -> ServiceSettings:
    if state.port is None or state.https_port is None:
        raise StackError("the stack is not running; start it with `python -m tessera_stack up`")
    return _service_settings(layout, state, state.port, state.https_port, state.alg or DEFAULT_ALG)


def _running_state(layout: Layout) -> StackState:
    """The state of a running stack; StackError when none runs."""
    state = StackState.load(layout)
    if _auth_pid(layout) is None or state.https_port is None or state.row is None:
        raise StackError("the stack is not running; start it with `python -m tessera_stack up`")
    return state


def _urls(layout: Layout, state: StackState) -> StackUrls:
    assert state.port is not None
    assert state.https_port is not None
    assert state.row is not None
    return StackUrls(
        https_port=state.https_port,
        auth_port=state.port,
        database_url=state.database_url,
        redis_url=state.redis_url,
        replicas=tuple(state.replicas),
        row=state.row,
        policy=state.policy,
        ca_cert=layout.tls.ca_cert.absolute(),
    )


def _write_stack_env(layout: Layout, urls: StackUrls) -> None:
    lines = [f"{key}={value}\n" for key, value in urls.env().items()]
    tmp = layout.stack_env.with_name(".stack.env.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(layout.stack_env)


def _describe_row(state: StackState) -> str:
    if state.row is None or state.row not in ROWS:
        return ""
    selected = ROWS[state.row]
    return (
        f"row {selected.number}: credentials in {selected.state}; replicas accept "
        f"{state.methods or selected.methods}; nginx policy {state.policy}"
    )


def _print_urls(layout: Layout, urls: StackUrls, state: StackState) -> None:
    env = urls.env()
    rows = [
        ("base URL", env["BASE_URL"]),
        ("auth", f"{env['AUTH_URL']}/auth/  (directly: {env['AUTH_INTERNAL_URL']})"),
        ("JWKS", env["JWKS_URL"]),
        ("metadata", env["METADATA_URL"]),
        ("replicas", ", ".join(f"{r.id}={LOOPBACK}:{r.port}" for r in urls.replicas)),
        ("CA cert", _display(Path(env["CA_CERT"])) + "  (curl --cacert ...)"),
        ("database", _without_password(env["DATABASE_URL"])),
        ("redis", _without_password(env["REDIS_URL"])),
        ("env file", _display(layout.stack_env)),
        ("logs", "python -m tessera_stack logs NAME  (auth, nginx, r1, ...)"),
        ("stop", "python -m tessera_stack down"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"  {_describe_row(state)}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


# -- infrastructure -------------------------------------------------------------


def _recorded_port(kind: str, url: str, port: int | None) -> int | None:
    """The port a managed server keeps (state files before ``*_port`` hold only its URL)."""
    if port is not None or kind != "managed" or not url:
        return port
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _start_managed(server: PostgresServer | RedisServer, label: str, port: int | None) -> bool:
    """Start ``server`` unless it runs; on ``port`` (its recorded one) when given.

    Returns whether it came back on its recorded port (services that were
    running meanwhile must reconnect). A recorded port that another program
    has taken is an error: the running services look for the server there.
    """
    if server.running and port is not None:
        return False
    # Not running (this clears a stale pid file), or running where nobody knows.
    server.stop()
    if port is None:
        print(f"starting {label} ...", flush=True)
    else:
        if port_is_open(port, LOOPBACK):
            raise StackError(
                f"{label} is not running, and port {port} on {LOOPBACK}, where the stack "
                "keeps it (the running services look for it there), is in use by another "
                "program. Stop that program and run `up` again; or stop the stack (`down`) "
                f"and run `up`, which picks a new port ({label}'s data stays)."
            )
        print(f"starting {label} on its port {port} with its data ...", flush=True)
    server.start()
    return port is not None


def _ensure_postgres(layout: Layout, state: StackState) -> bool:
    """PostgreSQL for the stack, recorded in ``state``; whether it came back from a crash."""
    external = state.database_url if state.postgres == "external" else ""
    if url := os.environ.get("DATABASE_URL") or external:
        state.postgres, state.database_url, state.postgres_port = "external", url, None
        return False
    port = _recorded_port(state.postgres, state.database_url, state.postgres_port)
    for role in (POSTGRES_SUPERUSER, REPLICA_DB_ROLE):
        _ensure_secret(layout.secret(f"postgres_{role}_password"))
    server = layout.postgres(port)
    started = _start_managed(server, "PostgreSQL", port)
    state.postgres, state.database_url, state.postgres_port = "managed", server.url, server.port
    return started


def _redis_topology(state: StackState) -> str | None:
    """What the managed Redis is (``single``, ``sentinel``, ``cluster``); None if not managed."""
    return (state.redis_topology or "single") if state.redis == "managed" else None


def _ensure_redis(layout: Layout, state: StackState, topology: str | None = None) -> bool:
    """Redis for the stack (durable), recorded in ``state``; whether it came back.

    ``topology`` (``up --redis``) chooses one server or a group; ``None``
    keeps what the state records (one server for a new stack).
    """
    if url := os.environ.get("REDIS_URL"):
        if topology is not None:
            raise StackError(
                f"REDIS_URL is set, so the stack uses that Redis; unset it for the stack to "
                f"run a Redis {topology} of its own"
            )
        state.redis, state.redis_url, state.redis_port, state.redis_topology = (
            "external",
            url,
            None,
            "",
        )
        return False
    if topology is None and state.redis == "external" and state.redis_url:
        return False  # stays on the external Redis it was started with
    current = _redis_topology(state)
    chosen = topology or current or "single"
    if chosen in stack_redis.GROUPS:
        group, came_back = stack_redis.ensure_group(layout, chosen)
        state.redis, state.redis_url, state.redis_port = "managed", group.url, None
        state.redis_topology = chosen
        return came_back
    recorded = state.redis_port if current == "single" else None
    port = _recorded_port(state.redis, state.redis_url, recorded) if current == "single" else None
    _ensure_redis_users(layout)
    server = layout.redis(port)
    started = _start_managed(server, "Redis", port)
    state.redis, state.redis_url, state.redis_port = "managed", server.url, server.port
    state.redis_topology = "single"
    return started


def _ensure_redis_users(layout: Layout) -> None:
    """The Redis users' passwords (made once) and the ACL file the stack's Redis loads."""
    passwords: dict[str, str] = {}
    for user in redis_acl.ROLES:
        _ensure_secret(layout.secret(f"redis_{user}_password"))
        password = layout.redis_password(user)
        assert password is not None
        passwords[user] = password
    text = redis_acl.render_acl(passwords)
    fd = os.open(layout.redis_acl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)


def _service_settings(
    layout: Layout, state: StackState, auth_port: int, https_port: int, alg: str
) -> ServiceSettings:
    """What the services are started with; on the stack's own single Redis each
    logs in as its role's user (:mod:`tessera_stack.redis_acl`)."""
    replica_database_url = ""
    if state.postgres == "managed" and state.postgres_port is not None:
        replica_database_url = layout.postgres(state.postgres_port).role_url(REPLICA_DB_ROLE)
    redis_urls: dict[str, str] = {}
    if _redis_topology(state) == "single":
        for user in (redis_acl.AUTH_USER, redis_acl.REPLICA_USER):
            password = layout.redis_password(user)
            if password is not None:
                redis_urls[user] = redis_acl.role_url(state.redis_url, user, password)
    return ServiceSettings(
        database_url=state.database_url,
        redis_url=state.redis_url,
        auth_port=auth_port,
        https_port=https_port,
        alg=alg,
        redis_role_urls=redis_urls,
        replica_database_url=replica_database_url,
    )


def _stop_unused_servers(layout: Layout, state: StackState) -> None:
    """Stop the stack's own PostgreSQL and Redis servers that the services no longer use."""
    topology = _redis_topology(state)
    unused: list[tuple[PostgresServer | RedisServer, str]] = []
    if topology != "single":
        unused.append((layout.redis(), "Redis"))
    if state.postgres == "external":
        unused.append((layout.postgres(), "PostgreSQL"))
    for server, label in unused:
        if server.running:
            print(f"stopping the stack's own {label}: the services use another", flush=True)
            server.stop(timeout=STOP_TIMEOUT)
    for group in stack_redis.recorded_groups(layout):
        if group.topology != topology and any(pid for _, pid, _ in group.pids(layout)):
            print(f"stopping the Redis {group.topology} group: the services use another")
            stack_redis.stop_groups(layout, only=group.topology)


# -- services and the addresses they hold ------------------------------------------


def _stale_addresses(state: StackState, name: str, env: Mapping[str, str]) -> str | None:
    """Why service ``name`` holds an address ``env`` no longer gives it, or ``None``."""
    recorded = state.addresses.get(name)
    wanted = services.addresses(env)
    if recorded is None:
        return "started before the launcher recorded its addresses"
    changed = [
        f"{key} {recorded.get(key, '(unset)')} -> {wanted.get(key, '(unset)')}"
        for key in sorted(set(recorded) | set(wanted))
        if recorded.get(key) != wanted.get(key)
    ]
    return "; ".join(changed) or None


def _spawn(
    layout: Layout, state: StackState, name: str, program: str, env: dict[str, str], port: int
) -> services.Running:
    """Start a service and record the addresses it holds from now on."""
    started = services.spawn(layout, name, program, env, port)
    state.addresses[name] = services.addresses(env)
    return started


def _wait_services_ready(layout: Layout, state: StackState) -> None:
    """Block until the auth service and every replica answer ``/readyz`` with 200."""
    ports = {AUTH: state.port, **{entry.process: entry.port for entry in state.replicas}}
    print("waiting for the services to reconnect ...", flush=True)
    late = [
        name
        for name, port in ports.items()
        if port is not None
        and not wait_until(partial(services.readyz, port), timeout=services.READY_TIMEOUT)
    ]
    if late:
        tails = "\n".join(
            f"last lines of {layout.log(name)}:\n{log_tail(layout.log(name))}" for name in late
        )
        raise StackError(
            f"{', '.join(late)} did not answer /readyz with 200 within "
            f"{services.READY_TIMEOUT:g} s after the restart; {tails}"
        )


# -- replicas and nginx ---------------------------------------------------------


def _new_replica(existing: Sequence[ReplicaEntry], auth_port: int, https_port: int) -> ReplicaEntry:
    """The next replica: the next number, on auth port + number when that is free."""
    number = max((entry.number for entry in existing), default=0) + 1
    taken = {entry.port for entry in existing} | {auth_port, https_port}
    port = auth_port + number
    if port in taken or port >= 65536 or not port_is_bindable(port, LOOPBACK):
        port = free_port(LOOPBACK)
        while port in taken:
            port = free_port(LOOPBACK)
    return ReplicaEntry(f"r{number}", port)


def _nginx_config(
    layout: Layout, state: StackState, replicas: Sequence[ReplicaEntry]
) -> NginxConfig:
    assert state.port is not None
    assert state.https_port is not None
    tls = layout.tls
    forward_secret = None
    if state.policy == "forward_auth":
        forward_secret = layout.secret("forward_auth_secret").read_text(encoding="ascii").strip()
    return NginxConfig(
        policy=state.policy,
        nginx_dir=layout.nginx.absolute(),
        log_dir=layout.logs.absolute(),
        https_port=state.https_port,
        auth_port=state.port,
        replicas=tuple(Replica(entry.id, entry.port) for entry in replicas),
        tls_cert=tls.cert.absolute(),
        tls_key=tls.key.absolute(),
        forward_secret=forward_secret,
    )


def _reconcile(
    layout: Layout,
    state: StackState,
    desired: Sequence[ReplicaEntry],
    selected: Row,
    policy: str,
    *,
    restart: bool = False,
    migrate: bool = False,
) -> None:
    """Bring replicas and nginx to ``desired`` / ``selected`` / ``policy``.

    A replica is (re)started when it is dead, when ``restart`` is set or
    the row's methods changed, or when it holds an address it would no
    longer be given; with ``migrate`` the replicas' migrations run first.
    Live replicas are otherwise left alone, and nginx reloads only when its
    configuration changed or a replica (re)started.

    Order matters for requests in flight: new replicas start and become
    ready before nginx is told about them; nginx stops sending requests to
    a replica (graceful reload) before that replica is stopped (SIGTERM,
    which lets its own in-flight requests finish).
    """
    settings = _settings(layout, state)
    restart_all = restart or state.methods != selected.methods
    envs = {
        entry.id: services.replica_env(layout, settings, entry, selected.methods)
        for entry in desired
    }
    to_start: list[ReplicaEntry] = []
    for entry in desired:
        if restart_all or _replica_pid(layout, entry) is None:
            to_start.append(entry)
        elif reason := _stale_addresses(state, entry.process, envs[entry.id]):
            print(f"restarting replica {entry.id}: {reason}", flush=True)
            to_start.append(entry)
    for entry in to_start:
        services.stop(layout, entry.process, REPLICA_PROGRAM)
    if to_start and migrate:
        services.migrate(layout, REPLICA_PROGRAM, envs[to_start[0].id])
    if to_start:
        names = ", ".join(entry.id for entry in to_start)
        print(f"starting replicas {names} ({selected.methods}) ...", flush=True)
    started = [
        _spawn(layout, state, entry.process, REPLICA_PROGRAM, envs[entry.id], entry.port)
        for entry in to_start
    ]
    failures: list[str] = []
    for running in started:
        try:
            services.wait_ready(layout, running)
        except StackError as exc:
            failures.append(str(exc))
    if failures:
        raise StackError("\n".join(failures))

    state.row, state.policy, state.methods = selected.number, policy, selected.methods
    target = render_to(_nginx_config(layout, state, desired), layout.nginx_conf)
    assert state.https_port is not None
    nginx = layout.nginx_server(state.https_port)
    if nginx.running:
        # A reload also forgets which replicas nginx had marked failed.
        if target.changed or started:
            print(f"reloading nginx ({policy}) ...", flush=True)
            nginx.reload()
    else:
        print(f"starting nginx ({policy}) on port {state.https_port} ...", flush=True)
        nginx.start()

    wanted = {entry.id for entry in desired}
    for entry in state.replicas:
        if entry.id in wanted:
            continue
        state.addresses.pop(entry.process, None)
        if services.stop(layout, entry.process, REPLICA_PROGRAM):
            print(f"stopped replica {entry.id}", flush=True)
    state.replicas = list(desired)
    state.save(layout)


# -- up ---------------------------------------------------------------------------


def _up_conflicts(state: StackState, options: UpOptions) -> list[str]:
    """Settings ``up`` cannot change on a running stack (they need `down` first)."""
    conflicts = []
    pairs = (
        ("--port", options.port, state.port),
        ("--https-port", options.https_port, state.https_port),
        ("--alg", options.alg, state.alg or None),
        ("--redis", options.redis, _redis_topology(state) or state.redis or None),
    )
    for flag, wanted, current in pairs:
        if wanted is not None and current is not None and wanted != current:
            conflicts.append(f"{flag} {wanted} (it runs with {current})")
    return conflicts


def cmd_up(layout: Layout, options: UpOptions) -> int:
    """Start (or complete) the stack; 0 when it is up."""
    state = StackState.load(layout)
    auth_pid = _auth_pid(layout)
    if auth_pid is not None and state.https_port is None:
        # An auth service from before nginx fronted the stack (plain HTTP,
        # insecure cookies): replace it.
        services.stop(layout, AUTH, AUTH_PROGRAM)
        auth_pid = None
    if auth_pid is not None and (conflicts := _up_conflicts(state, options)):
        return _error(
            "the running stack was started with other settings: "
            + "; ".join(conflicts)
            + "; stop it first (python -m tessera_stack down)"
        )

    port = state.port if auth_pid is not None and state.port else options.port or DEFAULT_PORT
    https_port = (
        state.https_port
        if auth_pid is not None and state.https_port
        else options.https_port or DEFAULT_HTTPS_PORT
    )
    alg = state.alg if auth_pid is not None and state.alg else options.alg or DEFAULT_ALG
    row_number = options.row or state.row or DEFAULT_ROW
    selected = ROWS[row_number]
    policy = options.policy or (
        state.policy if state.row == row_number and state.policy else selected.policy
    )
    if problem := policy_problem(selected, policy):
        return _error(problem)
    count = options.replicas or len(state.replicas) or DEFAULT_REPLICAS

    if auth_pid is None and port_is_open(port):
        return _error(
            f"port {port} on {LOOPBACK} is already in use by another program; "
            "choose another with --port"
        )
    if not layout.nginx_server(https_port).running and port_is_open(https_port):
        return _error(
            f"port {https_port} on {LOOPBACK} is already in use by another program; "
            "choose another with --https-port"
        )

    layout.create()
    if auth_pid is None:
        state.port = None  # "up" is complete once this is set again
    try:
        restarted = _ensure_postgres(layout, state)
        state.save(layout)
        restarted = _ensure_redis(layout, state, options.redis) or restarted
        state.save(layout)
        for name in SECRET_NAMES:
            _ensure_secret(layout.secret(name))
        if alg == "HS256":
            _ensure_secret(layout.secret("jwt_hs256_secret"))
        ensure_certificate(layout.tls.directory)
        settings = _service_settings(layout, state, port, https_port, alg)
        auth_env = services.auth_env(layout, settings)
        if auth_pid is not None and (reason := _stale_addresses(state, AUTH, auth_env)):
            print(f"restarting the auth service: {reason}", flush=True)
            services.stop(layout, AUTH, AUTH_PROGRAM)
            auth_pid = None
        if auth_pid is None:
            print("migrating the databases ...", flush=True)
            services.migrate(layout, AUTH_PROGRAM, auth_env)
            print("starting the auth service ...", flush=True)
            started = _spawn(layout, state, AUTH, AUTH_PROGRAM, auth_env, port)
            services.wait_ready(layout, started)
        state.port, state.https_port, state.alg = port, https_port, alg
        state.save(layout)
        replicas = list(state.replicas[:count])
        while len(replicas) < count:
            replicas.append(_new_replica(replicas, port, https_port))
        _reconcile(layout, state, replicas, selected, policy, migrate=True)
        _stop_unused_servers(layout, state)
        if restarted:
            _wait_services_ready(layout, state)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "whatever started is left running; `python -m tessera_stack down` stops it.",
            file=sys.stderr,
        )
        return 1

    urls = _urls(layout, state)
    _write_stack_env(layout, urls)
    print("tessera is up:")
    _print_urls(layout, urls, state)
    return 0


# -- changing a running stack -----------------------------------------------------


def cmd_row(layout: Layout, number: int, policy: str | None) -> int:
    """Switch the running stack to row ``number`` (replicas restart: sessions in them go)."""
    try:
        state = _running_state(layout)
        selected = ROWS[number]
        chosen = policy or selected.policy
        if problem := policy_problem(selected, chosen):
            return _error(problem)
        _reconcile(layout, state, state.replicas, selected, chosen, restart=True)
    except StackError as exc:
        return _error(str(exc))
    _write_stack_env(layout, _urls(layout, state))
    print(f"now {_describe_row(state)}")
    return 0


def _resize(layout: Layout, state: StackState, desired: list[ReplicaEntry]) -> None:
    assert state.row is not None
    _reconcile(layout, state, desired, ROWS[state.row], state.policy)
    _write_stack_env(layout, _urls(layout, state))


def cmd_add_replica(layout: Layout) -> int:
    """Start one more replica, then let nginx send it requests."""
    try:
        state = _running_state(layout)
        if len(state.replicas) >= MAX_REPLICAS:
            return _error(f"at most {MAX_REPLICAS} replicas")
        assert state.port is not None
        assert state.https_port is not None
        entry = _new_replica(state.replicas, state.port, state.https_port)
        _resize(layout, state, [*state.replicas, entry])
    except StackError as exc:
        return _error(str(exc))
    print(f"added replica {entry.id} on {LOOPBACK}:{entry.port}")
    return 0


def cmd_remove_replica(layout: Layout, replica_id: str | None) -> int:
    """Take a replica out of nginx, then stop it (default: the newest)."""
    try:
        state = _running_state(layout)
        if not state.replicas:
            return _error("there are no replicas")
        target = (
            max(state.replicas, key=lambda entry: entry.number)
            if replica_id is None
            else state.replica(replica_id)
        )
        if target is None:
            known = ", ".join(entry.id for entry in state.replicas)
            return _error(f"no replica {replica_id!r} (there are: {known})")
        if len(state.replicas) == 1:
            return _error("cannot remove the last replica")
        _resize(layout, state, [entry for entry in state.replicas if entry.id != target.id])
    except StackError as exc:
        return _error(str(exc))
    print(f"removed replica {target.id}")
    return 0


def cmd_scale(layout: Layout, count: int) -> int:
    """Add or remove replicas (newest first) until there are ``count``."""
    if not 1 <= count <= MAX_REPLICAS:
        return _error(f"the replica count must be 1-{MAX_REPLICAS}")
    try:
        state = _running_state(layout)
        assert state.port is not None
        assert state.https_port is not None
        desired = sorted(state.replicas, key=lambda entry: entry.number)[:count]
        while len(desired) < count:
            desired.append(_new_replica(desired, state.port, state.https_port))
        _resize(layout, state, desired)
    except StackError as exc:
        return _error(str(exc))
    print(f"{count} replicas: {', '.join(entry.id for entry in desired)}")
    return 0


def cmd_kill_replica(layout: Layout, replica_id: str) -> int:
    """SIGKILL a replica and tell nobody (a crash); nginx finds out by itself."""
    state = StackState.load(layout)
    entry = state.replica(replica_id)
    if entry is None:
        known = ", ".join(e.id for e in state.replicas) or "none"
        return _error(f"no replica {replica_id!r} (there are: {known})")
    pid = _replica_pid(layout, entry)
    if pid is None:
        return _error(f"replica {replica_id} is not running")
    terminate(pid, sig=signal.SIGKILL, timeout=STOP_TIMEOUT, expect=REPLICA_PROGRAM)
    # Its port must be closed before this returns: the crash has happened.
    if not wait_until(lambda: not port_is_open(entry.port), timeout=STOP_TIMEOUT):
        return _error(f"port {entry.port} still answers after killing {replica_id}")
    layout.pid(entry.process).unlink(missing_ok=True)
    print(f"killed replica {replica_id} (pid {pid}); nginx was not told")
    return 0


def _restart_targets(state: StackState, replica_ids: Sequence[str]) -> list[ReplicaEntry]:
    """The replicas to restart, in the stack's order; StackError for an unknown ID."""
    if not replica_ids:
        return sorted(state.replicas, key=lambda entry: entry.number)
    targets: list[ReplicaEntry] = []
    for replica_id in replica_ids:
        entry = state.replica(replica_id)
        if entry is None:
            known = ", ".join(e.id for e in state.replicas) or "none"
            raise StackError(f"no replica {replica_id!r} (there are: {known})")
        if entry not in targets:
            targets.append(entry)
    return targets


def cmd_restart_replicas(layout: Layout, replica_ids: Sequence[str]) -> int:
    """Restart replicas one at a time (default: all) without failing a request.

    For each replica in turn: nginx reloads without it (its old workers
    finish the requests in flight, the new ones send nothing to it); it gets
    SIGTERM (it finishes its own requests, after ``TESSERA_DRAIN_SECONDS`` of
    not being ready); it starts again on its port with this command's
    environment, and once ``/readyz`` answers 200 nginx reloads with it back,
    before the next one goes. Sessions kept in a replica's memory (rows 1-3)
    are lost with it. With a single replica nobody can take over, and
    requests fail while it restarts.
    """
    try:
        state = _running_state(layout)
        assert state.row is not None
        assert state.https_port is not None
        targets = _restart_targets(state, replica_ids)
        settings = _settings(layout, state)
        methods = state.methods or ROWS[state.row].methods
        nginx = layout.nginx_server(state.https_port)
        if len(state.replicas) == 1:
            print("one replica: requests fail while it restarts", file=sys.stderr)
        for entry in targets:
            others = [other for other in state.replicas if other.id != entry.id]
            if others and nginx.running:
                print(f"reloading nginx without {entry.id} ...", flush=True)
                render_to(_nginx_config(layout, state, others), layout.nginx_conf)
                nginx.reload()
            services.stop(layout, entry.process, REPLICA_PROGRAM)
            print(f"starting replica {entry.id} ({methods}) ...", flush=True)
            started = _spawn(
                layout,
                state,
                entry.process,
                REPLICA_PROGRAM,
                services.replica_env(layout, settings, entry, methods),
                entry.port,
            )
            state.save(layout)
            services.wait_ready(layout, started)
            render_to(_nginx_config(layout, state, state.replicas), layout.nginx_conf)
            if nginx.running:
                print(f"reloading nginx with {entry.id} ...", flush=True)
                nginx.reload()
            else:
                print(f"starting nginx ({state.policy}) on port {state.https_port} ...", flush=True)
                nginx.start()
            print(f"restarted replica {entry.id} (pid {started.proc.pid})", flush=True)
    except StackError as exc:
        return _error(str(exc))
    return 0


# -- down, status, logs ---------------------------------------------------------


def cmd_down(layout: Layout, purge: bool) -> int:
    """Stop everything ``up`` started; with ``purge`` delete the run directory too."""
    stopped: list[str] = []
    state = StackState.load(layout)
    if state.https_port is not None:
        nginx = layout.nginx_server(state.https_port)
        if nginx.running:
            stopped.append(NGINX)
        nginx.stop(timeout=STOP_TIMEOUT)
    elif (pid := read_pid_file(layout.pid(NGINX))) is not None and terminate(
        pid, sig=signal.SIGQUIT, timeout=STOP_TIMEOUT, expect="nginx"
    ):
        stopped.append(NGINX)
    layout.pid(NGINX).unlink(missing_ok=True)
    replica_names = {entry.process for entry in state.replicas}
    if layout.pids.is_dir():
        replica_names |= {path.stem for path in layout.pids.glob(f"{REPLICA_PREFIX}*.pid")}
    for name in sorted(replica_names):
        if services.stop(layout, name, REPLICA_PROGRAM):
            stopped.append(name)
    if services.stop(layout, AUTH, AUTH_PROGRAM):
        stopped.append(AUTH)
    stopped += stack_redis.stop_groups(layout, timeout=STOP_TIMEOUT)
    for server in (layout.redis(), layout.postgres()):
        if server.running:
            stopped.append(server.name)
        server.stop(timeout=STOP_TIMEOUT)
    layout.stack_env.unlink(missing_ok=True)
    layout.state.unlink(missing_ok=True)
    if purge and layout.root.exists():
        # The PostgreSQL cluster may live outside the run directory behind a symlink.
        layout.postgres().remove_data()
        shutil.rmtree(layout.root)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if purge:
        print(f"removed {_display(layout.root)}")
    return 0


def _without_password(url: str) -> str:
    """``url`` fit to print: its password (the Redis administrator's) left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def _liveness(pid: int | None) -> str:
    return f"running (pid {pid})" if pid is not None else "stopped"


def cmd_status(layout: Layout) -> int:
    """Print what is alive; 0 when the auth service runs, else 3."""
    state = StackState.load(layout)
    rows: list[tuple[str, str, str]] = []
    auth_pid = _auth_pid(layout)
    auth_url = f"http://{LOOPBACK}:{state.port}" if state.port is not None else ""
    rows.append((AUTH, _liveness(auth_pid), auth_url if auth_pid else ""))
    for server, url in (
        (layout.postgres(), state.database_url),
        (layout.redis(), state.redis_url),
    ):
        if getattr(state, server.name) == "external":
            rows.append((server.name, "external", url))
        elif server.name == "redis" and _redis_topology(state) in stack_redis.GROUPS:
            group = stack_redis.RedisGroup.load(layout, state.redis_topology)
            for name, pid, node in group.pids(layout) if group else []:
                rows.append((name, _liveness(pid), f"{LOOPBACK}:{node.port}"))
        else:
            pid = server.pid
            rows.append((server.name, _liveness(pid), _without_password(url) if pid else ""))
    if state.https_port is not None:
        nginx_pid = layout.nginx_server(state.https_port).pid
        url = f"https://{LOOPBACK}:{state.https_port}" if nginx_pid else ""
        rows.append((NGINX, _liveness(nginx_pid), url))
    for entry in state.replicas:
        pid = _replica_pid(layout, entry)
        rows.append((entry.process, _liveness(pid), f"http://{LOOPBACK}:{entry.port}"))
    width = max(len(name) for name, _, _ in rows)
    for name, liveness, url in rows:
        print(f"{name:<{width}}  {liveness:<22}  {url}".rstrip())
    if auth_pid is not None and (description := _describe_row(state)):
        print(description)
    return 0 if auth_pid is not None else EXIT_NOT_RUNNING


def _log_names(layout: Layout) -> list[str]:
    return sorted(path.stem for path in layout.logs.glob("*.log")) if layout.logs.is_dir() else []


def cmd_logs(layout: Layout, name: str | None, lines: int) -> int:
    """Print the tail of one log (``r1`` means ``resource-r1``), or of every log."""
    if name is not None:
        names = _log_names(layout)
        if name not in names and f"{REPLICA_PREFIX}{name}" in names:
            name = f"{REPLICA_PREFIX}{name}"
        path = layout.log(name)
        if not path.exists():
            available = ", ".join(names) or "none yet"
            print(f"no log {_display(path)} (logs: {available})", file=sys.stderr)
            return 1
        print(log_tail(path, lines))
        return 0
    names = _log_names(layout)
    if not names:
        print(f"no logs yet in {_display(layout.logs)}", file=sys.stderr)
        return 1
    for each in names:
        path = layout.log(each)
        print(f"==> {_display(path)} <==")
        print(log_tail(path, lines))
        print()
    return 0
