"""Redis as a local process: AOF persistence, ACL users."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack
from urllib.parse import quote

from tessera_stack.processes import (
    StackError,
)
from tessera_stack.servers.base import (
    LOOPBACK,
    ServerOptions,
    _LocalServer,
)

# redis is imported where a client is made: importing tessera_stack must need
# the standard library only (the nginx image renders its configuration with
# tessera_stack.compose_nginx on a bare Python, deploy/docker/nginx.Dockerfile).
if TYPE_CHECKING:
    import redis

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
        # None while it cannot answer, "-LOADING" (up but not serving yet) included,
        # or when AUTH fails (a server running without this one's users).
        return ask(port, "PING", password=self._admin_password, timeout=1.0) is True


@contextmanager
def connect(
    port: int, *, password: str | None = None, timeout: float = 2.0
) -> Iterator[redis.Redis]:
    """A client for the Redis (or sentinel) on 127.0.0.1:``port``, closed after use.

    No retries: a dead node must answer "no" at once; the callers poll.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host=LOOPBACK,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        yield client
    finally:
        client.close()


def ask(port: int, *command: Any, password: str | None = None, timeout: float = 2.0) -> Any:
    """One command to the Redis (or sentinel) on ``port``; None when it cannot answer."""
    import redis

    try:
        with connect(port, password=password, timeout=timeout) as client:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
    except (redis.RedisError, OSError):
        return None
