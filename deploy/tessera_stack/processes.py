"""Process plumbing shared by the throwaway servers and the stack launcher.

Nothing here knows about PostgreSQL, Redis or tessera: pid files, signals,
free ports, log tails and bounded waits.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import http.client
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "StackError",
    "StartStop",
    "command_output",
    "free_port",
    "is_alive",
    "log_tail",
    "port_is_open",
    "proc_stat_fields",
    "read_pid_file",
    "terminate",
    "wait_until",
    "write_pid_file",
]


class StackError(RuntimeError):
    """A server or stack process could not be started, reached or stopped."""


class StartStop(abc.ABC):
    """Something started and stopped as a whole: ``with it:`` starts it, and stops it
    however the block ends (a server, a group of Redis nodes)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start; return once it serves, or raise :class:`StackError`."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop; safe to call when not running."""

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


def command_output(result: subprocess.CompletedProcess[bytes]) -> str:
    """What a finished command printed (stdout, then stderr), fit for an error message."""
    return (result.stdout + result.stderr).decode(errors="replace").strip()


#: Where :func:`free_port` looks first: below Linux's default ephemeral range (32768-60999).
_CHOSEN_PORTS = range(20000, 32768)
_CHOICE_ATTEMPTS = 64


def free_port(host: str = "127.0.0.1", *, avoid: Collection[int | None] = ()) -> int:
    """Return a TCP port on ``host`` that a server could bind right now, and none of
    ``avoid`` (ports already given to something that is not listening yet).

    Chosen at random below the kernel's ephemeral range, where the kernel never puts
    a server bound to port 0 or the local end of an outgoing connection: between
    this choice and the caller's bind, only another caller choosing the same port
    at random can take it. (A port the kernel picked, the old way, went back to the
    kernel's pool at once: with tests in two processes starting servers, it was
    handed out again and nginx, told to use it, found it taken.) Falls back to the
    kernel's pick if nothing there is free.
    """
    low = min(_ephemeral_range()[0], _CHOSEN_PORTS.stop)
    candidates = range(_CHOSEN_PORTS.start, low)
    for _ in range(_CHOICE_ATTEMPTS if candidates else 0):
        port = candidates[secrets.randbelow(len(candidates))]
        if port not in avoid and port_is_bindable(port, host):
            return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            kernel_port: int = sock.getsockname()[1]
        if kernel_port not in avoid:
            return kernel_port


@functools.cache
def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port 0 and outgoing connections (Linux's default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` now.

    Stricter than "nothing listens there": in the ephemeral range a port may be
    the local end of some outgoing connection, which also makes a bind fail.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_is_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # Logs can grow large; 64 KiB holds far more than 40 lines.
            handle.seek(max(0, size - 65536))
            data = handle.read()
    except FileNotFoundError:
        return f"({path} does not exist)"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass.

    ``abort`` is checked before each poll; when it returns a message the
    wait stops early with :class:`StackError` carrying that message (for
    example, the process being waited on has exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        if abort is not None and (reason := abort()) is not None:
            raise StackError(reason)
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        # Back off gently so a slow start does not cost a busy loop.
        interval = min(interval * 1.5, 0.5)


def write_pid_file(path: Path, pid: int) -> None:
    """Atomically write ``pid`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(path)


def read_pid_file(path: Path) -> int | None:
    """The pid in ``path``, or ``None`` when the file is missing or garbled."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def proc_stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or
    ``None`` without procfs or once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces or ")".
    return stat.rpartition(")")[2].split()


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat, or ``None`` without procfs."""
    fields = proc_stat_fields(pid)
    return fields[0] if fields else None


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace")


def is_alive(pid: int, expect: str | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process.

    With ``expect``, the process's command line must also contain that text,
    so a pid file left over from before a reboot never matches whatever
    unrelated process has since been given the same pid.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # It exists but belongs to someone else.
    if _proc_state(pid) in {"Z", "X"}:
        return False
    if expect is not None:
        cmdline = _cmdline(pid)
        if cmdline is not None and expect not in cmdline:
            return False
    return True


def _reap(pid: int) -> None:
    # When the process is our own child, collect it so it does not linger
    # as a zombie (which would also look alive to kill(pid, 0)).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(
    pid: int,
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 10.0,
    expect: str | None = None,
) -> bool:
    """Stop ``pid`` with ``sig``, then SIGKILL if it outlives ``timeout``.

    Returns ``True`` when the process was running and has now exited,
    ``False`` when it was not running (or is not the expected program).
    """
    if not is_alive(pid, expect):
        _reap(pid)
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False

    def gone() -> bool:
        _reap(pid)
        return not is_alive(pid)

    if wait_until(gone, timeout=timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(gone, timeout=5.0):
        raise StackError(f"process {pid} survived SIGKILL")
    return True


def answers_200(port: int, path: str, host: str = "127.0.0.1") -> bool:
    """Whether ``http://host:port/path`` answers 200 now (one quick probe; http.client,
    not urllib: no proxy environment variable applies)."""
    connection = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
