"""Typed settings from the environment (12-factor), validated all at once.

Every secret can also come from a file named by ``<NAME>_FILE`` (Docker and
Kubernetes secrets). :func:`load_settings` collects every problem before it
fails, so an operator fixes a configuration in one pass.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera_platform.process_settings import (
    ProcessSettings,
    read_dependency_urls,
    read_process_settings,
)
from tessera_verify.env import (
    ConfigError,
    Environment,
    EnvReader,
    read_cookie_insecure,
    read_environment,
    read_issuer,
    read_jwt_algorithm,
    read_secret,
    read_trusted_proxies,
)
from tessera_verify.verify_config import CacheConfig, read_cache_config

from .password_policy import DEFAULT_MIN_LENGTH, MAX_LENGTH, MIN_LENGTH_FLOOR
from .portal.return_url import Origin, parse_origin
from .regulation import RegulationPolicy

__all__ = ["Argon2Parameters", "ConfigError", "Settings", "load_settings"]

log = logging.getLogger(__name__)

# Key rotation defaults (seconds); see tessera_auth.keyring for the life cycle.
KEY_ROTATION_INTERVAL = 30 * 24 * 3600
KEY_PUBLISH_LEAD_TIME = 60
KEY_RELOAD_INTERVAL = 30.0
# tessera_verify's JWKSCache refetches on an unknown kid at most this often (its default).
VERIFIER_MIN_REFETCH_INTERVAL = 5.0


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
    issuer: str = "http://127.0.0.1:8080"
    audience: str = "tessera"
    client_id: str = "tessera-web"
    jwt_algorithm: str = "ES256"
    hs256_secret: bytes | None = field(default=None, repr=False)
    key_rotation_interval: int = KEY_ROTATION_INTERVAL
    key_publish_lead_time: int = KEY_PUBLISH_LEAD_TIME
    key_reload_interval: float = KEY_RELOAD_INTERVAL
    access_token_ttl: int = 300
    refresh_token_ttl: int = 14 * 24 * 3600
    session_idle_timeout: int = 30 * 60
    session_absolute_timeout: int = 12 * 3600
    session_touch_interval: float | None = None
    cookie_insecure: bool = False
    registration_enabled: bool = True
    argon2: Argon2Parameters = Argon2Parameters()
    #: Argon2 jobs (hash or verify) one process may have queued or running; None: 2 x CPUs + 2.
    argon2_max_pending: int | None = None
    password_min_length: int = DEFAULT_MIN_LENGTH
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    refresh_grace: float = 10.0
    regulation: RegulationPolicy = field(default_factory=RegulationPolicy)
    redis_wait_replicas: int = 0
    introspection_clients: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    caches: CacheConfig = field(default_factory=CacheConfig)
    #: Origins besides the issuer's that the portal may send a browser back to after
    #: login (TESSERA_PORTAL_ALLOWED_ORIGINS): the apps it protects on other hosts.
    portal_allowed_origins: tuple[Origin, ...] = ()

    @property
    def development(self) -> bool:
        return self.environment == "development"


def _parse_clients(value: str) -> tuple[tuple[str, bytes], ...]:
    clients = []
    for part in value.replace("\n", ",").split(","):
        if not part.strip():
            continue
        client_id, sep, secret = part.strip().partition(":")
        if not sep or not client_id or len(secret) < 16:
            raise ValueError(part)
        clients.append((client_id, secret.encode()))
    return tuple(clients)


def _introspection_clients(reader: EnvReader) -> tuple[tuple[str, bytes], ...]:
    none: tuple[tuple[str, bytes], ...] = ()
    return reader.parsed(
        "TESSERA_INTROSPECTION_CLIENTS",
        _parse_clients,
        none,
        "a list of client_id:secret pairs (secrets of at least 16 characters)",
    )


def _parse_origins(value: str) -> tuple[Origin, ...]:
    return tuple(parse_origin(part) for part in value.split(",") if part.strip())


def _portal_allowed_origins(reader: EnvReader, development: bool) -> tuple[Origin, ...]:
    none: tuple[Origin, ...] = ()
    origins = reader.parsed(
        "TESSERA_PORTAL_ALLOWED_ORIGINS",
        _parse_origins,
        none,
        "a comma-separated list of origins (https://host or https://host:port)",
    )
    if not development and any(scheme != "https" for scheme, _, _ in origins):
        reader.problems.append("TESSERA_PORTAL_ALLOWED_ORIGINS must be https outside development")
    return origins


def _read_key_rotation(reader: EnvReader) -> tuple[int, int, float]:
    """Rotation interval (0: no automatic rotation), publish lead time, reload interval."""
    interval = reader.parsed(
        "TESSERA_KEY_ROTATION_INTERVAL", int, KEY_ROTATION_INTERVAL, "an integer"
    )
    lead_time = reader.positive_int("TESSERA_KEY_PUBLISH_LEAD_TIME", KEY_PUBLISH_LEAD_TIME)
    reload_interval = reader.parsed(
        "TESSERA_KEY_RELOAD_INTERVAL", float, KEY_RELOAD_INTERVAL, "a number"
    )
    if not 0 < reload_interval < math.inf:  # also refuses nan
        reader.problems.append(
            f"TESSERA_KEY_RELOAD_INTERVAL must be positive and finite (got {reload_interval})"
        )
    # A new key may sign only once every auth replica has reloaded it into its JWKS
    # and every verifier that fetched the JWKS just before is allowed to refetch.
    elif lead_time < reload_interval + VERIFIER_MIN_REFETCH_INTERVAL:
        reader.problems.append(
            "TESSERA_KEY_PUBLISH_LEAD_TIME must be at least TESSERA_KEY_RELOAD_INTERVAL + "
            f"{VERIFIER_MIN_REFETCH_INTERVAL:g} s (the verifiers' minimum JWKS refetch "
            f"interval): {lead_time} < {reload_interval + VERIFIER_MIN_REFETCH_INTERVAL:g}"
        )
    if interval < 0 or 0 < interval < lead_time:
        reader.problems.append(
            "TESSERA_KEY_ROTATION_INTERVAL must be 0 (no automatic rotation) or at least "
            f"TESSERA_KEY_PUBLISH_LEAD_TIME (got {interval})"
        )
    return interval, lead_time, reload_interval


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: ``os.environ``); raises :class:`ConfigError`."""
    reader = EnvReader(os.environ if environ is None else environ)
    environment = read_environment(reader)
    development = environment == "development"

    database_url, redis_url = read_dependency_urls(reader)
    process = read_process_settings(
        reader, development=development, default_port=8080, default_pool=10
    )
    issuer = read_issuer(
        reader, development=development, default=f"http://127.0.0.1:{process.port}"
    )

    algorithm = read_jwt_algorithm(reader)
    hs256_secret: bytes | None = None
    if algorithm == "HS256":
        hs256_secret = read_secret(reader, "TESSERA_JWT_HS256_SECRET", development)
    elif reader.raw("TESSERA_JWT_HS256_SECRET") is not None:
        reader.problems.append("TESSERA_JWT_HS256_SECRET is set but TESSERA_JWT_ALG is not HS256")

    key_rotation_interval, key_publish_lead_time, key_reload_interval = _read_key_rotation(reader)
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

    argon2_max_pending = reader.parsed("TESSERA_ARGON2_MAX_PENDING", int, 0, "an integer")
    if argon2_max_pending < 0:
        reader.problems.append(
            f"TESSERA_ARGON2_MAX_PENDING must be positive, or 0 for 2 x CPUs + 2 "
            f"(got {argon2_max_pending})"
        )
    password_min_length = reader.parsed(
        "TESSERA_PASSWORD_MIN_LENGTH", int, DEFAULT_MIN_LENGTH, "an integer"
    )
    if not MIN_LENGTH_FLOOR <= password_min_length <= MAX_LENGTH // 2:
        reader.problems.append(
            f"TESSERA_PASSWORD_MIN_LENGTH must be between {MIN_LENGTH_FLOOR} and "
            f"{MAX_LENGTH // 2} (got {password_min_length})"
        )

    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        session_hash_key=read_secret(reader, "TESSERA_SESSION_HASH_KEY", development),
        key_encryption_key=read_secret(reader, "TESSERA_KEY_ENCRYPTION_KEY", development),
        environment=environment,
        issuer=issuer,
        audience=reader.text("TESSERA_AUDIENCE", "tessera") or "tessera",
        client_id=reader.text("TESSERA_CLIENT_ID", "tessera-web") or "tessera-web",
        jwt_algorithm=algorithm,
        hs256_secret=hs256_secret,
        key_rotation_interval=key_rotation_interval,
        key_publish_lead_time=key_publish_lead_time,
        key_reload_interval=key_reload_interval,
        access_token_ttl=reader.positive_int("TESSERA_ACCESS_TOKEN_TTL", 300),
        refresh_token_ttl=reader.positive_int("TESSERA_REFRESH_TOKEN_TTL", 14 * 24 * 3600),
        session_idle_timeout=idle,
        session_absolute_timeout=absolute,
        session_touch_interval=None if touch < 0 else touch,
        cookie_insecure=cookie_insecure,
        registration_enabled=reader.flag("TESSERA_REGISTRATION_ENABLED", True),
        argon2=argon2,
        argon2_max_pending=argon2_max_pending or None,
        password_min_length=password_min_length,
        trusted_proxies=read_trusted_proxies(reader),
        refresh_grace=reader.parsed("TESSERA_REFRESH_GRACE_SECONDS", float, 10.0, "a number"),
        redis_wait_replicas=reader.parsed("TESSERA_REDIS_WAIT_REPLICAS", int, 0, "an integer"),
        introspection_clients=_introspection_clients(reader),
        process=process,
        caches=read_cache_config(reader),
        portal_allowed_origins=_portal_allowed_origins(reader, development),
        regulation=RegulationPolicy(
            max_failures_per_account=reader.parsed(
                "TESSERA_LOGIN_MAX_FAILURES", int, 10, "an integer"
            ),
            max_failures_per_address=reader.parsed(
                "TESSERA_LOGIN_MAX_FAILURES_PER_ADDRESS", int, 100, "an integer"
            ),
            window=reader.positive_int("TESSERA_LOGIN_FAILURE_WINDOW", 300),
            max_failures_per_pair=reader.parsed(
                "TESSERA_LOGIN_MAX_FAILURES_PER_ACCOUNT_ADDRESS", int, 5, "an integer"
            ),
            max_backoff=reader.parsed("TESSERA_LOGIN_MAX_BACKOFF", float, 30.0, "a number"),
            # Off in development: the local stack's demo and bench register many users
            # from a few loopback addresses.
            max_registrations_per_address=reader.parsed(
                "TESSERA_REGISTER_MAX_PER_ADDRESS", int, 0 if development else 20, "an integer"
            ),
        ),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings
