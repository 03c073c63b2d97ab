"""Real, throwaway PostgreSQL and Redis servers run as local processes.

Each server binds a free port on 127.0.0.1, keeps its data and log under a
base directory, and is started and stopped synchronously, so the same class
serves a pytest session fixture and the local stack launcher::

    with PostgresServer(tmp_path) as pg, RedisServer(tmp_path) as redis:
        run_tests(pg.url, redis.url)

With ``detached=True`` and a ``pid_path`` the server runs in its own session
and outlives the Python process that started it; a later process stops it
with a new object built on the same paths (``stop()`` falls back to the pid
file).

Both servers trust every connection: they listen on loopback only and exist
for tests and local development, never for production data.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self, TypedDict, Unpack
from urllib.parse import quote

from tessera_stack.processes import (
    StackError,
    free_port,
    is_alive,
    log_tail,
    port_is_open,
    read_pid_file,
    terminate,
    wait_until,
    write_pid_file,
)

__all__ = [
    "NginxServer",
    "PostgresServer",
    "RedisServer",
    "StackError",
    "find_nginx",
    "find_postgres_bindir",
    "free_port",
    "nginx_check",
    "sweep_orphaned_scratch",
]

LOOPBACK = "127.0.0.1"
_PORT_ATTEMPTS = 3
# sockaddr_un.sun_path is 108 bytes on Linux, including the trailing NUL.
_MAX_UNIX_SOCKET_PATH = 107
_SCRATCH_PREFIX = "tessera-postgres-"
# Orphaned scratch clusters younger than this are left alone.
_SCRATCH_GRACE_SECONDS = 600.0


class _PortTakenError(StackError):
    """Someone bound the chosen port between free_port() and the server."""


class ProcessOptions(TypedDict, total=False):
    """Where a server's process logs and records its pid, and how it is run
    (see :class:`_LocalServer`)."""

    log_path: Path | str | None
    pid_path: Path | str | None
    detached: bool
    startup_timeout: float


class ServerOptions(ProcessOptions, total=False):
    """:class:`ProcessOptions` and the port (None: a free one)."""

    port: int | None


class _LocalServer(abc.ABC):
    """Start/stop/pid-file/log plumbing shared by the concrete servers."""

    #: Short name: default log file name and error messages.
    name: ClassVar[str]
    #: Text found in the server's command line; guards against stale pids.
    program: ClassVar[str]
    #: The signal that asks the server for a clean, quick shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(
        self,
        base_dir: Path | str,
        *,
        port: int | None = None,
        log_path: Path | str | None = None,
        pid_path: Path | str | None = None,
        detached: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        self._base_dir = Path(base_dir).absolute()
        self._requested_port = port
        self._port = port
        self._log_path = (
            Path(log_path).absolute()
            if log_path is not None
            else self._base_dir / f"{self.name}.log"
        )
        self._pid_path = Path(pid_path).absolute() if pid_path is not None else None
        self._detached = detached
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API -------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The directory this server keeps its data (and default log) under."""
        return self._base_dir

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stdout and stderr."""
        return self._log_path

    @property
    def pid_path(self) -> Path | None:
        """The pid file written on start and removed on stop, if any."""
        return self._pid_path

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; known once started (or if requested)."""
        if self._port is None:
            raise StackError(f"{self.name} has no port yet: call start() first")
        return self._port

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """A client URL for the running server."""

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, from this process or the pid file."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._pid_path is not None:
            pid = read_pid_file(self._pid_path)
            if pid is not None and is_alive(pid, self.program):
                return pid
        return None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    def detach(self, pid_path: Path | str, log_path: Path | str | None = None) -> None:
        """Before :meth:`start`: run detached, as ``detached=True, pid_path=...`` would.

        For servers built by code that takes neither (the nodes of a
        :mod:`tessera_stack.redis_topologies` group the local stack runs): the
        server gets a session of its own, outlives this process, and is found
        again through ``pid_path``; ``log_path`` moves its log too.
        """
        if self._proc is not None:
            raise StackError(f"{self.name} is already running: detach it before start()")
        self._pid_path = Path(pid_path).absolute()
        self._detached = True
        if log_path is not None:
            self._log_path = Path(log_path).absolute()

    def start(self) -> None:
        """Start the server and block until it answers, or raise StackError."""
        if self.running:
            raise StackError(f"{self.name} is already running (pid {self.pid})")
        self._base_dir.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._prepare()
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port(LOOPBACK)
            try:
                self._launch(port)
            except _PortTakenError:
                if attempt == attempts:
                    raise
                continue
            break
        try:
            self._after_start()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (its stop signal, SIGKILL after ``timeout``).

        Safe to call when the server is not running. Leaves the data in
        place; see :meth:`remove_data`.
        """
        if self._proc is not None:
            proc, self._proc = self._proc, None
            atexit.unregister(self._stop_at_exit)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
        elif self._pid_path is not None:
            pid = read_pid_file(self._pid_path)
            if pid is not None:
                terminate(pid, sig=self.stop_signal, timeout=timeout, expect=self.program)
        if self._pid_path is not None:
            self._pid_path.unlink(missing_ok=True)
        if self._requested_port is None:
            self._port = None

    @abc.abstractmethod
    def remove_data(self) -> None:
        """Delete the server's data; the server must be stopped."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._port is not None else "stopped"
        return f"{type(self).__name__}({str(self._base_dir)!r}, {state})"

    # -- hooks for subclasses -------------------------------------------

    def _prepare(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Create data directories etc. before the first launch attempt."""

    @abc.abstractmethod
    def _command(self, port: int) -> list[str]:
        """The server's argv for ``port``."""

    @abc.abstractmethod
    def _ready(self, port: int) -> bool:
        """Whether the server on ``port`` accepts requests (one quick probe)."""

    def _after_start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Work that needs the running server (e.g. create a database)."""

    def _popen_options(self) -> _PopenOptions:
        return _PopenOptions(cwd=self._base_dir, env=dict(os.environ))

    # -- internals -------------------------------------------------------

    def _launch(self, port: int) -> None:
        if port_is_open(port, LOOPBACK):
            # Probing would reach the other server and mistake it for ours.
            raise _PortTakenError(f"port {port} on {LOOPBACK} is already in use")
        options = self._popen_options()
        with self._log_path.open("ab") as log:
            log.write(f"\n--- tessera_stack: starting {self.name} on port {port}\n".encode())
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=options.cwd,
                env=options.env,
                start_new_session=self._detached,
                user=options.uid,
                group=options.gid,
                extra_groups=options.extra_groups,
            )

        def exited() -> str | None:
            code = proc.poll()
            return None if code is None else f"{self.name} exited with status {code}"

        try:
            ready = wait_until(
                lambda: self._ready(port), timeout=self._startup_timeout, abort=exited
            )
        except StackError as exc:
            if _log_mentions_port_in_use(self._log_path, offset):
                raise _PortTakenError(f"{self.name}: port {port} was taken") from exc
            raise StackError(self._failure(str(exc))) from exc
        except BaseException:
            _kill(proc)
            raise
        if not ready:
            _kill(proc)
            raise StackError(
                self._failure(
                    f"{self.name} did not become ready within {self._startup_timeout:g} s"
                )
            )
        self._proc = proc
        self._port = port
        if self._pid_path is not None:
            write_pid_file(self._pid_path, proc.pid)
        if not self._detached:
            # A test session that dies without teardown must not leave
            # servers behind.
            atexit.register(self._stop_at_exit)

    def _failure(self, message: str) -> str:
        return f"{message}; last lines of {self._log_path}:\n{log_tail(self._log_path)}"

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=5.0)


@dataclass(frozen=True)
class _PopenOptions:
    cwd: Path
    env: dict[str, str]
    # Run as this uid/gid (dropping root's supplementary groups too);
    # None keeps the current credentials.
    uid: int | None = None
    gid: int | None = None

    @property
    def extra_groups(self) -> list[int] | None:
        return [] if self.uid is not None else None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)


def _log_mentions_port_in_use(path: Path, offset: int) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return b"Address already in use" in handle.read()
    except OSError:
        return False


# -- PostgreSQL ---------------------------------------------------------------


class PostgresServer(_LocalServer):
    """A PostgreSQL cluster on 127.0.0.1 with trust authentication, throwaway by default.

    The cluster lives in ``base_dir/postgres`` (created with initdb on first
    start, kept across restarts) with its unix socket in the same directory.
    ``user`` is the superuser; ``database`` is created on start when
    missing. By default ``fsync`` and ``synchronous_commit`` are off: a
    crash may lose the last commits, or the data, which is the point of a
    throwaway server. With ``persistent=True`` (the local stack) they keep
    PostgreSQL's defaults: a commit acknowledged is on disk, and a restart
    after a crash (SIGKILL included) recovers it.

    PostgreSQL refuses to run as root. When this process is root, initdb
    and postgres run as the ``postgres`` system user (or a ``tessera``
    system user, created when neither exists). If that user cannot reach
    ``base_dir`` (pytest's temporary directories are mode 0700, for one),
    the cluster goes into a private directory under the system temporary
    directory and ``base_dir/postgres`` becomes a symlink to it.

    With ``password`` (the local stack) TCP logins need a password
    (``scram-sha-256``; only the unix socket in the data directory, which
    nobody else can reach, stays ``trust``) and :attr:`url` carries it; each
    of ``roles`` (name -> password) is an unprivileged login role that owns a
    schema of its name, its only search path: it sees none of the
    superuser's tables (:meth:`role_url`).
    """

    name = "postgres"
    program = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: it ends client sessions
    # instead of waiting for them (SIGTERM, "smart", waits forever).
    stop_signal = signal.SIGINT

    def __init__(
        self,
        base_dir: Path | str,
        *,
        user: str = "tessera",
        database: str = "tessera",
        persistent: bool = False,
        password: str | None = None,
        roles: Mapping[str, str] | None = None,
        **options: Unpack[ServerOptions],
    ) -> None:
        super().__init__(base_dir, **options)
        if roles and password is None:
            raise ValueError("login roles need a superuser password (else TCP is trust)")
        self._user = user
        self._password = password
        self._roles = dict(roles or {})
        self._database = database
        self._persistent = persistent
        self._bindir: Path | None = None
        self._os_user: pwd.struct_passwd | None = None

    @property
    def user(self) -> str:
        """The database superuser name."""
        return self._user

    @property
    def persistent(self) -> bool:
        """Whether a commit is on disk before it is acknowledged (fsync, synchronous commit)."""
        return self._persistent

    @property
    def database(self) -> str:
        """The database created on start."""
        return self._database

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (symlinks resolved)."""
        link = self._base_dir / "postgres"
        return link.resolve() if link.is_symlink() else link

    @property
    def url(self) -> str:
        """``postgresql://USER[:PASSWORD]@127.0.0.1:PORT/DATABASE``, as the superuser."""
        return self._url_for(self._user, self._password)

    def role_url(self, role: str) -> str:
        """The URL that logs in as ``role`` (one of ``roles``)."""
        return self._url_for(role, self._roles[role])

    def _url_for(self, user: str, password: str | None) -> str:
        login = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql://{login}@{LOOPBACK}:{self.port}/{self._database}"

    def remove_data(self) -> None:
        """Delete the cluster (and its symlink), which must be stopped."""
        if self.running:
            raise StackError("stop the PostgreSQL server before removing its data")
        link = self._base_dir / "postgres"
        if link.is_symlink():
            target = link.resolve()
            scratch = target.parent
            if scratch.name.startswith(_SCRATCH_PREFIX) and (scratch / "owner").exists():
                target = scratch
            shutil.rmtree(target, ignore_errors=True)
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)

    # -- hooks -----------------------------------------------------------

    def _prepare(self) -> None:
        self._bindir = find_postgres_bindir()
        self._os_user = _postgres_os_user()
        data_dir = self._ensure_data_dir()
        if not (data_dir / "PG_VERSION").exists():
            self._initdb(data_dir)
        _remove_stale_lock(data_dir)
        if self._password is not None:
            if not self._socket_dir(65535):  # the longest a port makes the path
                # The socket is how passwords are set (before TCP can log in).
                raise StackError(f"{data_dir} is too long a path for PostgreSQL's unix socket")
            self._write_hba(data_dir)

    def _socket_dir(self, port: int) -> str:
        """Where the server's unix socket is ("" when none: the path would not fit
        in sockaddr_un, and TCP is enough for us)."""
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{port}.lock") > _MAX_UNIX_SOCKET_PATH:
            return ""
        return socket_dir

    def _command(self, port: int) -> list[str]:
        data_dir = self.data_dir
        socket_dir = self._socket_dir(port)
        settings = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": socket_dir,
            "max_connections": "200",
        }
        if not self._persistent:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        argv = [str(self._bin("postgres")), "-D", str(data_dir), "-p", str(port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _ready(self, port: int) -> bool:
        result = subprocess.run(
            [
                str(self._bin("pg_isready")),
                "--quiet",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--username",
                self._user,
                "--dbname",
                "postgres",
                "--timeout",
                "2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_client_env(),
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def _after_start(self) -> None:
        # format('%I') quotes the name; \gexec runs the generated statement
        # only when the database is missing (CREATE DATABASE has no
        # IF NOT EXISTS, and cannot run inside a DO block).
        script = (
            "SELECT format('CREATE DATABASE %I', :'dbname') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \\gexec\n"
        )
        variables = {"dbname": self._database}
        if self._password is not None:
            # Every start: the passwords are the stack's secrets, whatever the cluster had.
            script += "ALTER ROLE :\"superuser\" PASSWORD :'superuser_password';\n"
            variables.update(superuser=self._user, superuser_password=self._password)
        self._psql("postgres", script, variables, f"could not create database {self._database!r}")
        for role, password in sorted(self._roles.items()):
            variables = {"role": role, "password": password, "dbname": self._database}
            self._psql(
                self._database,
                ROLE_SCRIPT.read_text(),
                variables,
                f"could not set up role {role!r}",
            )

    def _psql(self, database: str, script: str, variables: Mapping[str, str], what: str) -> None:
        """Run ``script`` as the superuser: over the data directory's socket when it
        has one (``trust``: also before a password is set), else over TCP."""
        socket_dir = self._socket_dir(self.port)
        host = socket_dir or LOOPBACK
        env = _client_env()
        if self._password is not None:
            env["PGPASSWORD"] = self._password
        result = subprocess.run(
            [
                str(self._bin("psql")),
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                *(f"--set={name}={value}" for name, value in variables.items()),
                "--host",
                host,
                "--port",
                str(self.port),
                "--username",
                self._user,
                "--dbname",
                database,
            ],
            input=script.encode(),
            capture_output=True,
            env=env,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise StackError(f"{what}: {output}")

    def _write_hba(self, data_dir: Path) -> None:
        """Passwords on TCP; ``trust`` only on the socket in the (0700) data directory."""
        hba = data_dir / "pg_hba.conf"
        hba.write_text(
            "# Written by tessera_stack at every start.\n"
            "local all all trust\n"
            f"host all all {LOOPBACK}/32 scram-sha-256\n",
            encoding="ascii",
        )
        if self._os_user is not None:
            os.chown(hba, self._os_user.pw_uid, self._os_user.pw_gid)

    def _popen_options(self) -> _PopenOptions:
        env = _client_env()
        if self._os_user is None:
            return _PopenOptions(cwd=self.data_dir, env=env)
        env.update(HOME=self._os_user.pw_dir, USER=self._os_user.pw_name)
        env["LOGNAME"] = self._os_user.pw_name
        return _PopenOptions(
            cwd=self.data_dir, env=env, uid=self._os_user.pw_uid, gid=self._os_user.pw_gid
        )

    # -- internals -------------------------------------------------------

    def _bin(self, program: str) -> Path:
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return self._bindir / program

    def _ensure_data_dir(self) -> Path:
        link = self._base_dir / "postgres"
        os_user = self._os_user
        if link.is_symlink():
            data_dir = link.resolve()
            if not data_dir.is_dir():
                # The temporary directory was cleaned (e.g. by a reboot).
                link.unlink()
                return self._ensure_data_dir()
        elif os_user is None or _can_traverse(self._base_dir, os_user):
            data_dir = link
            data_dir.mkdir(mode=0o700, exist_ok=True)
        else:
            data_dir = _make_scratch_data_dir(link, os_user)
        if os_user is not None:
            _chown_tree(data_dir, os_user.pw_uid, os_user.pw_gid)
        data_dir.chmod(0o700)
        return data_dir

    def _initdb(self, data_dir: Path) -> None:
        options = self._popen_options()
        argv = [
            str(self._bin("initdb")),
            "--pgdata",
            str(data_dir),
            "--username",
            self._user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]
        with self._log_path.open("ab") as log:
            log.write(b"\n--- tessera_stack: initdb\n")
            log.flush()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=options.cwd,
                env=options.env,
                check=False,
                timeout=120,
                user=options.uid,
                group=options.gid,
                extra_groups=options.extra_groups,
            )
        if result.returncode != 0:
            # Leave no half-initialised cluster: the next start retries.
            for child in data_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            raise StackError(self._failure(f"initdb failed with status {result.returncode}"))


def find_postgres_bindir() -> Path:
    """The directory holding initdb, postgres, pg_isready and psql.

    Tried in order: ``pg_config --bindir``, the highest version under
    /usr/lib/postgresql (Debian/Ubuntu), then ``initdb`` on PATH.
    """
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, check=True, timeout=10
            ).stdout
            candidates.append(Path(out.decode().strip()))

    def version(bindir: Path) -> tuple[int, ...]:
        parts = bindir.parent.name.split(".")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all((bindir / p).is_file() for p in ("initdb", "postgres", "pg_isready", "psql")):
            return bindir
    raise StackError(
        "PostgreSQL server binaries (initdb, postgres) not found; "
        "install them (deploy/scripts/bootstrap.sh does) or put them on PATH"
    )


def _client_env() -> dict[str, str]:
    # PG* variables (PGHOST, PGDATA, PGUSER, ...) would redirect initdb,
    # pg_isready and psql away from the server we are managing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="5")
    return env


def _postgres_os_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as, or None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tessera"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            shell,
            "tessera",
        ],
        capture_output=True,
        check=False,
        timeout=30,
    )
    try:
        # Another process may have created it concurrently: look again.
        return pwd.getpwnam("tessera")
    except KeyError:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise StackError(f"could not create system user 'tessera': {output}") from None


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may search every directory from / down to ``path``."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in (path, *path.parents):
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _make_scratch_data_dir(link: Path, os_user: pwd.struct_passwd) -> Path:
    """A data directory under the system temporary directory, linked from ``link``.

    Layout: ``TMP/tessera-postgres-XXXX/{owner,data/}``, where ``owner``
    names ``link``. Wrappers whose link is gone (a killed test session whose
    temporary directory pytest has since deleted) are swept here too.
    """
    scratch_root = Path(tempfile.gettempdir())
    if not _can_traverse(scratch_root, os_user):
        raise StackError(
            f"user {os_user.pw_name!r} can reach neither {link.parent} "
            f"nor {scratch_root}; choose another base directory"
        )
    sweep_orphaned_scratch(scratch_root)
    scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=scratch_root))
    # Searchable (not listable) so the server's user reaches data/.
    scratch.chmod(0o711)
    (scratch / "owner").write_text(f"{link}\n", encoding="utf-8")
    data_dir = scratch / "data"
    data_dir.mkdir(mode=0o700)
    link.symlink_to(data_dir, target_is_directory=True)
    return data_dir


