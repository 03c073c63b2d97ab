"""``up``: bring the stack to its recorded shape (the reconcile step).

Starts what is missing (PostgreSQL and Redis with their users and roles, the
auth service, the replicas, nginx), restarts what holds an address that is no
longer the stack's, and leaves alone what already runs as it should. The other
commands (:mod:`tessera_stack.launcher`) change the recorded shape and reconcile.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from tessera_stack import live_page, monitoring, redis_acl, services, stack_redis
from tessera_stack.nginx_conf import (
    NginxConfig,
    Replica,
    forward_auth_cache_seconds,
    render_to,
    revocation_max_staleness,
)
from tessera_stack.processes import (
    StackError,
    free_port,
    log_tail,
    port_is_bindable,
    port_is_open,
    wait_until,
)
from tessera_stack.rows import DEFAULT_ROW, ROWS, Row, policy_problem
from tessera_stack.servers import LOOPBACK, PostgresServer, RedisServer
from tessera_stack.services import (
    AUTH_PROGRAM,
    INTROSPECTION_CLIENT_ID,
    REPLICA_PROGRAM,
    ServiceSettings,
    replica_pid,
)
from tessera_stack.stack_report import (
    error,
    print_urls,
    urls_of,
    without_password,
    write_stack_env,
)
from tessera_stack.state import (
    AUTH,
    OPERATOR_SECRET,
    POSTGRES_SUPERUSER,
    REPLICA_DB_ROLE,
    Layout,
    ReplicaEntry,
    StackState,
)
from tessera_stack.tls import ensure_certificate

DEFAULT_PORT = 8080
DEFAULT_HTTPS_PORT = 8443
DEFAULT_ALG = "ES256"
DEFAULT_REPLICAS = 3
MAX_REPLICAS = 16
STOP_TIMEOUT = 10.0
SECRET_NAMES = (
    "session_hash_key",
    "key_encryption_key",
    "forward_auth_secret",
    "introspection_client_secret",
    OPERATOR_SECRET,
)


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
    #: Also run Prometheus (tessera_stack.monitoring); a stack that has it keeps it.
    monitoring: bool = False


def running_auth_pid(layout: Layout) -> int | None:
    return services.running_pid(layout, AUTH, AUTH_PROGRAM)


def ensure_secret(path: Path) -> None:
    """Create ``path`` with a fresh secret once; never overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_urlsafe(48))


