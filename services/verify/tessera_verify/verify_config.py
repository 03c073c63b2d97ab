"""What a validating service is told: one typed configuration per authentication
method, composed into :class:`VerifyConfig`, and how it is read from the
environment (the replicas' ``TESSERA_*`` variables).

A method's configuration holds exactly what that method needs and nothing is
optional inside it: a replica that takes JWTs alone has no session key at all,
not a ``None`` one, and the authenticators never re-check what the types say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from .client_ip import Network
from .env import (
    EnvReader,
    read_cookie_insecure,
    read_issuer,
    read_jwt_algorithm,
    read_secret,
    read_trusted_proxies,
)
from .principal import AuthMethod
from .sessions import SessionPolicy
from .verification_keys import SUPPORTED_ALGORITHMS

__all__ = [
    "CacheConfig",
    "ForwardConfig",
    "JwtConfig",
    "LocalSessionConfig",
    "MethodConfig",
    "SharedSessionConfig",
    "VerifyConfig",
    "read_cache_config",
    "read_session_policy",
    "read_verify_config",
]

MIN_FORWARD_SECRET_BYTES = 16
#: Paths answered without looking at credentials.
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")


@dataclass(frozen=True)
class CacheConfig:
    """How long a verifier may answer from memory (the auth service reads the same)."""

    #: Seconds a verified token or a loaded session is reused (never past a revocation).
    ttl: float = 30.0
    #: S: the oldest proof of a complete revocation copy a verifier accepts credentials
    #: on (0: none, every check asks Redis).
    revocation_max_staleness: float = 5.0
    max_entries: int = 10_000


@dataclass(frozen=True)
class JwtConfig:
    """Bearer access tokens: the keys they are signed with (a JWKS URL, or HS256's secret)."""

    method: ClassVar[AuthMethod] = AuthMethod.JWT
    jwks_url: str | None = None
    hs256_secret: bytes | None = field(default=None, repr=False)
    algorithms: tuple[str, ...] = ("ES256",)
    jwks_max_age: float = 300.0
    jwks_min_refetch_interval: float = 5.0

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.hs256_secret is None):
            raise ValueError("JWT validation needs jwks_url or hs256_secret (exactly one)")
        unknown = set(self.algorithms) - SUPPORTED_ALGORITHMS
        if unknown or not self.algorithms:
            raise ValueError(f"unsupported algorithms: {sorted(unknown) or 'none given'}")


@dataclass(frozen=True)
class SharedSessionConfig:
    """Session cookies whose records live in the shared Redis (the auth service wrote them)."""

    method: ClassVar[AuthMethod] = AuthMethod.SHARED_SESSION
    hash_key: bytes = field(repr=False)
    policy: SessionPolicy = field(default_factory=SessionPolicy)


@dataclass(frozen=True)
class LocalSessionConfig:
    """Sessions in this process's memory (demonstration rows 1-3). Their key is the
    process's own, drawn at start: no other process needs it."""

    method: ClassVar[AuthMethod] = AuthMethod.LOCAL_SESSION
    policy: SessionPolicy = field(default_factory=SessionPolicy)


@dataclass(frozen=True)
class ForwardConfig:
    """An identity nginx forwards after its ``auth_request``, signed with a shared secret
    and believed only from :attr:`VerifyConfig.trusted_proxies`."""

    method: ClassVar[AuthMethod] = AuthMethod.FORWARD
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        # Checked here, when the configuration is made, not when the service starts.
        if len(self.secret) < MIN_FORWARD_SECRET_BYTES:
            raise ValueError(
                f"the forward-auth secret must be at least {MIN_FORWARD_SECRET_BYTES} bytes"
            )


MethodConfig = JwtConfig | SharedSessionConfig | LocalSessionConfig | ForwardConfig
M = TypeVar("M", JwtConfig, SharedSessionConfig, LocalSessionConfig, ForwardConfig)