def sweep_orphaned_scratch(scratch_root: Path) -> None:
    """Delete scratch clusters under ``scratch_root`` that nothing links to.

    A wrapper is kept while its ``owner`` symlink still points at it, while
    a postmaster runs in it, while it is younger than the grace period, or
    when it is not ours (another owner, no readable ``owner`` file).
    """
    now = time.time()
    for scratch in scratch_root.glob(f"{_SCRATCH_PREFIX}*"):
        try:
            st = scratch.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if now - st.st_mtime < _SCRATCH_GRACE_SECONDS:
                continue  # may still be being set up
            owner = Path((scratch / "owner").read_text(encoding="utf-8").strip())
            data_dir = scratch / "data"
            if owner.is_symlink() and owner.resolve() == data_dir.resolve():
                continue
            pid = _postmaster_pid(data_dir / "postmaster.pid")
        except (OSError, UnicodeDecodeError):
            continue
        if pid is not None and is_alive(pid, "postgres"):
            continue
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale_lock(data_dir: Path) -> None:
    """Delete ``postmaster.pid`` and socket lock files whose postmaster is dead.

    After a crash (SIGKILL) the lock files stay. PostgreSQL itself ignores
    them when that pid is gone, but a dead process that its parent has not
    reaped yet (a zombie, as an init that reaps lazily leaves it) still
    answers kill(pid, 0), and PostgreSQL would refuse to start until then.
    """
    for lock in (data_dir / "postmaster.pid", *data_dir.glob(".s.PGSQL.*.lock")):
        with contextlib.suppress(OSError):
            pid = _postmaster_pid(lock)
            if pid is not None and not is_alive(pid, "postgres"):
                lock.unlink()


