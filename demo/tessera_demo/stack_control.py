"""A running local stack, driven through its own command line.

The demo, the outage probe, the benchmark and the stack tests change the
stack (switch rows, kill a replica, ``up``, ``down``) only through
``python -m tessera_stack``, and read where it listens from its state and
``stack.env``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tessera_stack.processes import free_port
from tessera_stack.services import AUTH_PROGRAM, running_pid
from tessera_stack.state import AUTH, Layout, StackState

__all__ = ["StackControl", "own_servers_env", "up_on_free_ports"]


def up_on_free_ports(*args: str, replicas: int = 3) -> list[str]:
    """The launcher command ``up`` on free ports with ``replicas`` replicas, then ``args``:
    a stack that runs beside any other on this machine."""
    return [
        "up",
        "--port",
        str(free_port()),
        "--https-port",
        str(free_port()),
        "--replicas",
        str(replicas),
        *args,
    ]


def own_servers_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without ``DATABASE_URL`` and ``REDIS_URL``: a
    launcher run in it starts and records its own PostgreSQL and Redis, as ``make up``
    does."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in ("DATABASE_URL", "REDIS_URL")}


class StackControl:
    """Drive a running stack through ``python -m tessera_stack`` in a subprocess.

    A subprocess rather than a function call: the launcher blocks, and the
    processes it starts must not be children of the (test) process that
    runs the demo.
    """

    def __init__(
        self,
        run_dir: Path,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.layout = Layout(run_dir.absolute())
        self._python = python
        self._env = env  # the launcher's environment (None: this process's)

    async def cli(self, *args: str, timeout: float = 180.0) -> str:
        """Run one launcher command; its output, or RuntimeError with it."""
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "tessera_stack",
            "--run-dir",
            str(self.layout.root),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"tessera_stack {' '.join(args)} took over {timeout:g} s") from None
        text = output.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"tessera_stack {' '.join(args)} failed:\n{text}")
        return text

    def state(self) -> StackState:
        return StackState.load(self.layout)

    def running(self) -> bool:
        state = self.state()
        auth = running_pid(self.layout, AUTH, AUTH_PROGRAM)
        return auth is not None and state.https_port is not None and state.row is not None

    def env(self) -> dict[str, str]:
        """``stack.env`` as a dict."""
        text = self.layout.stack_env.read_text(encoding="utf-8")
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {key: value for key, value in pairs}

    @property
    def base_url(self) -> str:
        return self.env()["BASE_URL"]

    @property
    def ca_cert(self) -> Path:
        return Path(self.env()["CA_CERT"])

    async def switch_row(self, number: int, policy: str | None = None) -> None:
        await self.cli("row", str(number), *(("--policy", policy) if policy else ()))

    async def kill_replica(self, replica_id: str) -> None:
        await self.cli("kill-replica", replica_id)
