"""The local stack launcher behind ``python -m tessera_stack``.

``up`` starts PostgreSQL and Redis (unless ``DATABASE_URL`` / ``REDIS_URL``
point elsewhere), generates the service's secrets once, migrates the
database and starts the auth service, all as background processes that
outlive the launcher. Everything lives under ``.run/`` in the current
directory (the repository root)::

    .run/data/        PostgreSQL cluster and Redis working directory
    .run/logs/        NAME.log: stdout and stderr of each process
    .run/pids/        NAME.pid
    .run/secrets/     session_hash_key, key_encryption_key (mode 0600)
    .run/state.json   what ``up`` started and where, for status and down
    .run/stack.env    URLs for scripts: BASE_URL, AUTH_URL, JWKS_URL, ...

``down`` stops what ``up`` started (``--purge`` also deletes ``.run/``),
``status`` tells what is alive, ``logs NAME`` prints the end of a log.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tessera_stack.processes import (
    StackError,
    is_alive,
    log_tail,
    port_is_open,
    read_pid_file,
    terminate,
    wait_until,
    write_pid_file,
)
from tessera_stack.servers import PostgresServer, RedisServer

__all__ = ["main"]

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_ALG = "ES256"
READY_TIMEOUT = 30.0
MIGRATE_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
SECRET_NAMES = ("session_hash_key", "key_encryption_key")
AUTH = "auth"
LOG_NAMES = ("auth", "migrate", "postgres", "redis")
# Exit status of "status" when the stack is not running (as LSB init scripts).
EXIT_NOT_RUNNING = 3


@dataclass(frozen=True)
class Layout:
    """Where the launcher keeps everything, under ``root`` (``.run/``)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def stack_env(self) -> Path:
        return self.root / "stack.env"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def create(self) -> None:
        for directory in (self.root, self.data, self.logs, self.pids):
            directory.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        self.secrets.chmod(0o700)

    def postgres(self) -> PostgresServer:
        return PostgresServer(
            self.data,
            log_path=self.log("postgres"),
            pid_path=self.pid("postgres"),
            detached=True,
        )

    def redis(self) -> RedisServer:
        return RedisServer(
            self.data, log_path=self.log("redis"), pid_path=self.pid("redis"), detached=True
        )


@dataclass(frozen=True)
class StackUrls:
    """The URLs a running stack answers on, as written to ``stack.env``."""

    port: int
    database_url: str
    redis_url: str

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth_url(self) -> str:
        # The same origin until nginx fronts the stack and mounts auth at /auth.
        return self.base_url

    def env(self) -> dict[str, str]:
        return {
            "BASE_URL": self.base_url,
            "AUTH_URL": self.auth_url,
            "JWKS_URL": f"{self.auth_url}/.well-known/jwks.json",
            "METADATA_URL": f"{self.auth_url}/.well-known/oauth-authorization-server",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
        }


# -- state --------------------------------------------------------------------


