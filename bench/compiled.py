"""A replica whose hot modules are compiled to C with mypyc: the measured answer to
whether the floor and the checks' cost would move if tessera's own Python ran as
machine code (issue 14).

:func:`build` copies the three packages a replica runs on (``tessera_platform``,
``tessera_verify``, ``tessera_resource``) into the run directory and compiles the
modules a request passes through (:data:`HOT_MODULES`: the service middleware and
its request ID, the authenticators and credential checks, their caches, the keys,
the revocation copy, the replica's routes) with mypyc, which comes with mypy (and
needs a C compiler and Python's headers); the others stay Python. A replica started
with that directory first on ``PYTHONPATH`` runs the same code, the same checks and
the same configuration, compiled.
:func:`loaded_from` tells whether a running process really runs them.

Left out on purpose: the modules mypyc cannot compile as written (async generators:
``tessera_resource.app``, ``tessera_verify.integration``, so the aiohttp middleware
that calls the authenticators stays Python; a ``ClassVar`` in a dataclass:
``tessera_verify.verify_config``), the exceptions code outside the build subclasses
(``tessera_verify.errors``, ``tessera_platform.service_errors``), and
``tessera_verify.dependency_metrics`` (its classes subclass redis-py's). The one
compiled class the auth service subclasses (``ServiceMetrics``) is marked, in the
copy only, as open to interpreted subclasses (:data:`OPEN_CLASSES`), so the
verifier's tests can run an auth service beside the compiled replica.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HOT_MODULES", "Build", "build", "loaded_from"]

#: The modules compiled, as paths inside the copied packages.
HOT_MODULES = (
    "tessera_platform/middleware.py",
    "tessera_platform/observability.py",
    "tessera_verify/access_tokens.py",
    "tessera_verify/authenticators.py",
    "tessera_verify/client_ip.py",
    "tessera_verify/clock.py",
    "tessera_verify/cookies.py",
    "tessera_verify/error_middleware.py",
    "tessera_verify/http_metrics.py",
    "tessera_verify/jws_canonical.py",
    "tessera_verify/principal.py",
    "tessera_verify/request_view.py",
    "tessera_verify/revocation.py",
    "tessera_verify/revocation_cache.py",
    "tessera_verify/session_cache.py",
    "tessera_verify/session_store.py",
    "tessera_verify/sessions.py",
    "tessera_verify/ttl_cache.py",
    "tessera_verify/verification_keys.py",
    "tessera_resource/routes.py",
    "tessera_resource/routes_health.py",
)
#: Compiled classes that interpreted code subclasses: marked so in the copy (mypyc refuses
#: such a subclass otherwise), as (module, class).
OPEN_CLASSES = (("tessera_verify/http_metrics.py", "ServiceMetrics"),)
#: The packages copied (the replica's own and the two it imports).
PACKAGES = ("tessera_platform", "tessera_verify", "tessera_resource")
BUILD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Build:
    """Where the compiled packages are (``path``: put it first on ``PYTHONPATH``), or why
    there are none (``problem``); with the mypyc that built them (what it makes of the
    same code differs between its releases)."""

    path: Path | None
    problem: str = ""
    seconds: float = 0.0
    mypyc_version: str = ""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise RuntimeError(f"{name} is not a package on disk")
    return Path(next(iter(locations)))


def build(directory: Path) -> Build:
    """Copy the replica's packages into ``directory`` and compile :data:`HOT_MODULES`."""
    if importlib.util.find_spec("mypyc") is None:
        return Build(None, "mypyc is not installed (it comes with mypy: make bench installs it)")
    version = importlib.metadata.version("mypy")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name in PACKAGES:
        shutil.copytree(
            _package_dir(name),
            directory / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"),
        )
    try:
        for module, name in OPEN_CLASSES:
            _open_to_subclasses(directory / module, name)
    except RuntimeError as exc:
        return Build(None, str(exc), mypyc_version=version)
    started = time.monotonic()
    # In a session of its own: on a timeout the compilers it started go too, and none is
    # left running on the core the measured process will have to itself.
    with subprocess.Popen(
        [sys.executable, "-m", "mypyc", *HOT_MODULES],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Build(None, f"mypyc took over {BUILD_TIMEOUT:g} s", mypyc_version=version)
    seconds = time.monotonic() - started
    (directory / "mypyc.log").write_text(output, encoding="utf-8")
    if proc.returncode != 0:
        errors = [line for line in output.splitlines() if ": error:" in line]
        problem = f"mypyc failed: {errors[0] if errors else output[-300:]}"
        return Build(None, problem, seconds, version)
    missing = [name for name in HOT_MODULES if not _extension_for(directory / name)]
    if missing:
        return Build(None, f"mypyc left no extension for {', '.join(missing)}", seconds, version)
    return Build(directory, seconds=seconds, mypyc_version=version)


def _open_to_subclasses(path: Path, name: str) -> None:
    """Mark class ``name`` in ``path`` (a copy) as open to interpreted subclasses."""
    text = path.read_text(encoding="utf-8")
    header = "from __future__ import annotations\n"
    line = f"\nclass {name}"
    if text.count(line) != 1 or text.count(header) != 1:
        raise RuntimeError(f"{path}: no single 'class {name}' to mark (bench/compiled.py)")
    text = text.replace(header, f"{header}\nfrom mypy_extensions import mypyc_attr\n", 1)
    text = text.replace(line, f"\n@mypyc_attr(allow_interpreted_subclasses=True){line}", 1)
    path.write_text(text, encoding="utf-8")


def _extension_for(module: Path) -> Path | None:
    found = sorted(module.parent.glob(f"{module.stem}.*.so"))
    return found[0] if found else None


def loaded_from(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` runs the modules compiled in ``directory``: mypyc puts them
    all in one shared library (``*__mypyc.*.so``; a module imported by another compiled
    one needs no shim of its own), so that library mapped in ``pid`` says so."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    root = str(directory.resolve())
    return any(
        path.startswith(root) and "__mypyc." in Path(path).name
        for path in (line.split(maxsplit=5)[-1] for line in maps.splitlines())
    )
