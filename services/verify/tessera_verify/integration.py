"""Validate tessera credentials in any aiohttp service, in three lines::

    from tessera_verify.integration import TesseraVerify, VerifyConfig
    app = web.Application()
    TesseraVerify(VerifyConfig(issuer=..., audience=..., jwks_url=..., redis_url=...)).install(app)

Handlers then call :func:`tessera_verify.principal.get_principal` (401 when
the caller is anonymous). Connections open and close with the app
(``cleanup_ctx``); nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis

from .access_tokens import AccessTokenClaims, AccessTokenVerifier
from .authenticators import (
    Authentication,
    Authenticator,
    BearerTokenAuthenticator,
    ForwardedIdentityAuthenticator,
    SessionCookieAuthenticator,
)
from .client_ip import Network
from .clock import Clock, SystemClock
from .dependency_metrics import instrumented_redis
from .http_metrics import ServiceMetrics
from .principal import AuthMethod, set_principal
from .revocation_cache import RevocationCache
from .session_cache import CachedSessionStore
from .session_store import RedisSessionStore
from .sessions import SessionManager, SessionPolicy, session_cookie_name
from .ttl_cache import TTLCache
from .verification_keys import (
    JWKSCache,
    KeySource,
    StaticKeySource,
    VerificationKey,
    shared_secret_kid,
)

LOCAL_SESSION_COOKIE = "__Host-tessera_local_session"
INSECURE_LOCAL_SESSION_COOKIE = "tessera_local_session"


@dataclass(frozen=True)
class VerifyConfig:
    """What a validating service needs to know; secrets stay out of ``repr``."""

    issuer: str
    audience: str
    methods: Sequence[AuthMethod] = (AuthMethod.JWT,)
    jwks_url: str | None = None
    algorithms: Sequence[str] = ("ES256",)
    hs256_secret: bytes | None = field(default=None, repr=False)
    redis_url: str | None = None
    session_hash_key: bytes | None = field(default=None, repr=False)
    session_policy: SessionPolicy = field(default_factory=SessionPolicy)
    local_sessions: SessionManager | None = None
    forward_secret: bytes | None = field(default=None, repr=False)
    trusted_proxies: Sequence[Network] = ()
    cookie_insecure: bool = False
    dependency_timeout: float = 2.0
    cache_ttl: float = 30.0
    revocation_max_staleness: float = 5.0
    cache_max_entries: int = 10_000
    jwks_max_age: float = 300.0
    jwks_min_refetch_interval: float = 5.0
    public_paths: Sequence[str] = ("/healthz", "/readyz", "/metrics")

    def __post_init__(self) -> None:
        problems = []
        methods = set(self.methods)
        if AuthMethod.JWT in methods:
            if self.hs256_secret is None and self.jwks_url is None:
                problems.append("JWT validation needs jwks_url (or hs256_secret)")
            if self.redis_url is None:
                problems.append("JWT validation needs redis_url for the revocation denylist")
        if AuthMethod.SHARED_SESSION in methods and (
            self.redis_url is None or self.session_hash_key is None
        ):
            problems.append("shared sessions need redis_url and session_hash_key")
        if AuthMethod.LOCAL_SESSION in methods and self.local_sessions is None:
            problems.append("local sessions need a local_sessions manager")
        if AuthMethod.FORWARD in methods and (
            self.forward_secret is None or not self.trusted_proxies
        ):
            problems.append("forward auth needs forward_secret and trusted_proxies")
        if problems:
            raise ValueError("; ".join(problems))


class TesseraVerify:
    """Owns the connections and authenticators; install() wires them into an app."""

    def __init__(
        self,
        config: VerifyConfig,
        *,
        clock: Clock | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.redis: Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self.verifier: AccessTokenVerifier | None = None
        self.shared_sessions: SessionManager | None = None
        self.revocations: RevocationCache | None = None
        self.token_cache: TTLCache[str, AccessTokenClaims] = TTLCache(config.cache_max_entries)
        self.session_cache: CachedSessionStore | None = None
        self.authentication = Authentication((), metrics)

    def install(self, app: web.Application) -> None:
        app[TESSERA_VERIFY] = self
        app.cleanup_ctx.append(self._lifetime)
        app.middlewares.append(self._middleware)

    @property
    def session_cookie(self) -> str:
        return session_cookie_name(insecure=self.config.cookie_insecure)

    @property
    def local_session_cookie(self) -> str:
        if self.config.cookie_insecure:
            return INSECURE_LOCAL_SESSION_COOKIE
        return LOCAL_SESSION_COOKIE

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        config = self.config
        if config.redis_url is not None:
            self.redis = instrumented_redis(
                config.redis_url,
                timeout=config.dependency_timeout,
                latency=None if self.metrics is None else self.metrics.dependency_latency,
            )
        self.http = aiohttp.ClientSession()
        feed: asyncio.Task[None] | None = None
        if self.redis is not None:
            self.revocations = RevocationCache(
                self.redis, self.clock, max_staleness=config.revocation_max_staleness
            )
            feed = asyncio.create_task(self.revocations.run())
            # Start serving either way: until the copy is fresh, checks go to Redis directly.
            await self.revocations.wait_fresh(config.dependency_timeout)
        self.authentication = Authentication(self._build_authenticators(), self.metrics)
        if self.metrics is not None:
            cache = self.token_cache
            self.metrics.watch_cache("verified_tokens", lambda: (cache.hits, cache.misses))
            if self.revocations is not None:
                self.metrics.watch_revocations(self.revocations)
            if self.session_cache is not None:
                sessions = self.session_cache.cache
                self.metrics.watch_cache("sessions", lambda: (sessions.hits, sessions.misses))
        try:
            yield
        finally:
            if feed is not None:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed
            await self.http.close()
            if self.redis is not None:
                await self.redis.aclose()

    def _key_source(self) -> KeySource:
        config = self.config
        if config.hs256_secret is not None:
            kid = shared_secret_kid(config.hs256_secret)
            return StaticKeySource([VerificationKey(kid, "HS256", config.hs256_secret)])
        assert config.jwks_url is not None
        assert self.http is not None
        return JWKSCache(
            config.jwks_url,
            self.http,
            clock=self.clock,
            max_age=config.jwks_max_age,
            min_refetch_interval=config.jwks_min_refetch_interval,
            timeout=config.dependency_timeout,
        )

    def _build_authenticators(self) -> list[Authenticator]:
        config = self.config
        built: list[Authenticator] = []
        for method in config.methods:
            if method is AuthMethod.JWT:
                self.verifier = AccessTokenVerifier(
                    self._key_source(),
                    issuer=config.issuer,
                    audience=config.audience,
                    algorithms=config.algorithms,
                    clock=self.clock,
                    revocations=self.revocations,
                    cache=self.token_cache,
                )
                built.append(BearerTokenAuthenticator(self.verifier))
            elif method is AuthMethod.SHARED_SESSION:
                assert self.redis is not None
                assert self.revocations is not None
                assert config.session_hash_key is not None
                self.session_cache = CachedSessionStore(
                    RedisSessionStore(self.redis, self.clock),
                    self.revocations,
                    self.clock,
                    ttl=config.cache_ttl,
                    max_entries=config.cache_max_entries,
                )
                self.shared_sessions = SessionManager(
                    self.session_cache,
                    hash_key=config.session_hash_key,
                    policy=config.session_policy,
                    clock=self.clock,
                    revocations=self.revocations,
                )
                built.append(
                    SessionCookieAuthenticator(
                        self.shared_sessions,
                        cookie_name=self.session_cookie,
                        method=AuthMethod.SHARED_SESSION,
                    )
                )
            elif method is AuthMethod.LOCAL_SESSION:
                assert config.local_sessions is not None
                built.append(
                    SessionCookieAuthenticator(
                        config.local_sessions,
                        cookie_name=self.local_session_cookie,
                        method=AuthMethod.LOCAL_SESSION,
                    )
                )
            elif method is AuthMethod.FORWARD:
                assert config.forward_secret is not None
                built.append(
                    ForwardedIdentityAuthenticator(
                        secret=config.forward_secret, trusted_proxies=config.trusted_proxies
                    )
                )
        return built

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in self.config.public_paths:
            principal = await self.authentication.identify(request)
            if principal is not None:
                set_principal(request, principal)
        return await handler(request)

    async def ping(self) -> None:
        """Raise when Redis (if used) cannot be reached."""
        if self.redis is not None:
            await self.redis.ping()


TESSERA_VERIFY = web.AppKey("tessera_verify", TesseraVerify)


def tessera_verify(app: web.Application) -> TesseraVerify:
    return app[TESSERA_VERIFY]


__all__ = [
    "LOCAL_SESSION_COOKIE",
    "TESSERA_VERIFY",
    "TesseraVerify",
    "VerifyConfig",
    "tessera_verify",
]
