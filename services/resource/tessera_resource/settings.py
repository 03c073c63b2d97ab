"""The resource replica's settings, from the environment, validated all at once.

Composed, not copied: what the replica verifies is a
:class:`~tessera_verify.verify_config.VerifyConfig` (one typed configuration per
authentication method), how the process runs is a
:class:`~tessera_platform.process_settings.ProcessSettings`; only what is the
replica's own lives here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera_platform.process_settings import (
    ProcessSettings,
    read_dependency_urls,
    read_process_settings,
)
from tessera_verify.env import ConfigError, Environment, EnvReader, check_url, read_environment
from tessera_verify.principal import AuthMethod
from tessera_verify.verify_config import VerifyConfig, read_verify_config

__all__ = ["ConfigError", "ResourceSettings", "load_settings"]

DEFAULT_PORT = 9001
DEFAULT_POOL = 5


@dataclass(frozen=True)
class ResourceSettings:
    database_url: str
    #: The auth service, for the password check (rows 1-3) and the JWKS.
    auth_url: str
    verify: VerifyConfig
    process: ProcessSettings = field(
        default_factory=lambda: ProcessSettings(port=DEFAULT_PORT, db_pool_max=DEFAULT_POOL)
    )
    replica_id: str = "r1"
    environment: Environment = "production"


def load_settings(environ: Mapping[str, str] | None = None) -> ResourceSettings:
    """Settings from ``environ`` (default: ``os.environ``); raises :class:`ConfigError`."""
    reader = EnvReader(os.environ if environ is None else environ)
    environment = read_environment(reader)
    development = environment == "development"
    database_url, redis_url = read_dependency_urls(reader)
    auth_url = check_url(
        reader, "TESSERA_AUTH_URL", reader.text("TESSERA_AUTH_URL"), ("http", "https")
    ).rstrip("/")
    process = read_process_settings(
        reader, development=development, default_port=DEFAULT_PORT, default_pool=DEFAULT_POOL
    )
    verify = read_verify_config(
        reader,
        development=development,
        auth_url=auth_url,
        redis_url=redis_url,
        dependency_timeout=process.dependency_timeout,
    )
    replica_id = reader.text("TESSERA_REPLICA_ID") or socket.gethostname()
    if not replica_id.replace("-", "").replace("_", "").isalnum() or len(replica_id) > 64:
        reader.problems.append("TESSERA_REPLICA_ID must be 1-64 letters, digits, '-' or '_'")
    if process.workers > 1 and verify and AuthMethod.LOCAL_SESSION in verify.auth_methods:
        # Each worker would keep its own sessions: the load-balancer problem of rows 1-3
        # inside one replica, with the kernel as the round-robin balancer.
        reader.problems.append(
            f"TESSERA_WORKERS={process.workers} cannot serve local_session "
            "(TESSERA_AUTH_METHODS): each worker would keep sessions in its own memory, "
            "and a login would be unknown to the other workers; use 1 worker, or "
            "shared_session/jwt"
        )
    if reader.problems or verify is None:
        raise ConfigError(reader.problems)
    return ResourceSettings(
        database_url=database_url,
        auth_url=auth_url,
        verify=verify,
        process=process,
        replica_id=replica_id,
        environment=environment,
    )