def ensure_secrets(layout: Layout, alg: str) -> None:
    """The services' secrets (made once), and the auth service's list of introspection
    clients (``TESSERA_INTROSPECTION_CLIENTS_FILE``: the stack's one client)."""
    for name in SECRET_NAMES:
        ensure_secret(layout.secret(name))
    if alg == "HS256":
        ensure_secret(layout.secret("jwt_hs256_secret"))
    secret = layout.secret("introspection_client_secret").read_text(encoding="ascii").strip()
    fd = os.open(
        layout.secret("introspection_clients"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
    )
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{INTROSPECTION_CLIENT_ID}:{secret}\n")


def current_settings(layout: Layout, state: StackState) -> ServiceSettings:
    if state.port is None or state.https_port is None:
        raise StackError("the stack is not running; start it with `./tessera up`")
    return _service_settings(layout, state, state.port, state.https_port, state.alg or DEFAULT_ALG)


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


def _record_own_url(layout: Layout, url: str) -> None:
    """Remember ``url`` as one of the stack's own servers' (see :func:`external_url`)."""
    known = _own_urls(layout)
    if url in known:
        return
    fd = os.open(layout.own_urls, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(url + "\n")


def _own_urls(layout: Layout) -> set[str]:
    try:
        return set(layout.own_urls.read_text(encoding="utf-8").split())
    except FileNotFoundError:
        return set()


def external_url(layout: Layout, name: str, started_with: str) -> str:
    """The external server the stack is to use for ``name`` (``DATABASE_URL`` or
    ``REDIS_URL``): the environment's, else ``started_with`` (the one it runs on); "" for none.

    A URL of the stack's own servers is not an external one: a shell that sourced
    ``stack.env`` (with ``set -a``) exports them, and the stack must neither leave its
    own running server for it nor take a stopped one for somebody else's. An external
    server that does not answer is refused here, before anything starts.
    """
    url, where = os.environ.get(name, ""), "in the environment"
    if url in _own_urls(layout):
        print(f"{name} in the environment is the stack's own (from stack.env): ignored")
        url = ""
    if not url:
        url, where = started_with, "that the stack was started with"
    if url and not _answers(name, url):
        raise StackError(
            f"the {name} {where} is {without_password(url)}, where nothing answers. Start "
            f"that server; or unset {name} and run `./tessera down` and `./tessera up` for "
            "the stack to run its own (a shell that sourced the stack.env of a stack that is "
            "gone: `unset DATABASE_URL REDIS_URL`)."
        )
    return url


def _answers(name: str, url: str) -> bool:
    """Whether the server of a one-host ``url`` accepts connections (a list of hosts,
    Sentinel's or Cluster's, is left to the services, which follow it)."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return True  # the services say what is wrong with it
    if "," in parts.netloc or not host:
        return True
    return port_is_open(port or (5432 if name == "DATABASE_URL" else 6379), host)


def _ensure_postgres(layout: Layout, state: StackState) -> bool:
    """PostgreSQL for the stack, recorded in ``state``; whether it came back from a crash."""
    started_with = state.database_url if state.postgres == "external" else ""
    if url := external_url(layout, "DATABASE_URL", started_with):
        state.postgres, state.database_url, state.postgres_port = "external", url, None
        return False
    port = _recorded_port(state.postgres, state.database_url, state.postgres_port)
    for role in (POSTGRES_SUPERUSER, REPLICA_DB_ROLE):
        ensure_secret(layout.secret(f"postgres_{role}_password"))
    server = layout.postgres(port)
    started = _start_managed(server, "PostgreSQL", port)
    state.postgres, state.database_url, state.postgres_port = "managed", server.url, server.port
    _record_own_url(layout, server.url)
    return started


def redis_topology(state: StackState) -> str | None:
    """What the managed Redis is (``single``, ``sentinel``, ``cluster``); None if not managed."""
    return (state.redis_topology or "single") if state.redis == "managed" else None


def _ensure_redis(layout: Layout, state: StackState, topology: str | None = None) -> bool:
    """Redis for the stack (durable), recorded in ``state``; whether it came back.

    ``topology`` (``up --redis``) chooses one server or a group; ``None``
    keeps what the state records (one server for a new stack).
    """
    # Without --redis the stack stays on the external Redis it was started with.
    started_with = state.redis_url if state.redis == "external" and topology is None else ""
    if url := external_url(layout, "REDIS_URL", started_with):
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
    current = redis_topology(state)
    chosen = topology or current or "single"
    if chosen in stack_redis.GROUPS:
        group, came_back = stack_redis.ensure_group(layout, chosen)
        state.redis, state.redis_url, state.redis_port = "managed", group.url, None
        state.redis_topology = chosen
        _record_own_url(layout, group.url)
        return came_back
    recorded = state.redis_port if current == "single" else None
    port = _recorded_port(state.redis, state.redis_url, recorded) if current == "single" else None
    _ensure_redis_users(layout)
    server = layout.redis(port)
    started = _start_managed(server, "Redis", port)
    state.redis, state.redis_url, state.redis_port = "managed", server.url, server.port
    state.redis_topology = "single"
    _record_own_url(layout, server.url)
    return started


def _ensure_redis_users(layout: Layout) -> None:
    """The Redis users' passwords (made once) and the ACL file the stack's Redis loads."""
    passwords: dict[str, str] = {}
    for user in redis_acl.ROLES:
        ensure_secret(layout.secret(f"redis_{user}_password"))
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
    if redis_topology(state) == "single":
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
    topology = redis_topology(state)
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


def spawn(
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


#: How a service's log says its port was taken (asyncio's OSError, errno 98).
ADDRESS_IN_USE = "address already in use"


def _on_a_free_port(
    entry: ReplicaEntry, desired: Sequence[ReplicaEntry], state: StackState
) -> ReplicaEntry:
    """``entry`` on a port nothing holds, none of the stack's own."""
    taken = {other.port for other in desired} | {state.port, state.https_port}
    return ReplicaEntry(entry.id, free_port(LOOPBACK, avoid=taken))


def new_replica(existing: Sequence[ReplicaEntry], auth_port: int, https_port: int) -> ReplicaEntry:
    """The next replica: the next number, on auth port + number when that is free."""
    number = max((entry.number for entry in existing), default=0) + 1
    taken = {entry.port for entry in existing} | {auth_port, https_port}
    port = auth_port + number
    if port in taken or port >= 65536 or not port_is_bindable(port, LOOPBACK):
        port = free_port(LOOPBACK, avoid=taken)
    return ReplicaEntry(f"r{number}", port)


def nginx_config(
    layout: Layout, state: StackState, replicas: Sequence[ReplicaEntry]
) -> NginxConfig:
    assert state.port is not None
    assert state.https_port is not None
    tls = layout.tls
    forward_secret = None
    # The services inherit the launcher's environment, S included; nginx reuses the
    # auth service's answers only where it asks to (off by default: nginx_conf).
    staleness = revocation_max_staleness(os.environ)
    cache_seconds = 0
    if state.policy == "forward_auth":
        forward_secret = layout.secret("forward_auth_secret").read_text(encoding="ascii").strip()
        cache_seconds = forward_auth_cache_seconds(os.environ)
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
        live_port=state.live_port,
        forward_auth_cache_seconds=cache_seconds,
        revocation_max_staleness=staleness,
    )


# -- the live page ----------------------------------------------------------------


def live_pid(layout: Layout) -> int | None:
    return services.running_pid(layout, live_page.LIVE, live_page.LIVE_PROGRAM)


def choose_live_port(layout: Layout, state: StackState, replicas: Sequence[ReplicaEntry]) -> int:
    """The live page's port: the recorded one while it runs there or is free (and no
    replica's), else a free one that is none of the stack's own."""
    taken: set[int | None] = {entry.port for entry in (*state.replicas, *replicas)}
    taken |= {state.port, state.https_port, state.prometheus_port}
    recorded = state.live_port
    if recorded is not None and (
        live_pid(layout) is not None
        or (recorded not in taken and port_is_bindable(recorded, LOOPBACK))
    ):
        return recorded
    return free_port(LOOPBACK, avoid=taken)


def ensure_live_page(layout: Layout, state: StackState) -> None:
    """Start the live page (:mod:`tessera_stack.live_page`) on ``state.live_port``
    unless it answers there. It runs the stack's commands in the environment ``up``
    ran in, but for ``DATABASE_URL`` and ``REDIS_URL``: its ``up`` keeps the servers
    the stack records, never the ones this ``up`` was given (they may change)."""
    assert state.live_port is not None
    if live_pid(layout) is not None and services.readyz(state.live_port):
        return
    services.stop(layout, live_page.LIVE, live_page.LIVE_PROGRAM)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        live_page.PORT_ENV: str(state.live_port),
        live_page.RUN_DIR_ENV: str(layout.root.absolute()),
    }
    print(f"starting the live page on port {state.live_port} ...", flush=True)
    services.wait_ready(
        layout,
        services.spawn(layout, live_page.LIVE, live_page.LIVE_PROGRAM, env, state.live_port),
    )