def _postmaster_pid(path: Path) -> int | None:
    """The pid on the first line of a PostgreSQL ``postmaster.pid`` (or socket lock file)."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` to uid:gid, recursing only when it belongs to someone else."""
    st = root.lstat()
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, entry), uid, gid)


#: An unprivileged login role with a schema of its own as its whole world (psql
#: variables role, password, dbname); compose runs the same file.
ROLE_SCRIPT = Path(__file__).resolve().parents[1] / "roles" / "postgres-replica-role.sql"


# -- Redis --------------------------------------------------------------------


class RedisServer(_LocalServer):
    """A Redis server on 127.0.0.1, throwaway by default.

    Its working directory is ``base_dir/redis``. By default RDB snapshots
    and the AOF are off, so a restart starts empty: what the test suite
    wants. With ``persistent=True`` (the local stack) every write goes to
    an append-only file fsynced once a second, whose base is an RDB
    snapshot (``aof-use-rdb-preamble``), so a restart on the same
    ``base_dir`` (a crash included: even SIGKILL loses nothing the kernel
    has been given) comes back with the data.

    With ``acl_file`` (the local stack: see :mod:`tessera_stack.redis_acl`)
    the server loads its users from that file at every start, and
    ``admin_password`` is the ``default`` user's, which :attr:`url` carries.
    """

    name = "redis"
    program = "redis-server"

    def __init__(
        self,
        base_dir: Path | str,
        *,
        persistent: bool = False,
        acl_file: Path | None = None,
        admin_password: str | None = None,
        **options: Unpack[ServerOptions],
    ) -> None:
        super().__init__(base_dir, **options)
        self._persistent = persistent
        self._acl_file = acl_file
        self._admin_password = admin_password

    @property
    def persistent(self) -> bool:
        """Whether the server keeps its data on disk (AOF) across restarts."""
        return self._persistent

    @property
    def data_dir(self) -> Path:
        """Redis's working directory."""
        return self._base_dir / "redis"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, as the administrator when the server has users."""
        login = f":{quote(self._admin_password, safe='')}@" if self._admin_password else ""
        return f"redis://{login}{LOOPBACK}:{self.port}/0"

    def remove_data(self) -> None:
        """Delete Redis's working directory; the server must be stopped."""
        if self.running:
            raise StackError("stop the Redis server before removing its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _prepare(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        executable = shutil.which("redis-server")
        if executable is None:
            raise StackError(
                "redis-server not found on PATH; "
                "install it (deploy/scripts/bootstrap.sh does) or add it to PATH"
            )
        return [
            executable,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--protected-mode",
            "yes",
            # No periodic RDB snapshots either way: when persistent, the AOF
            # (with its RDB base) is the one copy on disk.
            "--save",
            "",
            *self._persistence_arguments(),
            *(["--aclfile", str(self._acl_file)] if self._acl_file else []),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _persistence_arguments(self) -> list[str]:
        if not self._persistent:
            return ["--appendonly", "no"]
        return [
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--aof-use-rdb-preamble",
            "yes",
            # A crash can cut the last command short; load what is whole.
            "--aof-load-truncated",
            "yes",
        ]

    def _ready(self, port: int) -> bool:
        commands = [[b"PING"]]
        if self._admin_password:
            commands.insert(0, [b"AUTH", self._admin_password.encode()])
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
                sock.sendall(b"".join(_resp(command) for command in commands))
                reply = b""
                deadline = time.monotonic() + 1.0
                while reply.count(b"\r\n") < len(commands) and time.monotonic() < deadline:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        # "-LOADING ..." means up but not serving yet; "-WRONGPASS" or "-ERR" after
        # AUTH, that it runs without the users this server is started with.
        replies = reply.split(b"\r\n")[: len(commands)]
        return replies[-1].startswith(b"+PONG") and all(r.startswith(b"+") for r in replies)


def _resp(command: list[bytes]) -> bytes:
    """``command`` in the Redis protocol (RESP2)."""
    parts = [b"*%d\r\n" % len(command)]
    parts.extend(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command)
    return b"".join(parts)


# -- nginx --------------------------------------------------------------------


def find_nginx() -> Path:
    """The nginx binary (``nginx`` on PATH, else /usr/sbin/nginx)."""
    found = shutil.which("nginx")
    for candidate in (found, "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise StackError(
        "nginx not found; install nginx-light (deploy/scripts/bootstrap.sh does) or add it to PATH"
    )


def nginx_check(conf: Path, prefix: Path) -> None:
    """Run ``nginx -t`` on ``conf``; raise :class:`StackError` with nginx's words if invalid."""
    result = subprocess.run(
        [str(find_nginx()), "-t", "-q", "-p", f"{prefix}/", "-e", "stderr", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise StackError(f"nginx rejects {conf}:\n{output}")


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (nginx's workers, for its master)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat_text.rpartition(")")[2].split()
        # fields[0] is the state, fields[1] the parent pid.
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            found.add(int(entry.name))
    return found


class NginxServer(_LocalServer):
    """nginx on ``port`` with an already rendered configuration ``conf``.

    ``base_dir`` is nginx's prefix (pid, lock and temp files live there,
    never in system paths). The master runs in the foreground of its own
    process (``daemon off`` in the configuration), so the pid we keep is the
    master's. :meth:`reload` is a graceful configuration change: the new
    configuration is checked first, and the call returns once every worker
    that still ran the old configuration has finished.
    """

    name = "nginx"
    program = "nginx"
    # SIGQUIT is nginx's graceful shutdown: in-flight requests finish first.
    stop_signal = signal.SIGQUIT

    def __init__(
        self,
        base_dir: Path | str,
        conf: Path | str,
        *,
        port: int,
        **options: Unpack[ProcessOptions],
    ) -> None:
        super().__init__(base_dir, port=port, **options)
        self._conf = Path(conf).absolute()

    @property
    def conf(self) -> Path:
        """The entry configuration file (``nginx -c``)."""
        return self._conf

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://{LOOPBACK}:{self.port}"

    def check(self) -> None:
        """``nginx -t`` on the configuration file; raises :class:`StackError`."""
        nginx_check(self._conf, self._base_dir)

    def workers(self) -> set[int]:
        """The pids of the master's worker processes (empty when not running)."""
        pid = self.pid
        return _children(pid) if pid is not None else set()

    def reload(self, timeout: float = 30.0) -> None:
        """Check the configuration, send SIGHUP, wait until the old workers are gone.

        When this returns, every request nginx accepts is handled with the
        new configuration; requests the old workers had in flight finished
        normally.
        """
        pid = self.pid
        if pid is None:
            raise StackError("nginx is not running")
        self.check()
        old = self.workers()
        os.kill(pid, signal.SIGHUP)

        def reloaded() -> bool:
            current = self.workers()
            return bool(current - old) and not (current & old)

        if not wait_until(reloaded, timeout=timeout):
            raise StackError(self._failure(f"nginx did not finish reloading within {timeout:g} s"))

    def remove_data(self) -> None:
        """Delete nginx's temp files; nginx must be stopped."""
        if self.running:
            raise StackError("stop nginx before removing its data")
        shutil.rmtree(self._base_dir / "tmp", ignore_errors=True)

    def _prepare(self) -> None:
        (self._base_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.check()

    def _command(self, port: int) -> list[str]:
        return [
            str(find_nginx()),
            "-p",
            f"{self._base_dir}/",
            "-e",
            "stderr",
            "-c",
            str(self._conf),
        ]

    def _ready(self, port: int) -> bool:
        # nginx binds its listening socket before the workers start;
        # connections made before then wait in the backlog.
        return port_is_open(port, LOOPBACK)
