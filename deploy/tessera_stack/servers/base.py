"""What every local server shares: ports, logs, pid files, start-up and stop."""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypedDict, Unpack

from tessera_stack.processes import (
    StackError,
    StartStop,
    free_port,
    is_alive,
    log_tail,
    port_is_open,
    read_pid_file,
    terminate,
    wait_until,
    write_pid_file,
)

LOOPBACK = "127.0.0.1"
_PORT_ATTEMPTS = 3


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


class _LocalServer(StartStop):
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

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._port is not None else "stopped"
        return f"{type(self).__name__}({str(self._base_dir)!r}, {state})"

    # -- hooks for subclasses -------------------------------------------

    def _prepare(self) -> None:  # optional hook, empty by default
        """Create data directories etc. before the first launch attempt."""

    @abc.abstractmethod
    def _command(self, port: int) -> list[str]:
        """The server's argv for ``port``."""

    @abc.abstractmethod
    def _ready(self, port: int) -> bool:
        """Whether the server on ``port`` accepts requests (one quick probe)."""

    def _after_start(self) -> None:  # optional hook, empty by default
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


class _ConfiguredServer(_LocalServer):
    """A server started on one configuration file it is given (nginx, Prometheus)."""

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
        """The configuration file the server is started on."""
        return self._conf


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
