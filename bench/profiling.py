"""Where the time goes: py-spy samples of a process under load, summarised for the report.

Used when a budget is missed. py-spy records while the same load as the
measured run is applied, in separate runs (py-spy pauses the process for
each sample, which keeps stacks consistent but costs some throughput, so
a profiled run is never a measured one), and writes collapsed stacks;
:func:`summarise` turns them into the share of samples by component
(aiohttp, tessera_verify, jwt/cryptography, prometheus_client, ...) and the
functions with the most samples of their own, which is what a reader needs
to see where a gap comes from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Profile", "py_spy", "start_recording", "summarise"]

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# First match wins: more specific paths before less specific ones.
_COMPONENTS = (
    ("tessera_verify", "tessera_verify"),
    ("tessera_resource", "tessera_resource"),
    ("tessera_auth", "tessera_auth"),
    ("aiohttp_session", "aiohttp_session"),
    ("aiohttp", "aiohttp"),
    ("prometheus_client", "prometheus_client"),
    ("redis", "redis-py"),
    ("asyncpg", "asyncpg"),
    ("argon2", "argon2"),
    ("jwt", "pyjwt"),
    ("cryptography", "cryptography"),
    ("multidict", "multidict/yarl"),
    ("yarl", "multidict/yarl"),
    ("asyncio", "asyncio"),
    ("json", "json"),
    ("logging", "logging"),
)


# Leaves that are a thread waiting, not working. py-spy's own idle detection
# does not always see them as idle (containers, C-level waits), so they are
# dropped here and the shares are of the samples that did work.
_IDLE_LEAVES = frozenset(
    {
        ("EpollSelector.select", "selectors.py"),
        ("_worker", "futures/thread.py"),
        ("Condition.wait", "threading.py"),
        ("_wait_for_tstate_lock", "threading.py"),
    }
)


# Start-up frames under which every sample of the main thread sits.
_ENTRY_FUNCTIONS = frozenset({"<module>", "main", "run", "_run_module_as_main", "_run_code"})


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start_recording(
    pid: int, seconds: float, output: Path, rate: int = 200
) -> subprocess.Popen[str]:
    """Start sampling ``pid`` for ``seconds`` into ``output`` (collapsed stacks)."""
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _component(path: str) -> str:
    for needle, name in _COMPONENTS:
        if f"/{needle}/" in path or path.startswith(f"{needle}/"):
            return name
    if path.startswith("<") or "/" not in path:
        return "other"
    return "other"


def _component_of_short(name: str) -> str:
    """The component of a ``function (short/path.py)`` label."""
    return _component("/" + name.rpartition(" (")[2].rstrip(")"))


def _short(path: str) -> str:
    parts = Path(path).parts
    for index, part in enumerate(parts):
        if part in ("site-packages", "services", "lib") and index + 1 < len(parts):
            tail = parts[index + 1 :]
            if part == "lib" and tail and tail[0].startswith("python"):
                tail = tail[1:]
            if part == "services" and len(tail) > 1:
                tail = tail[1:]
            return "/".join(tail)
    return "/".join(parts[-2:])


@dataclass
class Profile:
    """Samples of one process by component and by function."""

    samples: int
    by_component: list[tuple[str, float]] = field(default_factory=list)
    self_time: list[tuple[str, float]] = field(default_factory=list)
    inclusive: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "by_component": self.by_component,
            "self_time": self.self_time,
            "inclusive": self.inclusive,
        }


def summarise(collapsed: Path, top: int = 20) -> Profile:
    """Read py-spy's collapsed stacks: ``frame;frame;... COUNT`` per line.

    Samples of a waiting thread (see ``_IDLE_LEAVES``) are left out.

    The component of a sample is that of its innermost frame outside the
    standard library's asyncio machinery when there is one, so that time
    in, say, a tessera_verify function that calls ``dict.get`` is counted
    where a reader would look for it.
    """
    components: Counter[str] = Counter()
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw.strip())
            if match is None:
                continue  # process and thread labels
            frames.append((match["function"], match["file"]))
        if not frames or (frames[-1][0], _short(frames[-1][1])) in _IDLE_LEAVES:
            continue
        total += count
        function, path = frames[-1]
        own[f"{function} ({_short(path)})"] += count
        components[_component(path)] += count
        for name in {f"{fn} ({_short(p)})" for fn, p in frames}:
            anywhere[name] += count
    if not total:
        return Profile(0)

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(limit)]

    # Inclusive time only for frames a reader can act on: not the event loop,
    # not the interpreter's start-up frames that every sample shares.
    interesting = Counter(
        {
            name: count
            for name, count in anywhere.items()
            if name.partition(" (")[0] not in _ENTRY_FUNCTIONS
            and _component_of_short(name) not in ("asyncio", "other")
            and count < total
        }
    )
    return Profile(
        samples=total,
        by_component=shares(components, len(components)),
        self_time=shares(own, top),
        inclusive=shares(interesting, top),
    )
