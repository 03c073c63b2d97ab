"""What every tessera process reads the same way: where it listens, how it logs,
how long it waits for a dependency, how it shuts down, its database pool.

A service's settings hold one :class:`ProcessSettings` (composed, not copied
field by field); :func:`tessera_platform.serve.run` and
:func:`tessera_platform.pg_migrations.open_database` take it as it is.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from tessera_verify.dependency_metrics import REDIS_URL_SCHEMES, parse_redis_nodes
from tessera_verify.env import ConfigError, EnvReader, RecordedEnviron, check_url

__all__ = [
    "DEFAULT_EVENT_LOOP",
    "EVENT_LOOPS",
    "MAX_WORKERS",
    "ProcessSettings",
    "load_or_exit",
    "read_dependency_urls",
    "read_process_settings",
    "unread_variables",
    "warn_unread_variables",
]

T = TypeVar("T")

log = logging.getLogger("tessera.settings")

#: ``TESSERA_EVENT_LOOP``'s values (tessera_platform.serve.new_event_loop makes them).
EVENT_LOOPS = ("asyncio", "uvloop")
#: The default: ``make bench`` judges it against the other (README, Benchmark).
DEFAULT_EVENT_LOOP = "uvloop"
#: ``TESSERA_WORKERS``' ceiling: a typo (``800`` for ``8``) is refused, not forked.
MAX_WORKERS = 256


def load_or_exit(
    load: Callable[[Mapping[str, str]], T], program: str, environ: RecordedEnviron
) -> T:
    """``load(environ)``'s settings; on a :class:`~tessera_verify.env.ConfigError` its every
    problem on stderr under ``program``'s name (and the variables it did not read, which
    may be why), and exit status 2 (a usage error)."""
    try:
        return load(environ)
    except ConfigError as error:
        print(f"{program}: {error}", file=sys.stderr)
        for warning in unread_variables(environ):
            print(f"{program}: warning: {warning}", file=sys.stderr)
        raise SystemExit(2) from None


def unread_variables(environ: RecordedEnviron) -> list[str]:
    """One sentence for each ``TESSERA_*`` variable set in ``environ`` that loading the
    settings never read: misspelt, or meant for another service (it has no effect)."""
    warnings = []
    for name in environ.unread():
        close = environ.closest_read(name)
        hint = f"; did you mean {close}?" if close else ""
        warnings.append(f"{name} is set but this service does not read it{hint}")
    return warnings


def warn_unread_variables(environ: RecordedEnviron) -> None:
    """Log :func:`unread_variables` as warnings: a start that ignores a setting says so."""
    for warning in unread_variables(environ):
        log.warning(warning)


@dataclass(frozen=True)
class ProcessSettings:
    """The process's own settings; the defaults are production's."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024
    #: Seconds a Redis/PostgreSQL/HTTP dependency call may take before we answer 503.
    dependency_timeout: float = 2.0
    db_pool_max: int = 10
    migrate_on_start: bool = False
    log_level: str = "INFO"
    #: One JSON object per log line (``TESSERA_LOG_FORMAT=json``), else text.
    log_json: bool = True
    access_log: bool = True
    #: Seconds /readyz answers 503 before the listener closes (a load balancer notices).
    drain_seconds: float = 0.0
    shutdown_timeout: float = 10.0
    #: ``TESSERA_EVENT_LOOP``: one of :data:`EVENT_LOOPS` (tessera_platform.serve).
    event_loop: str = DEFAULT_EVENT_LOOP
    #: ``TESSERA_WORKERS``: processes serving the one port (tessera_platform.serve); each
    #: has its own event loop, connections, caches and metrics.
    workers: int = 1


