"""The resource replica's settings, from the environment, validated all at once."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera_verify.client_ip import Network
from tessera_verify.config import (
    ConfigError,
    Environment,
    EnvReader,
    check_url,
    read_cookie_insecure,
    read_dependency_urls,
    read_environment,
    read_issuer,
    read_jwt_algorithm,
    read_port,
    read_process_settings,
    read_secret,
    read_trusted_proxies,
)
from tessera_verify.principal import AuthMethod

__all__ = ["ConfigError", "ResourceSettings", "load_settings"]


@dataclass(frozen=True)
class ResourceSettings:
    database_url: str
    redis_url: str
    auth_url: str
    #: Only with shared sessions: a replica that takes JWTs alone holds no session key.
    session_hash_key: bytes | None = field(default=None, repr=False)
    replica_id: str = "r1"
    environment: Environment = "production"
    host: str = "127.0.0.1"
    port: int = 9001
    issuer: str = "http://127.0.0.1:8080"
    audience: str = "tessera"
    jwt_algorithm: str = "ES256"
    hs256_secret: bytes | None = field(default=None, repr=False)
    auth_methods: tuple[AuthMethod, ...] = (AuthMethod.JWT, AuthMethod.SHARED_SESSION)
    forward_secret: bytes | None = field(default=None, repr=False)
    trusted_proxies: tuple[Network, ...] = ()
    cookie_insecure: bool = False
    session_idle_timeout: int = 30 * 60
    session_absolute_timeout: int = 12 * 3600
    cache_ttl: float = 30.0
    revocation_max_staleness: float = 5.0
    cache_max_entries: int = 10_000
    jwks_max_age: float = 300.0
    jwks_min_refetch_interval: float = 5.0
    max_body_bytes: int = 16 * 1024
    dependency_timeout: float = 2.0
    db_pool_max: int = 5
    migrate_on_start: bool = False
    log_level: str = "INFO"
    drain_seconds: float = 0.0
    shutdown_timeout: float = 10.0
    log_json: bool = True
    access_log: bool = True

    @property
    def jwks_url(self) -> str:
        return self.auth_url + "/.well-known/jwks.json"


def _parse_methods(value: str) -> tuple[AuthMethod, ...]:
    methods = tuple(AuthMethod(part.strip()) for part in value.split(",") if part.strip())
    if not methods:
        raise ValueError("empty")
    return methods


def load_settings(environ: Mapping[str, str] | None = None) -> ResourceSettings:
    """Settings from ``environ`` (default: ``os.environ``); raises :class:`ConfigError`."""
    reader = EnvReader(os.environ if environ is None else environ)
    environment = read_environment(reader)
    development = environment == "development"
    database_url, redis_url = read_dependency_urls(reader)
    auth_url = check_url(
        reader, "TESSERA_AUTH_URL", reader.text("TESSERA_AUTH_URL"), ("http", "https")
    ).rstrip("/")
    default_methods: tuple[AuthMethod, ...] = (AuthMethod.JWT, AuthMethod.SHARED_SESSION)
    methods = reader.parsed(
        "TESSERA_AUTH_METHODS",
        _parse_methods,
        default_methods,
        "a comma list of " + ", ".join(m.value for m in AuthMethod),
    )
    algorithm = read_jwt_algorithm(reader)
    hs256_secret = None
    if algorithm == "HS256" and AuthMethod.JWT in methods:
        hs256_secret = read_secret(reader, "TESSERA_JWT_HS256_SECRET", development)
    session_hash_key = None
    if AuthMethod.SHARED_SESSION in methods:
        session_hash_key = read_secret(reader, "TESSERA_SESSION_HASH_KEY", development)
    forward_secret = None
    if AuthMethod.FORWARD in methods:
        forward_secret = read_secret(
            reader, "TESSERA_FORWARD_AUTH_SECRET", development, min_bytes=16
        )
    trusted = read_trusted_proxies(reader)
    if AuthMethod.FORWARD in methods and not trusted:
        reader.problems.append("forward auth needs TESSERA_TRUSTED_PROXIES (nginx's address)")
    issuer = read_issuer(reader, development=development, default=auth_url)
    cookie_insecure = read_cookie_insecure(reader, development)
    replica_id = reader.text("TESSERA_REPLICA_ID") or socket.gethostname()
    if not replica_id.replace("-", "").replace("_", "").isalnum() or len(replica_id) > 64:
        reader.problems.append("TESSERA_REPLICA_ID must be 1-64 letters, digits, '-' or '_'")

    settings = ResourceSettings(
        **read_process_settings(reader, development=development, default_pool=5),
        database_url=database_url,
        redis_url=redis_url,
        auth_url=auth_url,
        session_hash_key=session_hash_key,
        replica_id=replica_id,
        environment=environment,
        port=read_port(reader, 9001),
        issuer=issuer,
        audience=reader.text("TESSERA_AUDIENCE", "tessera") or "tessera",
        jwt_algorithm=algorithm,
        hs256_secret=hs256_secret,
        auth_methods=methods,
        cache_max_entries=reader.positive_int("TESSERA_CACHE_MAX_ENTRIES", 10_000),
        forward_secret=forward_secret,
        trusted_proxies=trusted,
        cookie_insecure=cookie_insecure,
        session_idle_timeout=reader.positive_int("TESSERA_SESSION_IDLE_TIMEOUT", 30 * 60),
        session_absolute_timeout=reader.positive_int("TESSERA_SESSION_ABSOLUTE_TIMEOUT", 43200),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings
