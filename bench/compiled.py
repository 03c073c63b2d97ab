"""A replica whose hot modules are compiled to C with mypyc: the measured answer to
whether the floor and the checks' cost would move if tessera's own Python ran as
machine code (issue 14).

:func:`build` copies the three packages a replica runs on (``tessera_platform``,
``tessera_verify``, ``tessera_resource``) into the run directory and compiles the
modules every request passes through (:data:`HOT_MODULES`: the service and
verification middleware, the credential checks and their caches, the revocation
copy, the replica's routes) with mypyc, which comes with mypy; the others stay
Python. A replica started with that directory first on ``PYTHONPATH`` runs the
same code, the same checks and the same configuration, compiled.
:func:`loaded_from` tells whether a running process really runs them.

Left out on purpose: the modules mypyc cannot compile as written (async generators:
``tessera_resource.app``, ``tessera_verify.integration``; a ``ClassVar`` in a
dataclass: ``tessera_verify.verify_config``), those whose classes code outside the
build subclasses (``tessera_verify.errors``, ``tessera_platform.service_errors``),
and ``tessera_verify.dependency_metrics`` (its classes subclass redis-py's).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tessera_platform
import tessera_resource
import tessera_verify

__all__ = ["HOT_MODULES", "Build", "build", "loaded_from"]

#: The modules compiled, as paths inside the copied packages.
HOT_MODULES = (
    "tessera_platform/middleware.py",
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
    "tessera_resource/routes.py",
    "tessera_resource/routes_health.py",
)
BUILD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Build:
    """Where the compiled packages are (``path``: put it first on ``PYTHONPATH``), or why
    there are none (``problem``)."""

    path: Path | None
    problem: str = ""
    seconds: float = 0.0


def _package_dir(package: object) -> Path:
    files = getattr(package, "__path__", None)
    if not files:
        raise RuntimeError(f"{package!r} is not a package on disk")
    return Path(next(iter(files)))


def build(directory: Path) -> Build:
    """Copy the replica's packages into ``directory`` and compile :data:`HOT_MODULES`."""
    if importlib.util.find_spec("mypyc") is None:
        return Build(None, "mypyc is not installed (it comes with mypy: make bench installs it)")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for package in (tessera_platform, tessera_verify, tessera_resource):
        source = _package_dir(package)
        shutil.copytree(
            source,
            directory / source.name,
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"),
        )
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mypyc", *HOT_MODULES],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Build(None, f"mypyc took over {BUILD_TIMEOUT:g} s")
    seconds = time.monotonic() - started
    (directory / "mypyc.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        errors = [line for line in result.stdout.splitlines() if ": error:" in line]
        return Build(None, f"mypyc failed: {errors[0] if errors else result.stderr[-300:]}")
    missing = [name for name in HOT_MODULES if not _extension_for(directory / name)]
    if missing:
        return Build(None, f"mypyc left no extension for {', '.join(missing)}")
    return Build(directory, seconds=seconds)


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