def reconcile(
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
    settings = current_settings(layout, state)
    restart_all = restart or state.methods != selected.methods
    envs = {
        entry.id: services.replica_env(layout, settings, entry, selected.methods)
        for entry in desired
    }
    to_start: list[ReplicaEntry] = []
    for entry in desired:
        if restart_all or replica_pid(layout, entry) is None:
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
        spawn(layout, state, entry.process, REPLICA_PROGRAM, envs[entry.id], entry.port)
        for entry in to_start
    ]
    desired = list(desired)
    failures: list[str] = []
    for entry, running in zip(to_start, started, strict=True):
        try:
            services.wait_ready(layout, running)
        except StackError as exc:
            if ADDRESS_IN_USE not in str(exc):
                failures.append(str(exc))
                continue
            # Another program took the port after it was chosen (or since the stack last
            # ran there): the replica moves to a free one; nginx is told below.
            moved = _on_a_free_port(entry, desired, state)
            print(f"{entry.id}: port {entry.port} is taken; moving to {moved.port}", flush=True)
            desired[desired.index(entry)] = moved
            env = services.replica_env(layout, settings, moved, selected.methods)
            try:
                services.wait_ready(
                    layout, spawn(layout, state, moved.process, REPLICA_PROGRAM, env, moved.port)
                )
            except StackError as again:
                failures.append(str(again))
    if failures:
        raise StackError("\n".join(failures))

    state.row, state.policy, state.methods = selected.number, policy, selected.methods
    target = render_to(nginx_config(layout, state, desired), layout.nginx_conf)
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
    if state.monitoring:
        monitoring.write_targets(layout, state)