def read_process_settings(
    reader: EnvReader, *, development: bool, default_port: int, default_pool: int
) -> ProcessSettings:
    return ProcessSettings(
        host=reader.text("TESSERA_HOST", "127.0.0.1") or "127.0.0.1",
        port=_read_port(reader, default_port),
        max_body_bytes=reader.positive_int("TESSERA_MAX_BODY_BYTES", 16 * 1024),
        dependency_timeout=_read_dependency_timeout(reader),
        db_pool_max=reader.positive_int("TESSERA_DB_POOL_MAX", default_pool),
        migrate_on_start=reader.flag("TESSERA_MIGRATE_ON_START", development),
        log_level=_read_log_level(reader),
        log_json=_read_log_json(reader),
        access_log=reader.flag("TESSERA_ACCESS_LOG", True),
        drain_seconds=reader.parsed("TESSERA_DRAIN_SECONDS", float, 0.0, "a number"),
        shutdown_timeout=reader.parsed("TESSERA_SHUTDOWN_TIMEOUT", float, 10.0, "a number"),
        event_loop=_read_event_loop(reader),
        workers=_read_workers(reader),
    )


def read_dependency_urls(reader: EnvReader) -> tuple[str, str]:
    """``DATABASE_URL`` and ``REDIS_URL``, both required."""
    database_url = check_url(
        reader, "DATABASE_URL", reader.text("DATABASE_URL"), ("postgresql", "postgres")
    )
    redis_url = check_url(reader, "REDIS_URL", reader.text("REDIS_URL"), REDIS_URL_SCHEMES)
    if urlsplit(redis_url).scheme in ("redis+sentinel", "redis+cluster"):
        try:
            parse_redis_nodes(redis_url)
        except ValueError as exc:
            reader.problems.append(f"REDIS_URL: {exc}")
    return database_url, redis_url


def _read_port(reader: EnvReader, default: int) -> int:
    port = reader.parsed("TESSERA_PORT", int, default, "a port number")
    if not 0 < port < 65536:
        reader.problems.append(f"TESSERA_PORT must be 1-65535 (got {port})")
    return port


def _read_dependency_timeout(reader: EnvReader) -> float:
    timeout = reader.parsed("TESSERA_DEPENDENCY_TIMEOUT", float, 2.0, "a number")
    if not 0 < timeout < math.inf:  # also refuses nan
        reader.problems.append(
            f"TESSERA_DEPENDENCY_TIMEOUT must be positive and finite (got {timeout})"
        )
        return 2.0
    return timeout


def _read_log_level(reader: EnvReader) -> str:
    level = (reader.text("TESSERA_LOG_LEVEL", "INFO") or "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        reader.problems.append(f"TESSERA_LOG_LEVEL={level!r} is not a log level")
    return level


def _read_log_json(reader: EnvReader) -> bool:
    """``TESSERA_LOG_FORMAT``: ``json`` (default, one object per line) or ``text``."""
    value = (reader.text("TESSERA_LOG_FORMAT", "json") or "json").lower()
    if value not in ("json", "text"):
        reader.problems.append("TESSERA_LOG_FORMAT must be 'json' or 'text'")
    return value != "text"


def _read_event_loop(reader: EnvReader) -> str:
    """``TESSERA_EVENT_LOOP``: one of :data:`EVENT_LOOPS`, :data:`DEFAULT_EVENT_LOOP` unset."""
    value = (reader.text("TESSERA_EVENT_LOOP", DEFAULT_EVENT_LOOP) or DEFAULT_EVENT_LOOP).lower()
    if value not in EVENT_LOOPS:
        choices = " or ".join(f"'{loop}'" for loop in EVENT_LOOPS)
        reader.problems.append(f"TESSERA_EVENT_LOOP must be {choices}")
    return value


def _read_workers(reader: EnvReader) -> int:
    """``TESSERA_WORKERS``: 1 (the default) to :data:`MAX_WORKERS` processes on the port."""
    workers = reader.parsed("TESSERA_WORKERS", int, 1, "an integer")
    if not 1 <= workers <= MAX_WORKERS:
        reader.problems.append(f"TESSERA_WORKERS must be 1-{MAX_WORKERS} (got {workers})")
        return 1
    return workers