def _read_state(layout: Layout) -> dict[str, str]:
    try:
        raw = json.loads(layout.state.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def _write_state(layout: Layout, state: dict[str, str]) -> None:
    tmp = layout.state.with_name(".state.json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(layout.state)


def _auth_pid(layout: Layout) -> int | None:
    pid = read_pid_file(layout.pid(AUTH))
    return pid if pid is not None and is_alive(pid, "tessera_auth") else None


# -- up -----------------------------------------------------------------------


def _ensure_postgres(layout: Layout, state: dict[str, str]) -> str:
    if url := os.environ.get("DATABASE_URL"):
        state["postgres"] = "external"
        return url
    server = layout.postgres()
    if server.running and (url := state.get("database_url")):
        return url
    server.stop()  # clears a stale pid file, if any
    print("starting PostgreSQL ...", flush=True)
    server.start()
    state["postgres"] = "managed"
    return server.url


def _ensure_redis(layout: Layout, state: dict[str, str]) -> str:
    if url := os.environ.get("REDIS_URL"):
        state["redis"] = "external"
        return url
    server = layout.redis()
    if server.running and (url := state.get("redis_url")):
        return url
    server.stop()
    print("starting Redis ...", flush=True)
    server.start()
    state["redis"] = "managed"
    return server.url


def _ensure_secret(path: Path) -> None:
    """Create ``path`` with a fresh secret once; never overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_urlsafe(48))


def _service_env(layout: Layout, urls: StackUrls, alg: str) -> dict[str, str]:
    env = dict(os.environ)
    # The service refuses a secret given both inline and as a file.
    for name in ("TESSERA_SESSION_HASH_KEY", "TESSERA_KEY_ENCRYPTION_KEY"):
        env.pop(name, None)
    env.update(
        DATABASE_URL=urls.database_url,
        REDIS_URL=urls.redis_url,
        TESSERA_ENV="development",
        TESSERA_HOST=LOOPBACK,
        TESSERA_PORT=str(urls.port),
        TESSERA_ISSUER=urls.auth_url,
        TESSERA_SESSION_HASH_KEY_FILE=str(layout.secrets / "session_hash_key"),
        TESSERA_KEY_ENCRYPTION_KEY_FILE=str(layout.secrets / "key_encryption_key"),
        # Loopback development without TLS; nginx with TLS comes in front later.
        TESSERA_COOKIE_INSECURE="1",
        TESSERA_JWT_ALG=alg,
        PYTHONUNBUFFERED="1",
    )
    return env


def _migrate(layout: Layout, env: dict[str, str]) -> None:
    log_path = layout.log("migrate")
    with log_path.open("ab") as log:
        log.write(b"\n--- tessera_stack: python -m tessera_auth migrate\n")
        log.flush()
        try:
            result = subprocess.run(
                [sys.executable, "-m", "tessera_auth", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
                timeout=MIGRATE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"migration did not finish within {MIGRATE_TIMEOUT:g} s; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            ) from None
    if result.returncode != 0:
        raise StackError(
            f"migration failed with status {result.returncode}; "
            f"last lines of {log_path}:\n{log_tail(log_path)}"
        )


def _readyz(port: int) -> bool:
    # http.client, not urllib: no proxy environment variables apply.
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _start_auth(layout: Layout, env: dict[str, str], port: int) -> int:
    log_path = layout.log(AUTH)
    with log_path.open("ab") as log:
        log.write(f"\n--- tessera_stack: python -m tessera_auth serve (port {port})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tessera_auth", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    write_pid_file(layout.pid(AUTH), proc.pid)

    def exited() -> str | None:
        code = proc.poll()
        return None if code is None else f"the auth service exited with status {code}"

    try:
        ready = wait_until(lambda: _readyz(port), timeout=READY_TIMEOUT, abort=exited)
    except StackError as exc:
        layout.pid(AUTH).unlink(missing_ok=True)
        raise StackError(f"{exc}; last lines of {log_path}:\n{log_tail(log_path)}") from None
    if not ready:
        terminate(proc.pid, timeout=STOP_TIMEOUT)
        layout.pid(AUTH).unlink(missing_ok=True)
        raise StackError(
            f"http://{LOOPBACK}:{port}/readyz did not answer 200 within {READY_TIMEOUT:g} s; "
            f"last lines of {log_path}:\n{log_tail(log_path)}"
        )
    return proc.pid


def _write_stack_env(layout: Layout, urls: StackUrls) -> None:
    lines = [f"{key}={value}\n" for key, value in urls.env().items()]
    tmp = layout.stack_env.with_name(".stack.env.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(layout.stack_env)


def _print_urls(layout: Layout, urls: StackUrls) -> None:
    env = urls.env()
    rows = [
        ("base URL", env["BASE_URL"]),
        ("auth", env["AUTH_URL"]),
        ("JWKS", env["JWKS_URL"]),
        ("metadata", env["METADATA_URL"]),
        ("database", env["DATABASE_URL"]),
        ("redis", env["REDIS_URL"]),
        ("env file", _display(layout.stack_env)),
        ("logs", "python -m tessera_stack logs auth"),
        ("stop", "python -m tessera_stack down"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print("  (cookies without Secure: TESSERA_COOKIE_INSECURE=1, loopback development only)")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_up(layout: Layout, port: int, alg: str) -> int:
    """Start the stack; 0 when it is up (or already was)."""
    if (pid := _auth_pid(layout)) is not None:
        state = _read_state(layout)
        print(f"tessera is already running (auth pid {pid}).")
        if {"port", "database_url", "redis_url"} <= state.keys():
            urls = StackUrls(int(state["port"]), state["database_url"], state["redis_url"])
            _print_urls(layout, urls)
        return 0
    if port_is_open(port):
        print(
            f"error: port {port} on {LOOPBACK} is already in use by another program; "
            "choose another with --port",
            file=sys.stderr,
        )
        return 1

    layout.create()
    state = _read_state(layout)
    state.pop("port", None)
    try:
        state["database_url"] = _ensure_postgres(layout, state)
        _write_state(layout, state)
        state["redis_url"] = _ensure_redis(layout, state)
        _write_state(layout, state)
        for name in SECRET_NAMES:
            _ensure_secret(layout.secrets / name)
        urls = StackUrls(port, state["database_url"], state["redis_url"])
        env = _service_env(layout, urls, alg)
        print("migrating the database ...", flush=True)
        _migrate(layout, env)
        print("starting the auth service ...", flush=True)
        pid = _start_auth(layout, env, port)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if any(layout.pid(name).exists() for name in ("postgres", "redis")):
            print(
                "PostgreSQL/Redis are left running; `python -m tessera_stack down` stops them.",
                file=sys.stderr,
            )
        return 1

    state["port"] = str(port)
    _write_state(layout, state)
    _write_stack_env(layout, urls)
    print(f"tessera is up (auth pid {pid}):")
    _print_urls(layout, urls)
    return 0


# -- down, status, logs -------------------------------------------------------


def cmd_down(layout: Layout, purge: bool) -> int:
    """Stop everything ``up`` started; with ``purge`` delete ``.run/`` too."""
    stopped: list[str] = []
    pid = read_pid_file(layout.pid(AUTH))
    if pid is not None and terminate(
        pid, sig=signal.SIGTERM, timeout=STOP_TIMEOUT, expect="tessera_auth"
    ):
        stopped.append(AUTH)
    layout.pid(AUTH).unlink(missing_ok=True)
    for server in (layout.redis(), layout.postgres()):
        if server.running:
            stopped.append(server.name)
        server.stop(timeout=STOP_TIMEOUT)
    layout.stack_env.unlink(missing_ok=True)
    layout.state.unlink(missing_ok=True)
    if purge and layout.root.exists():
        # The PostgreSQL cluster may live outside .run/ behind a symlink.
        layout.postgres().remove_data()
        shutil.rmtree(layout.root)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if purge:
        print(f"removed {_display(layout.root)}")
    return 0


def cmd_status(layout: Layout) -> int:
    """Print what is alive; 0 when the auth service runs, else 3."""
    state = _read_state(layout)
    rows: list[tuple[str, str, str]] = []
    auth_pid = _auth_pid(layout)
    auth_url = f"http://{LOOPBACK}:{state['port']}" if "port" in state else ""
    rows.append((AUTH, _liveness(auth_pid), auth_url if auth_pid else ""))
    for server, url_key in ((layout.postgres(), "database_url"), (layout.redis(), "redis_url")):
        if state.get(server.name) == "external":
            rows.append((server.name, "external", state.get(url_key, "")))
        else:
            pid = server.pid
            rows.append((server.name, _liveness(pid), state.get(url_key, "") if pid else ""))
    width = max(len(name) for name, _, _ in rows)
    for name, liveness, url in rows:
        print(f"{name:<{width}}  {liveness:<22}  {url}".rstrip())
    return 0 if auth_pid is not None else EXIT_NOT_RUNNING


def _liveness(pid: int | None) -> str:
    return f"running (pid {pid})" if pid is not None else "stopped"


def cmd_logs(layout: Layout, name: str | None, lines: int) -> int:
    """Print the tail of one log, or of every log when ``name`` is None."""
    if name is not None:
        path = layout.log(name)
        if not path.exists():
            print(f"no log yet: {_display(path)}", file=sys.stderr)
            return 1
        print(log_tail(path, lines))
        return 0
    paths = sorted(layout.logs.glob("*.log")) if layout.logs.is_dir() else []
    if not paths:
        print(f"no logs yet in {_display(layout.logs)}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"==> {_display(path)} <==")
        print(log_tail(path, lines))
        print()
    return 0


# -- CLI ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_stack",
        description="Run tessera's local stack (PostgreSQL, Redis, auth) under ./.run/.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the stack (idempotent)")
    up.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"auth service port on {LOOPBACK} (default {DEFAULT_PORT})",
    )
    up.add_argument(
        "--alg",
        default=DEFAULT_ALG,
        help=f"JWT signing algorithm, TESSERA_JWT_ALG (default {DEFAULT_ALG})",
    )

    down = commands.add_parser("down", help="stop everything `up` started")
    down.add_argument(
        "--purge", action="store_true", help="also delete .run/ (data, logs, secrets)"
    )

    commands.add_parser("status", help="show which processes are alive")

    logs = commands.add_parser("logs", help="print the end of a log")
    logs.add_argument("name", nargs="?", choices=LOG_NAMES, help="which log (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the launcher CLI; returns the process exit status."""
    args = _parser().parse_args(argv)
    layout = Layout(Path.cwd() / ".run")
    command: str = args.command
    if command == "up":
        port: int = args.port
        if not 0 < port < 65536:
            print(f"error: invalid port {port}", file=sys.stderr)
            return 2
        return cmd_up(layout, port, str(args.alg))
    if command == "down":
        return cmd_down(layout, purge=bool(args.purge))
    if command == "status":
        return cmd_status(layout)
    name: str | None = args.name
    lines: int = args.lines
    return cmd_logs(layout, name, lines)