# -- up ---------------------------------------------------------------------------


def _up_conflicts(state: StackState, options: UpOptions) -> list[str]:
    """Settings ``up`` cannot change on a running stack (they need `down` first)."""
    conflicts = []
    pairs = (
        ("--port", options.port, state.port),
        ("--https-port", options.https_port, state.https_port),
        ("--alg", options.alg, state.alg or None),
        ("--redis", options.redis, redis_topology(state) or state.redis or None),
    )
    for flag, wanted, current in pairs:
        if wanted is not None and current is not None and wanted != current:
            conflicts.append(f"{flag} {wanted} (it runs with {current})")
    return conflicts


def cmd_up(layout: Layout, options: UpOptions) -> int:
    """Start (or complete) the stack; 0 when it is up."""
    state = StackState.load(layout)
    auth_pid = running_auth_pid(layout)
    if auth_pid is not None and state.https_port is None:
        # An auth service from before nginx fronted the stack (plain HTTP,
        # insecure cookies): replace it.
        services.stop(layout, AUTH, AUTH_PROGRAM)
        auth_pid = None
    if auth_pid is not None and (conflicts := _up_conflicts(state, options)):
        return error(
            "the running stack was started with other settings: "
            + "; ".join(conflicts)
            + "; stop it first (`./tessera down`)"
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
        return error(problem)
    count = options.replicas or len(state.replicas) or DEFAULT_REPLICAS

    if auth_pid is None and port_is_open(port):
        return error(
            f"port {port} on {LOOPBACK} is already in use by another program; "
            "choose another with --port"
        )
    if not layout.nginx_server(https_port).running and port_is_open(https_port):
        return error(
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
        ensure_secrets(layout, alg)
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
            started = spawn(layout, state, AUTH, AUTH_PROGRAM, auth_env, port)
            services.wait_ready(layout, started)
        state.port, state.https_port, state.alg = port, https_port, alg
        state.save(layout)
        replicas = list(state.replicas[:count])
        while len(replicas) < count:
            replicas.append(new_replica(replicas, port, https_port))
        state.live_port = choose_live_port(layout, state, replicas)
        reconcile(layout, state, replicas, selected, policy, migrate=True)
        ensure_live_page(layout, state)
        state.save(layout)
        _stop_unused_servers(layout, state)
        if restarted:
            _wait_services_ready(layout, state)
        if options.monitoring or state.monitoring:
            state.monitoring = True
            monitoring.ensure(layout, state)
            state.save(layout)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "whatever started is left running; `./tessera down` stops it.",
            file=sys.stderr,
        )
        return 1

    urls = urls_of(layout, state)
    write_stack_env(layout, urls)
    print("tessera is up:")
    print_urls(layout, urls, state)
    return 0


# -- changing a running stack -----------------------------------------------------
