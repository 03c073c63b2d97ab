"""Reading typed settings from the environment, shared by every tessera service.

Every secret can also come from a file named by ``<NAME>_FILE`` (Docker and
Kubernetes secrets). :class:`EnvReader` records every problem instead of
stopping at the first, so an operator fixes a configuration in one pass.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypedDict, TypeVar
from urllib.parse import urlsplit

from .client_ip import Network
from .dependency_metrics import REDIS_URL_SCHEMES, parse_redis_nodes
from .verification_keys import SUPPORTED_ALGORITHMS

Environment = Literal["development", "production"]
PLACEHOLDER_MARK = "dev-only-insecure"
DEV_SECRET = PLACEHOLDER_MARK + "-change-me-0123456789abcdef0123456789"
MIN_SECRET_BYTES = 32

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


class EnvReader:
    """Reads variables, remembering every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        file_name = self.environ.get(f"{name}_FILE")
        value = self.environ.get(name)
        if file_name and value:
            self.problems.append(f"{name} and {name}_FILE are both set; set one")
            return None
        if file_name:
            try:
                return Path(file_name).read_text().strip()
            except OSError as exc:
                self.problems.append(f"{name}_FILE: cannot read {file_name}: {exc.strerror}")
                return None
        return value if value not in (None, "") else None

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def parsed(self, name: str, parse: Callable[[str], T], default: T, what: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not {what}")
            return default

    def positive_int(self, name: str, default: int) -> int:
        value = self.parsed(name, int, default, "an integer")
        if value <= 0:
            self.problems.append(f"{name} must be positive (got {value})")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (use 1/0, true/false)")
        return default


def parse_networks(value: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip())


def check_url(reader: EnvReader, name: str, value: str | None, schemes: tuple[str, ...]) -> str:
    if value is None:
        reader.problems.append(f"{name} is required")
        return ""
    if urlsplit(value).scheme not in schemes:
        reader.problems.append(f"{name} must be a URL with scheme {' or '.join(schemes)}")
    return value


def read_secret(
    reader: EnvReader, name: str, development: bool, *, min_bytes: int = MIN_SECRET_BYTES
) -> bytes:
    value = reader.raw(name)
    if value is None:
        if development:
            return DEV_SECRET.encode()
        reader.problems.append(f"{name} (or {name}_FILE) is required outside development")
        return b""
    if PLACEHOLDER_MARK in value and not development:
        reader.problems.append(f"{name} is a development placeholder; generate a real secret")
    if len(value.encode()) < min_bytes:
        reader.problems.append(f"{name} must be at least {min_bytes} bytes")
    return value.encode()


def read_issuer(reader: EnvReader, *, development: bool, default: str) -> str:
    """``TESSERA_ISSUER``, tokens' ``iss``, the same rule for the auth service and the
    replicas: an http(s) URL without a query, https outside development; ``default``
    only in development. No trailing slash (``iss`` is compared as a string)."""
    issuer = reader.text("TESSERA_ISSUER")
    if issuer is None:
        if not development:
            reader.problems.append("TESSERA_ISSUER is required outside development")
        return default.rstrip("/")
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
        reader.problems.append("TESSERA_ISSUER must be an http(s) URL without a query")
    elif parts.scheme == "http" and not development:
        reader.problems.append("TESSERA_ISSUER must use https outside development")
    return issuer.rstrip("/")


def read_environment(reader: EnvReader) -> Environment:
    environment = reader.text("TESSERA_ENV", "production")
    if environment == "development":
        return "development"
    if environment != "production":
        reader.problems.append("TESSERA_ENV must be 'development' or 'production'")
    return "production"


def read_port(reader: EnvReader, default: int) -> int:
    port = reader.parsed("TESSERA_PORT", int, default, "a port number")
    if not 0 < port < 65536:
        reader.problems.append(f"TESSERA_PORT must be 1-65535 (got {port})")
    return port


def read_dependency_timeout(reader: EnvReader) -> float:
    """Seconds a Redis/PostgreSQL/HTTP dependency call may take before we answer 503."""
    timeout = reader.parsed("TESSERA_DEPENDENCY_TIMEOUT", float, 2.0, "a number")
    if not 0 < timeout < math.inf:  # also refuses nan
        reader.problems.append(
            f"TESSERA_DEPENDENCY_TIMEOUT must be positive and finite (got {timeout})"
        )
        return 2.0
    return timeout


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


def read_jwt_algorithm(reader: EnvReader) -> str:
    algorithm = reader.text("TESSERA_JWT_ALG", "ES256") or "ES256"
    if algorithm not in SUPPORTED_ALGORITHMS:
        reader.problems.append(
            f"TESSERA_JWT_ALG must be one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
        )
    return algorithm


def read_cookie_insecure(reader: EnvReader, development: bool) -> bool:
    insecure = reader.flag("TESSERA_COOKIE_INSECURE", False)
    if insecure and not development:
        reader.problems.append(
            "TESSERA_COOKIE_INSECURE is only allowed with TESSERA_ENV=development"
        )
    return insecure


def read_log_level(reader: EnvReader) -> str:
    level = (reader.text("TESSERA_LOG_LEVEL", "INFO") or "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        reader.problems.append(f"TESSERA_LOG_LEVEL={level!r} is not a log level")
    return level


def read_trusted_proxies(reader: EnvReader) -> tuple[Network, ...]:
    none: tuple[Network, ...] = ()
    return reader.parsed(
        "TESSERA_TRUSTED_PROXIES", parse_networks, none, "a comma-separated list of networks"
    )


def read_log_json(reader: EnvReader) -> bool:
    """``TESSERA_LOG_FORMAT``: ``json`` (default, one object per line) or ``text``."""
    value = (reader.text("TESSERA_LOG_FORMAT", "json") or "json").lower()
    if value not in ("json", "text"):
        reader.problems.append("TESSERA_LOG_FORMAT must be 'json' or 'text'")
    return value != "text"


def read_revocation_max_staleness(reader: EnvReader) -> float:
    """``TESSERA_REVOCATION_MAX_STALENESS``: S, the oldest proof of a complete revocation
    copy a verifier accepts credentials on (0: none, every check asks Redis)."""
    value = reader.parsed("TESSERA_REVOCATION_MAX_STALENESS", float, 5.0, "a number")
    if not 0 <= value <= 30:
        reader.problems.append("TESSERA_REVOCATION_MAX_STALENESS must be between 0 and 30 seconds")
    return value


class ProcessSettings(TypedDict):
    """What every tessera process reads the same way (unpacked into its settings)."""

    host: str
    max_body_bytes: int
    dependency_timeout: float
    cache_ttl: float
    revocation_max_staleness: float
    db_pool_max: int
    migrate_on_start: bool
    log_level: str
    log_json: bool
    access_log: bool
    drain_seconds: float
    shutdown_timeout: float


def read_process_settings(
    reader: EnvReader, *, development: bool, default_pool: int
) -> ProcessSettings:
    return ProcessSettings(
        host=reader.text("TESSERA_HOST", "127.0.0.1") or "127.0.0.1",
        max_body_bytes=reader.positive_int("TESSERA_MAX_BODY_BYTES", 16 * 1024),
        dependency_timeout=read_dependency_timeout(reader),
        cache_ttl=reader.parsed("TESSERA_CACHE_TTL", float, 30.0, "a number"),
        revocation_max_staleness=read_revocation_max_staleness(reader),
        db_pool_max=reader.positive_int("TESSERA_DB_POOL_MAX", default_pool),
        migrate_on_start=reader.flag("TESSERA_MIGRATE_ON_START", development),
        log_level=read_log_level(reader),
        log_json=read_log_json(reader),
        access_log=reader.flag("TESSERA_ACCESS_LOG", True),
        drain_seconds=reader.parsed("TESSERA_DRAIN_SECONDS", float, 0.0, "a number"),
        shutdown_timeout=reader.parsed("TESSERA_SHUTDOWN_TIMEOUT", float, 10.0, "a number"),
    )
