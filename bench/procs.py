"""Processes the benchmark measures: CPU time from /proc, core pinning, process trees.

CPU time is what makes the figures honest on a noisy two-core machine: a
process that used 100% of its core during a run was the bottleneck, one
that used 30% was not, and CPU microseconds per request is a cost that
does not depend on how fast the load generator happened to be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera_stack.processes import proc_stat_fields

__all__ = [
    "MACHINE",
    "ORIGINAL_CORES",
    "REPO_ROOT",
    "CpuMeter",
    "bench_environment",
    "cpu_count",
    "cpu_seconds",
    "descendants",
    "machine_busy_seconds",
    "pin",
    "pinned_command",
    "process_tree",
]

_TICKS = os.sysconf("SC_CLK_TCK")
#: The CpuMeter group that is the whole machine (every process, ours or not).
MACHINE = "machine"


#: The cores this process could use when it started, before the benchmark pinned anything.
ORIGINAL_CORES: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))


REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_environment() -> dict[str, str]:
    """The environment for ``python -m bench.*`` subprocesses (the repository on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    return env


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far; 0 when it is gone."""
    fields = proc_stat_fields(pid)
    if fields is None:
        return 0.0
    # Fields after the command name: state is [0], utime [11], stime [12].
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent not idle, since boot."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()[1:]
    values = [int(value) for value in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time.
    return (sum(values[:8]) - idle) / _TICKS


def _parent(pid: int) -> int | None:
    fields = proc_stat_fields(pid)
    return int(fields[1]) if fields is not None and len(fields) > 1 else None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (PostgreSQL's backends, nginx's workers)."""
    return [pid, *descendants(pid)]


def _cores(cores: Iterable[int]) -> str:
    return ",".join(str(core) for core in sorted(set(cores)))


def pin(pids: Iterable[int], cores: Iterable[int]) -> None:
    """Restrict every thread of each process in ``pids`` to ``cores`` (``taskset -a -p``)."""
    cpu_list = _cores(cores)
    for pid in pids:
        # A process that exited in between is no error; anything else is.
        result = subprocess.run(
            ["taskset", "-a", "-p", "-c", cpu_list, str(pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 and Path(f"/proc/{pid}").exists():
            raise RuntimeError(f"taskset {cpu_list} {pid}: {result.stderr.strip()}")


def pinned_command(command: Sequence[str], cores: Iterable[int] | None) -> list[str]:
    """``command`` run under ``taskset -c CORES`` (as is without cores or taskset)."""
    if cores is None or shutil.which("taskset") is None:
        return list(command)
    return ["taskset", "-c", _cores(cores), *command]


@dataclass
class CpuMeter:
    """CPU seconds used by named groups of processes between start() and stop()."""

    groups: dict[str, list[int]]

    def __post_init__(self) -> None:
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        used = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        used[MACHINE] = machine_busy_seconds()
        return used

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        self.used = {name: max(0.0, end[name] - self._start.get(name, 0.0)) for name in end}
        return self.used
