"""The local stack's commands behind ``python -m tessera_stack`` (parsed in
:mod:`tessera_stack.cli`); ``up`` itself is :mod:`tessera_stack.reconcile`.

``up`` starts PostgreSQL and Redis (unless ``DATABASE_URL`` / ``REDIS_URL``
point elsewhere), generates the secrets and the TLS certificate once,
migrates the databases, and starts the auth service, N resource replicas
and nginx in front of them, all as background processes that outlive the
launcher. The replicas and the nginx policy follow a row of the
load-balancer demonstration (``--row``, see :mod:`tessera_stack.rows`).

While the stack runs, ``row N`` switches it to another row, ``add-replica``
/ ``remove-replica`` / ``scale N`` change the number of replicas (nginx
reloads gracefully: requests in flight finish, new ones see the new set),
``kill-replica ID`` SIGKILLs one (a crash: nginx is not told), ``kill-redis``
SIGKILLs the stack's own Redis (``up`` brings it back),
``restart-replicas`` restarts them one at a time with nginx routing around
each (a rolling restart that fails no request), ``status``
shows what runs, ``logs NAME`` prints a log, and ``down`` stops everything
(``python -m tessera_demo demo`` walks every row). Every command that changes
the stack brings it to its recorded shape, so a killed replica comes back
with the next one.

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

import shutil
import signal
import sys
from collections.abc import Sequence

from tessera_stack import live_page, monitoring, redis_faults, services, stack_redis
from tessera_stack.nginx_conf import render_to
from tessera_stack.processes import (
    StackError,
    log_tail,
    port_is_open,
    read_pid_file,
    terminate,
    wait_until,
)
from tessera_stack.reconcile import (
    MAX_REPLICAS,
    STOP_TIMEOUT,
    current_settings,
    live_pid,
    new_replica,
    nginx_config,
    reconcile,
    redis_topology,
    running_auth_pid,
    spawn,
)
from tessera_stack.rows import ROWS, policy_problem
from tessera_stack.servers import LOOPBACK
from tessera_stack.services import AUTH_PROGRAM, REPLICA_PROGRAM, replica_pid
from tessera_stack.stack_report import (
    describe_row,
    display,
    error,
    urls_of,
    without_password,
    write_stack_env,
)
from tessera_stack.state import (
    AUTH,
    NGINX,
    PROMETHEUS,
    REPLICA_PREFIX,
    Layout,
    ReplicaEntry,
    StackState,
)

__all__ = ["EXIT_NOT_RUNNING", "admin_env"]

# Exit status of "status" when the stack is not running (as LSB init scripts).
EXIT_NOT_RUNNING = 3


# -- small helpers ------------------------------------------------------------


def _running_state(layout: Layout) -> StackState:
    """The state of a running stack; StackError when none runs."""
    state = StackState.load(layout)
    if running_auth_pid(layout) is None or state.https_port is None or state.row is None:
        raise StackError("the stack is not running; start it with `./tessera up`")
    return state


def admin_env(layout: Layout) -> dict[str, str]:
    """The environment of ``python -m tessera_auth``'s admin commands on the running
    stack: the auth service's own (its database, Redis user, secrets and issuer), so a
    command sees what the service sees. StackError when no stack runs."""
    state = _running_state(layout)
    return services.auth_env(layout, current_settings(layout, state))


def cmd_row(layout: Layout, number: int, policy: str | None) -> int:
    """Switch the running stack to row ``number`` (replicas restart: sessions in them go)."""
    try:
        state = _running_state(layout)
        selected = ROWS[number]
        chosen = policy or selected.policy
        if problem := policy_problem(selected, chosen):
            return error(problem)
        reconcile(layout, state, state.replicas, selected, chosen, restart=True)
    except StackError as exc:
        return error(str(exc))
    write_stack_env(layout, urls_of(layout, state))
    print(f"now {describe_row(state)}")
    return 0


def _resize(layout: Layout, state: StackState, desired: list[ReplicaEntry]) -> None:
    assert state.row is not None
    reconcile(layout, state, desired, ROWS[state.row], state.policy)
    write_stack_env(layout, urls_of(layout, state))


def cmd_add_replica(layout: Layout) -> int:
    """Start one more replica, then let nginx send it requests."""
    try:
        state = _running_state(layout)
        if len(state.replicas) >= MAX_REPLICAS:
            return error(f"at most {MAX_REPLICAS} replicas")
        assert state.port is not None
        assert state.https_port is not None
        entry = new_replica(state.replicas, state.port, state.https_port)
        _resize(layout, state, [*state.replicas, entry])
    except StackError as exc:
        return error(str(exc))
    print(f"added replica {entry.id} on {LOOPBACK}:{entry.port}")
    return 0


def cmd_remove_replica(layout: Layout, replica_id: str | None) -> int:
    """Take a replica out of nginx, then stop it (default: the newest)."""
    try:
        state = _running_state(layout)
        if not state.replicas:
            return error("there are no replicas")
        target = (
            max(state.replicas, key=lambda entry: entry.number)
            if replica_id is None
            else state.replica(replica_id)
        )
        if target is None:
            known = ", ".join(entry.id for entry in state.replicas)
            return error(f"no replica {replica_id!r} (there are: {known})")
        if len(state.replicas) == 1:
            return error("cannot remove the last replica")
        _resize(layout, state, [entry for entry in state.replicas if entry.id != target.id])
    except StackError as exc:
        return error(str(exc))
    print(f"removed replica {target.id}")
    return 0


def cmd_scale(layout: Layout, count: int) -> int:
    """Add or remove replicas (newest first) until there are ``count``."""
    if not 1 <= count <= MAX_REPLICAS:
        return error(f"the replica count must be 1-{MAX_REPLICAS}")
    try:
        state = _running_state(layout)
        assert state.port is not None
        assert state.https_port is not None
        desired = sorted(state.replicas, key=lambda entry: entry.number)[:count]
        while len(desired) < count:
            desired.append(new_replica(desired, state.port, state.https_port))
        _resize(layout, state, desired)
    except StackError as exc:
        return error(str(exc))
    print(f"{count} replicas: {', '.join(entry.id for entry in desired)}")
    return 0


def cmd_kill_replica(layout: Layout, replica_id: str) -> int:
    """SIGKILL a replica and tell nobody (a crash); nginx finds out by itself."""
    state = StackState.load(layout)
    entry = state.replica(replica_id)
    if entry is None:
        known = ", ".join(e.id for e in state.replicas) or "none"
        return error(f"no replica {replica_id!r} (there are: {known})")
    pid = replica_pid(layout, entry)
    if pid is None:
        return error(f"replica {replica_id} is not running")
    terminate(pid, sig=signal.SIGKILL, timeout=STOP_TIMEOUT, expect=REPLICA_PROGRAM)
    # Its port must be closed before this returns: the crash has happened.
    if not wait_until(lambda: not port_is_open(entry.port), timeout=STOP_TIMEOUT):
        return error(f"port {entry.port} still answers after killing {replica_id}")
    layout.pid(entry.process).unlink(missing_ok=True)
    print(f"killed replica {replica_id} (pid {pid}); nginx was not told")
    return 0


def cmd_kill_redis(layout: Layout) -> int:
    """SIGKILL the stack's own Redis (a crash; nobody is told): the single server, or the
    primary of its Sentinel group or of the Cluster's revocation slot. ``up`` brings it
    back on its port (the single server with its AOF)."""
    try:
        state = _running_state(layout)
        target = redis_faults.find_target(layout, state)
    except StackError as exc:
        return error(str(exc))
    terminate(target.pid, sig=signal.SIGKILL, timeout=STOP_TIMEOUT, expect="redis-server")
    if not wait_until(lambda: not port_is_open(target.port), timeout=STOP_TIMEOUT):
        return error(f"port {target.port} still answers after killing {target.label}")
    print(
        f"killed {target.label} (pid {target.pid}, port {target.port}); "
        "`./tessera up` brings it back"
    )
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
        settings = current_settings(layout, state)
        methods = state.methods or ROWS[state.row].methods
        nginx = layout.nginx_server(state.https_port)
        if len(state.replicas) == 1:
            print("one replica: requests fail while it restarts", file=sys.stderr)
        for entry in targets:
            others = [other for other in state.replicas if other.id != entry.id]
            if others and nginx.running:
                print(f"reloading nginx without {entry.id} ...", flush=True)
                render_to(nginx_config(layout, state, others), layout.nginx_conf)
                nginx.reload()
            services.stop(layout, entry.process, REPLICA_PROGRAM)
            print(f"starting replica {entry.id} ({methods}) ...", flush=True)
            started = spawn(
                layout,
                state,
                entry.process,
                REPLICA_PROGRAM,
                services.replica_env(layout, settings, entry, methods),
                entry.port,
            )
            state.save(layout)
            services.wait_ready(layout, started)
            render_to(nginx_config(layout, state, state.replicas), layout.nginx_conf)
            if nginx.running:
                print(f"reloading nginx with {entry.id} ...", flush=True)
                nginx.reload()
            else:
                print(f"starting nginx ({state.policy}) on port {state.https_port} ...", flush=True)
                nginx.start()
            print(f"restarted replica {entry.id} (pid {started.proc.pid})", flush=True)
    except StackError as exc:
        return error(str(exc))
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
    if monitoring.stop(layout, state):
        stopped.append(PROMETHEUS)
    if services.stop(layout, live_page.LIVE, live_page.LIVE_PROGRAM):
        stopped.append(live_page.LIVE)
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
        print(f"removed {display(layout.root)}")
    return 0


def _liveness(pid: int | None) -> str:
    return f"running (pid {pid})" if pid is not None else "stopped"


def cmd_status(layout: Layout) -> int:
    """Print what is alive; 0 when the auth service runs, else 3."""
    state = StackState.load(layout)
    rows: list[tuple[str, str, str]] = []
    auth_pid = running_auth_pid(layout)
    auth_url = f"http://{LOOPBACK}:{state.port}" if state.port is not None else ""
    rows.append((AUTH, _liveness(auth_pid), auth_url if auth_pid else ""))
    for server, url in (
        (layout.postgres(), state.database_url),
        (layout.redis(), state.redis_url),
    ):
        if getattr(state, server.name) == "external":
            rows.append((server.name, "external", without_password(url)))
        elif server.name == "redis" and redis_topology(state) in stack_redis.GROUPS:
            group = stack_redis.RedisGroup.load(layout, state.redis_topology)
            for name, pid, node in group.pids(layout) if group else []:
                rows.append((name, _liveness(pid), f"{LOOPBACK}:{node.port}"))
        else:
            pid = server.pid
            rows.append((server.name, _liveness(pid), without_password(url) if pid else ""))
    if state.https_port is not None:
        nginx_pid = layout.nginx_server(state.https_port).pid
        url = f"https://{LOOPBACK}:{state.https_port}" if nginx_pid else ""
        rows.append((NGINX, _liveness(nginx_pid), url))
    for entry in state.replicas:
        pid = replica_pid(layout, entry)
        rows.append((entry.process, _liveness(pid), f"http://{LOOPBACK}:{entry.port}"))
    if state.live_port is not None:
        pid = live_pid(layout)
        url = f"https://{LOOPBACK}:{state.https_port}/live/" if pid else ""
        rows.append((live_page.LIVE, _liveness(pid), url))
    if state.monitoring and state.prometheus_port is not None:
        prometheus = layout.prometheus_server(state.prometheus_port)
        url = prometheus.url if prometheus.running else ""
        rows.append((PROMETHEUS, _liveness(prometheus.pid), url))
    width = max(len(name) for name, _, _ in rows)
    for name, liveness, url in rows:
        print(f"{name:<{width}}  {liveness:<22}  {url}".rstrip())
    if auth_pid is not None and (description := describe_row(state)):
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
            print(f"no log {display(path)} (logs: {available})", file=sys.stderr)
            return 1
        print(log_tail(path, lines))
        return 0
    names = _log_names(layout)
    if not names:
        print(f"no logs yet in {display(layout.logs)}", file=sys.stderr)
        return 1
    for each in names:
        path = layout.log(each)
        print(f"==> {display(path)} <==")
        print(log_tail(path, lines))
        print()
    return 0
