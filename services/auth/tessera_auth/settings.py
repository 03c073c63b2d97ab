"""Typed settings from the environment (12-factor), validated all at once.

Every secret can also come from a file named by ``<NAME>_FILE`` (Docker and
Kubernetes secrets). :func:`load_settings` collects every problem before it
fails, so an operator fixes a configuration in one pass.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tessera_verify.config import (
    ConfigError,
    Environment,
    EnvReader,
    read_cookie_insecure,
    read_dependency_timeout,
    read_dependency_urls,
    read_environment,
    read_jwt_algorithm,
    read_log_level,
    read_port,
    read_secret,
    read_trusted_proxies,
)

__all__ = ["Argon2Parameters", "ConfigError", "Settings", "load_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Argon2Parameters:
    """Argon2id cost; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    memory_kib: int = 19 * 1024
    time_cost: int = 2
    parallelism: int = 1


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    session_hash_key: bytes = field(repr=False)
    key_encryption_key: bytes = field(repr=False)
    environment: Environment = "production"
    host: str = "127.0.0.1"
    port: int = 8080
    issuer: str = "http://127.0.0.1:8080"
    audience: str = "tessera"
    client_id: str = "tessera-web"
    jwt_algorithm: str = "ES256"
    hs256_secret: bytes | None = field(default=None, repr=False)
    access_token_ttl: int = 300
    refresh_token_ttl: int = 14 * 24 * 3600
    session_idle_timeout: int = 30 * 60
    session_absolute_timeout: int = 12 * 3600
    session_touch_interval: float | None = None
    cookie_insecure: bool = False
    registration_enabled: bool = True
    argon2: Argon2Parameters = Argon2Parameters()
    max_body_bytes: int = 16 * 1024
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dependency_timeout: float = 2.0
    db_pool_max: int = 10
    migrate_on_start: bool = False
    log_level: str = "INFO"

    @property
    def development(self) -> bool:
        return self.environment == "development"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: ``os.environ``); raises :class:`ConfigError`."""
    reader = EnvReader(os.environ if environ is None else environ)
    environment = read_environment(reader)
    development = environment == "development"

    database_url, redis_url = read_dependency_urls(reader)
    port = read_port(reader, 8080)
    issuer = reader.text("TESSERA_ISSUER")
    if issuer is None:
        if not development:
            reader.problems.append("TESSERA_ISSUER is required outside development")
        issuer = f"http://127.0.0.1:{port}"
    elif urlsplit(issuer).scheme not in ("https", "http") or urlsplit(issuer).query:
        reader.problems.append("TESSERA_ISSUER must be an http(s) URL without a query")
    elif urlsplit(issuer).scheme == "http" and not development:
        reader.problems.append("TESSERA_ISSUER must use https outside development")

    algorithm = read_jwt_algorithm(reader)
    hs256_secret: bytes | None = None
    if algorithm == "HS256":
        hs256_secret = read_secret(reader, "TESSERA_JWT_HS256_SECRET", development)
    elif reader.raw("TESSERA_JWT_HS256_SECRET") is not None:
        reader.problems.append("TESSERA_JWT_HS256_SECRET is set but TESSERA_JWT_ALG is not HS256")

    cookie_insecure = read_cookie_insecure(reader, development)

    idle = reader.positive_int("TESSERA_SESSION_IDLE_TIMEOUT", 30 * 60)
    absolute = reader.positive_int("TESSERA_SESSION_ABSOLUTE_TIMEOUT", 12 * 3600)
    if idle > absolute:
        reader.problems.append(
            "TESSERA_SESSION_IDLE_TIMEOUT must not exceed TESSERA_SESSION_ABSOLUTE_TIMEOUT"
        )
    touch = reader.parsed("TESSERA_SESSION_TOUCH_INTERVAL", float, -1.0, "a number")
    if touch >= idle:
        reader.problems.append("TESSERA_SESSION_TOUCH_INTERVAL must be below the idle timeout")

    argon2 = Argon2Parameters(
        memory_kib=reader.positive_int("TESSERA_ARGON2_MEMORY_KIB", 19 * 1024),
        time_cost=reader.positive_int("TESSERA_ARGON2_TIME_COST", 2),
        parallelism=reader.positive_int("TESSERA_ARGON2_PARALLELISM", 1),
    )
    if not development and (argon2.memory_kib < 19 * 1024 or argon2.time_cost < 2):
        reader.problems.append(
            "Argon2 parameters below OWASP's minimum (m=19456 KiB, t=2) outside development"
        )

    dependency_timeout = read_dependency_timeout(reader)

    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        session_hash_key=read_secret(reader, "TESSERA_SESSION_HASH_KEY", development),
        key_encryption_key=read_secret(reader, "TESSERA_KEY_ENCRYPTION_KEY", development),
        environment=environment,
        host=reader.text("TESSERA_HOST", "127.0.0.1") or "127.0.0.1",
        port=port,
        issuer=issuer.rstrip("/") if issuer else issuer,
        audience=reader.text("TESSERA_AUDIENCE", "tessera") or "tessera",
        client_id=reader.text("TESSERA_CLIENT_ID", "tessera-web") or "tessera-web",
        jwt_algorithm=algorithm,
        hs256_secret=hs256_secret,
        access_token_ttl=reader.positive_int("TESSERA_ACCESS_TOKEN_TTL", 300),
        refresh_token_ttl=reader.positive_int("TESSERA_REFRESH_TOKEN_TTL", 14 * 24 * 3600),
        session_idle_timeout=idle,
        session_absolute_timeout=absolute,
        session_touch_interval=None if touch < 0 else touch,
        cookie_insecure=cookie_insecure,
        registration_enabled=reader.flag("TESSERA_REGISTRATION_ENABLED", True),
        argon2=argon2,
        max_body_bytes=reader.positive_int("TESSERA_MAX_BODY_BYTES", 16 * 1024),
        trusted_proxies=read_trusted_proxies(reader),
        dependency_timeout=dependency_timeout,
        db_pool_max=reader.positive_int("TESSERA_DB_POOL_MAX", 10),
        migrate_on_start=reader.flag("TESSERA_MIGRATE_ON_START", development),
        log_level=read_log_level(reader),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings
