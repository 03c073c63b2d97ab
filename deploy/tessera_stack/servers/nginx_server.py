"""nginx as a local process: checked configuration, graceful reloads."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tessera_stack.processes import (
    StackError,
    command_output,
    port_is_open,
    wait_until,
)
from tessera_stack.servers.base import (
    LOOPBACK,
    _ConfiguredServer,
)

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
        raise StackError(f"nginx rejects {conf}:\n{command_output(result)}")


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


class NginxServer(_ConfiguredServer):
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
