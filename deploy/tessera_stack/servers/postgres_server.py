"""PostgreSQL as a local process: initdb, an unprivileged OS user, passwords and roles."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Unpack
from urllib.parse import quote

from tessera_stack.processes import (
    StackError,
    command_output,
    is_alive,
)
from tessera_stack.servers.base import (
    LOOPBACK,
    ServerOptions,
    _LocalServer,
    _PopenOptions,
)

# sockaddr_un.sun_path is 108 bytes on Linux, including the trailing NUL.
_MAX_UNIX_SOCKET_PATH = 107
_SCRATCH_PREFIX = "tessera-postgres-"
# Orphaned scratch clusters younger than this are left alone.
_SCRATCH_GRACE_SECONDS = 600.0

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
            raise StackError(f"{what}: {command_output(result)}")

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
        output = command_output(result)
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
ROLE_SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "postgres-replica-role.sql"
