"""A whole local stack (auth, replicas, nginx) for one test module, on free ports.

:func:`private_stack` (as a module's ``stack`` fixture: :func:`private_stack_fixture`):
each module gets its own run directory, its own database on the session's PostgreSQL
and its own Redis database (other tests flush database 0). :func:`own_stack`: the
launcher also runs the module's own PostgreSQL and (durable) Redis, as ``make up``
does, so a test may kill them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera_demo.stack_control import StackControl, own_servers_env, up_on_free_ports

from .fixtures_infra import throwaway_database, with_path

# The auth service hashes with Argon2; these tests are not about its cost.
CHEAP_ARGON2 = {"TESSERA_ARGON2_MEMORY_KIB": "1024", "TESSERA_ARGON2_TIME_COST": "1"}


def run_launcher(run_dir: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m tessera_stack`` for ``run_dir``; its exit status and output."""
    result = subprocess.run(
        [sys.executable, "-m", "tessera_stack", "--run-dir", str(run_dir), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        check=False,
        timeout=300,
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def launcher(run_dir: Path, *args: str, env: dict[str, str]) -> str:
    """Run ``python -m tessera_stack`` for ``run_dir``; its output, or a failed assertion."""
    code, output = run_launcher(run_dir, *args, env=env)
    assert code == 0, f"tessera_stack {' '.join(args)} failed:\n{output}"
    return output


@contextlib.contextmanager
def private_stack(
    run_dir: Path, database_url: str, redis_url: str, *, redis_db: int, name: str
) -> Iterator[StackControl]:
    """The stack up at row 4 with three replicas; stopped and its database dropped after."""
    with throwaway_database(database_url, f"tessera_{name}") as database:
        env = {
            **os.environ,
            **CHEAP_ARGON2,
            "DATABASE_URL": database,
            "REDIS_URL": with_path(redis_url, f"/{redis_db}"),
        }
        try:
            launcher(run_dir, *up_on_free_ports(), env=env)
            yield StackControl(run_dir)
        finally:
            launcher(run_dir, "down", env=env)


def private_stack_fixture(*, redis_db: int, name: str) -> Any:
    """A module's ``stack`` fixture (``stack = private_stack_fixture(...)``): the
    :func:`private_stack` on Redis database ``redis_db`` (one per module), for the module."""

    @pytest.fixture(scope="module")
    def stack(
        tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str
    ) -> Iterator[StackControl]:
        """Auth, three replicas and nginx at row 4 (shared sessions, round robin), stopped
        and its database dropped at the end of the module."""
        with private_stack(
            tmp_path_factory.mktemp("stack"), database_url, redis_url, redis_db=redis_db, name=name
        ) as control:
            yield control

    return stack


class OwnStack(StackControl):
    """A stack on its own PostgreSQL and Redis, with the environment ``up`` runs in."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        super().__init__(run_dir)
        self.launcher_env = env

    def run(self, *args: str, **env_changes: str) -> tuple[int, str]:
        """One launcher command; its exit status and output."""
        return run_launcher(self.layout.root, *args, env={**self.launcher_env, **env_changes})

    async def up(self, **env_changes: str) -> str:
        """``up`` (in a thread: it blocks); its output, or a failed assertion."""
        code, output = await asyncio.to_thread(self.run, "up", **env_changes)
        assert code == 0, f"tessera_stack up failed:\n{output}"
        return output


@contextlib.contextmanager
def own_stack(run_dir: Path, *up_args: str) -> Iterator[OwnStack]:
    """The stack up at row 4 with three replicas on servers the launcher runs itself.

    ``DATABASE_URL`` and ``REDIS_URL`` are left out of its environment, so the
    launcher starts and records its own PostgreSQL and Redis, as ``make up``
    does (``up_args`` such as ``--redis sentinel`` go to its first ``up``);
    ``down --purge`` deletes them at the end.
    """
    env = {**own_servers_env(), **CHEAP_ARGON2}
    stack = OwnStack(run_dir, env)
    try:
        launcher(run_dir, *up_on_free_ports(*up_args), env=env)
        yield stack
    finally:
        launcher(run_dir, "down", "--purge", env=env)
