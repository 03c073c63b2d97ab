"""Raw throughput with wrk: a C load generator, one thread, pinned where asked.

Every run writes its requests to a file that ``lua/requests.lua`` formats
once and then sends in turn (a different bearer token or cookie per request
costs wrk nothing extra), and returns a :class:`WrkResult` with wrk's own
figures plus the CPU time wrk used (from ``wait4``), so the report can show
that the generator was not what limited a figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import CpuMeter, pinned_command

__all__ = ["WrkResult", "WrkRun", "ensure_wrk", "run_wrk"]

LUA_SCRIPT = Path(__file__).with_name("lua") / "requests.lua"
_MARKER = "BENCH_JSON "


def ensure_wrk() -> str:
    """The path of ``wrk``, installing Debian's package when it is missing (root or sudo)."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("wrk is missing and there is no apt-get: install wrk by hand")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise RuntimeError("wrk is missing: install it (apt-get install wrk) as root")
        prefix = [sudo]
    print("installing wrk (apt-get install wrk) ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [*prefix, apt, "update", "-q"],
        [*prefix, apt, "install", "-y", "-q", "--no-install-recommends", "wrk"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


@dataclass(frozen=True)
class WrkRun:
    """One wrk invocation: where, what, how long, how hard, on which cores."""

    url: str
    headers: Sequence[str] = ("-",)  # one request per entry; see lua/requests.lua
    method: str = "GET"
    body: str | None = None
    duration: float = 5.0
    connections: int = 16
    threads: int = 1
    cores: Iterable[int] | None = None
    count_responses: bool = False
    timeout: float = 5.0


@dataclass
class WrkResult:
    """What wrk measured, and the CPU the generator and the measured processes used."""

    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    counts: dict[str, int]
    served_by: dict[str, int]
    wrk_cpu_seconds: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Requests per second (any status)."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failures(self) -> int:
        """Socket errors, timeouts and non-2xx/3xx answers."""
        return sum(self.errors.values())

    @property
    def wrk_utilisation(self) -> float:
        """Share of one core wrk used (its thread and the main thread together)."""
        return self.wrk_cpu_seconds / self.seconds if self.seconds else 0.0

    def utilisation(self, group: str) -> float:
        """Cores' worth of CPU the process group ``group`` used during the run."""
        return self.cpu_seconds.get(group, 0.0) / self.seconds if self.seconds else 0.0

    def cpu_us_per_request(self, group: str) -> float:
        used = self.cpu_seconds.get(group, 0.0)
        return used / self.requests * 1e6 if self.requests else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rate"] = self.rate
        return data


def _parse(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith(_MARKER):
            parsed: dict[str, Any] = json.loads(line[len(_MARKER) :])
            return parsed
    raise RuntimeError(f"wrk printed no result line:\n{output[-2000:]}")


def run_wrk(run: WrkRun, measure: Mapping[str, list[int]] | None = None) -> WrkResult:
    """Run wrk once; ``measure`` names process groups whose CPU time is recorded."""
    wrk = ensure_wrk()
    meter = CpuMeter({name: list(pids) for name, pids in (measure or {}).items()})
    with tempfile.NamedTemporaryFile("w", prefix="tessera-wrk-", suffix=".txt") as requests:
        for line in run.headers:
            if "\n" in line:
                raise ValueError("a request line may not contain a newline")
            requests.write(f"{line}\n")
        requests.flush()
        env = {
            **os.environ,
            "BENCH_REQUESTS": requests.name,
            "BENCH_METHOD": run.method,
            "BENCH_PATH": _path_of(run.url),
            "BENCH_THREADS": str(run.threads),
            "BENCH_COUNT": "1" if run.count_responses else "0",
        }
        if run.body is not None:
            env["BENCH_BODY"] = run.body
        command = pinned_command(
            [
                wrk,
                f"-t{run.threads}",
                f"-c{run.connections}",
                f"-d{max(1, round(run.duration))}s",
                f"--timeout={run.timeout:g}s",
                "-s",
                str(LUA_SCRIPT),
                run.url,
            ],
            run.cores,
        )
        meter.start()
        started = time.monotonic()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        # A watchdog, because wait4 (which gives wrk's own CPU time) has no timeout.
        watchdog = threading.Timer(run.duration + 60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            with proc.stdout:
                output = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        cpu = meter.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{output[-2000:]}")
    raw = _parse(output)
    return WrkResult(
        requests=int(raw["requests"]),
        seconds=float(raw["duration_us"]) / 1e6 or elapsed,
        errors={k: int(v) for k, v in raw["errors"].items()},
        latency_us={k: float(v) for k, v in raw["latency_us"].items()},
        counts={k: int(v) for k, v in raw["counts"].items()},
        served_by={k: int(v) for k, v in raw["served_by"].items()},
        wrk_cpu_seconds=usage.ru_utime + usage.ru_stime,
        cpu_seconds=cpu,
    )


def _path_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"