@dataclass(frozen=True)
class VerifyConfig:
    """The methods a service accepts, in the order they are tried, and what they share."""

    issuer: str
    audience: str
    methods: tuple[MethodConfig, ...]
    #: The shared Redis: sessions and the revocation plane (JWTs and shared sessions).
    redis_url: str | None = None
    #: Who may set X-Forwarded-For and forward an identity (nginx).
    trusted_proxies: tuple[Network, ...] = ()
    cookie_insecure: bool = False
    dependency_timeout: float = 2.0
    caches: CacheConfig = field(default_factory=CacheConfig)
    public_paths: tuple[str, ...] = PUBLIC_PATHS

    def __post_init__(self) -> None:
        problems = []
        kinds = [type(method) for method in self.methods]
        if not kinds:
            problems.append("at least one authentication method is needed")
        if len(set(kinds)) != len(kinds):
            problems.append("each authentication method may be configured once")
        if self.redis_url is None and {JwtConfig, SharedSessionConfig} & set(kinds):
            problems.append("JWTs and shared sessions need redis_url (the revocation plane)")
        if ForwardConfig in kinds and not self.trusted_proxies:
            problems.append("forward auth needs trusted_proxies (nginx's address)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def auth_methods(self) -> tuple[AuthMethod, ...]:
        return tuple(method.method for method in self.methods)

    def method(self, kind: type[M]) -> M | None:
        """The configuration of method ``kind``, or None when it is off."""
        for method in self.methods:
            if isinstance(method, kind):
                return method
        return None


def read_cache_config(reader: EnvReader) -> CacheConfig:
    staleness = reader.parsed("TESSERA_REVOCATION_MAX_STALENESS", float, 5.0, "a number")
    if not 0 <= staleness <= 30:
        reader.problems.append("TESSERA_REVOCATION_MAX_STALENESS must be between 0 and 30 seconds")
    return CacheConfig(
        ttl=reader.parsed("TESSERA_CACHE_TTL", float, 30.0, "a number"),
        revocation_max_staleness=staleness,
        max_entries=reader.positive_int("TESSERA_CACHE_MAX_ENTRIES", 10_000),
    )


def read_session_policy(reader: EnvReader) -> SessionPolicy:
    return SessionPolicy(
        idle_timeout=reader.positive_int("TESSERA_SESSION_IDLE_TIMEOUT", 30 * 60),
        absolute_timeout=reader.positive_int("TESSERA_SESSION_ABSOLUTE_TIMEOUT", 12 * 3600),
    )


def _parse_methods(value: str) -> tuple[AuthMethod, ...]:
    methods = tuple(AuthMethod(part.strip()) for part in value.split(",") if part.strip())
    if not methods:
        raise ValueError("empty")
    return methods


def read_verify_config(
    reader: EnvReader,
    *,
    development: bool,
    auth_url: str,
    redis_url: str,
    dependency_timeout: float,
) -> VerifyConfig | None:
    """The replica's :class:`VerifyConfig` from ``TESSERA_AUTH_METHODS`` and the variables
    each method needs; None when ``reader`` has recorded a problem (the caller raises
    with every problem at once)."""
    default_methods: tuple[AuthMethod, ...] = (AuthMethod.JWT, AuthMethod.SHARED_SESSION)
    kinds = reader.parsed(
        "TESSERA_AUTH_METHODS",
        _parse_methods,
        default_methods,
        "a comma list of " + ", ".join(m.value for m in AuthMethod),
    )
    algorithm = read_jwt_algorithm(reader)
    policy = read_session_policy(reader)
    methods: list[MethodConfig] = []
    for kind in dict.fromkeys(kinds):
        try:
            methods.append(_read_method(kind, reader, development, auth_url, algorithm, policy))
        except ValueError as exc:  # a value its reader already named as a problem
            if not reader.problems:
                reader.problems.append(str(exc))
    trusted = read_trusted_proxies(reader)
    if AuthMethod.FORWARD in kinds and not trusted:
        reader.problems.append("forward auth needs TESSERA_TRUSTED_PROXIES (nginx's address)")
    issuer = read_issuer(reader, development=development, default=auth_url)
    audience = reader.text("TESSERA_AUDIENCE", "tessera") or "tessera"
    cookie_insecure = read_cookie_insecure(reader, development)
    caches = read_cache_config(reader)
    if reader.problems:
        return None
    return VerifyConfig(
        issuer=issuer,
        audience=audience,
        methods=tuple(methods),
        redis_url=redis_url,
        trusted_proxies=trusted,
        cookie_insecure=cookie_insecure,
        dependency_timeout=dependency_timeout,
        caches=caches,
    )


def _read_method(
    kind: AuthMethod,
    reader: EnvReader,
    development: bool,
    auth_url: str,
    algorithm: str,
    policy: SessionPolicy,
) -> MethodConfig:
    """Method ``kind``'s configuration from its variables; ValueError when one is bad."""
    if kind is AuthMethod.JWT:
        if algorithm == "HS256":
            secret = read_secret(reader, "TESSERA_JWT_HS256_SECRET", development)
            return JwtConfig(hs256_secret=secret, algorithms=(algorithm,))
        jwks_url = auth_url + "/.well-known/jwks.json"
        return JwtConfig(jwks_url=jwks_url, algorithms=(algorithm,))
    if kind is AuthMethod.SHARED_SESSION:
        key = read_secret(reader, "TESSERA_SESSION_HASH_KEY", development)
        return SharedSessionConfig(hash_key=key, policy=policy)
    if kind is AuthMethod.LOCAL_SESSION:
        return LocalSessionConfig(policy=policy)
    secret = read_secret(
        reader, "TESSERA_FORWARD_AUTH_SECRET", development, min_bytes=MIN_FORWARD_SECRET_BYTES
    )
    return ForwardConfig(secret=secret)
