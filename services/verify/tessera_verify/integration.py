"""Validate tessera credentials in any aiohttp service, in three lines::

    from tessera_verify.integration import JwtConfig, TesseraVerify, VerifyConfig
    app = web.Application()
    config = VerifyConfig(issuer=..., audience=..., methods=(JwtConfig(jwks_url=...),),
                          redis_url=...)
    TesseraVerify(config).install(app)

Handlers then call :func:`tessera_verify.principal.get_principal` (401 when
the caller is anonymous). Connections open and close with the app
(``cleanup_ctx``); nothing happens at import time.

Refusals are answered by the middleware itself, as RFC 9457 problem details:
401 for a missing or bad credential (also when a handler's ``get_principal``
finds none), 403 for a handler's :class:`~tessera_verify.errors.Forbidden`, 400
for a credential cookie sent twice, 503 when Redis or the JWKS endpoint cannot
be reached (fail closed). An app needs no error middleware of its own for
them, and one it has (the tessera services') never sees them: nothing is
answered twice. Everything else a handler raises is left to the app.

:class:`TesseraVerify` is not tied to aiohttp beyond :meth:`TesseraVerify.install`:
:mod:`tessera_verify.asgi` serves ASGI apps (Starlette, FastAPI) with the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

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
from .clock import Clock, SystemClock
from .dependency_metrics import instrumented_redis
from .error_middleware import DEPENDENCY_ERRORS, error_response
from .errors import AuthenticationError, Forbidden, ServiceUnavailable, TesseraError
from .http_metrics import ServiceMetrics
from .principal import AuthMethod, Principal, set_principal
from .request_view import RequestView
from .revocation_cache import RevocationCache
from .session_cache import CachedSessionStore
from .session_store import MemorySessionStore, RedisSessionStore
from .sessions import SessionManager, session_cookie_name
from .ttl_cache import TTLCache
from .verification_keys import (
    JWKSCache,
    KeySource,
    StaticKeySource,
    VerificationKey,
    shared_secret_kid,
)
from .verify_config import (
    CacheConfig,
    ForwardConfig,
    JwtConfig,
    LocalSessionConfig,
    SharedSessionConfig,
    VerifyConfig,
)

log = logging.getLogger(__name__)

LOCAL_SESSION_COOKIE = "__Host-tessera_local_session"
INSECURE_LOCAL_SESSION_COOKIE = "tessera_local_session"

#: What a handler may raise about the caller that the middleware answers itself
#: (``get_principal``'s 401, an authorization check's 403).
HANDLER_REFUSALS = (AuthenticationError, Forbidden)


class TesseraVerify:
    """Owns the connections and authenticators; install() wires them into an aiohttp
    app, :class:`tessera_verify.asgi.TesseraMiddleware` into an ASGI app."""

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
        self.token_cache: TTLCache[str, AccessTokenClaims] = TTLCache(config.caches.max_entries)
        self.session_cache: CachedSessionStore | None = None
        #: In-process sessions (demonstration rows 1-3), when that method is on.
        self.local_sessions: SessionManager | None = None
        local = config.method(LocalSessionConfig)
        if local is not None:
            store = MemorySessionStore(self.clock)
            # They die with the process, so their key is the process's own: no other
            # process needs it, and it opens nothing anywhere else.
            self.local_sessions = SessionManager(
                store, hash_key=secrets.token_bytes(32), policy=local.policy, clock=self.clock
            )
            if metrics is not None:
                metrics.sessions_live.labels("memory").set_function(lambda: len(store))
        self.authentication = Authentication((), metrics)
        #: Whether the connections are open and the authenticators built (:meth:`running`).
        self.started = False

    def install(self, app: web.Application) -> None:
        """Open the connections with ``app`` and check every request's credential.

        The middleware answers its refusals itself (problem+json), whatever error
        middleware the app has or lacks; everything else passes through it."""
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
        async with self.running():
            yield

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open Redis, the HTTP client (JWKS) and the revocation feed, build the
        authenticators, and close it all when the block ends: aiohttp's ``cleanup_ctx``
        and the ASGI lifespan both run through here."""
        if self.started:
            raise RuntimeError("this TesseraVerify is already running")
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
                self.redis, self.clock, max_staleness=config.caches.revocation_max_staleness
            )
            feed = asyncio.create_task(self.revocations.run())
            if self.local_sessions is not None:
                # A password change, a disabled account or a logout everywhere ends the
                # sessions this process keeps as well (by their user's valid-after time).
                self.local_sessions.revocations = self.revocations
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
        self.started = True
        try:
            yield
        finally:
            self.started = False
            if feed is not None:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed
            await self.http.close()
            if self.redis is not None:
                await self.redis.aclose()

    def _key_source(self, jwt: JwtConfig) -> KeySource:
        if jwt.hs256_secret is not None:
            kid = shared_secret_kid(jwt.hs256_secret)
            return StaticKeySource([VerificationKey(kid, "HS256", jwt.hs256_secret)])
        assert jwt.jwks_url is not None  # JwtConfig holds exactly one of the two
        assert self.http is not None
        return JWKSCache(
            jwt.jwks_url,
            self.http,
            clock=self.clock,
            max_age=jwt.jwks_max_age,
            min_refetch_interval=jwt.jwks_min_refetch_interval,
            timeout=self.config.dependency_timeout,
        )

    def _build_authenticators(self) -> list[Authenticator]:
        """One authenticator per configured method, in the configured order. Called once
        the connections are open (``_lifetime``): Redis and the revocation copy exist
        whenever a method that needs them is configured (``VerifyConfig`` checks it)."""
        config = self.config
        built: list[Authenticator] = []
        for method in config.methods:
            if isinstance(method, JwtConfig):
                self.verifier = AccessTokenVerifier(
                    self._key_source(method),
                    issuer=config.issuer,
                    audience=config.audience,
                    algorithms=method.algorithms,
                    clock=self.clock,
                    revocations=self.revocations,
                    cache=self.token_cache,
                )
                built.append(BearerTokenAuthenticator(self.verifier))
            elif isinstance(method, SharedSessionConfig):
                assert self.redis is not None
                assert self.revocations is not None
                self.session_cache = CachedSessionStore(
                    RedisSessionStore(self.redis, self.clock),
                    self.revocations,
                    self.clock,
                    ttl=config.caches.ttl,
                    max_entries=config.caches.max_entries,
                )
                self.shared_sessions = SessionManager(
                    self.session_cache,
                    hash_key=method.hash_key,
                    policy=method.policy,
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
            elif isinstance(method, LocalSessionConfig):
                assert self.local_sessions is not None
                built.append(
                    SessionCookieAuthenticator(
                        self.local_sessions,
                        cookie_name=self.local_session_cookie,
                        method=AuthMethod.LOCAL_SESSION,
                    )
                )
            elif isinstance(method, ForwardConfig):
                built.append(
                    ForwardedIdentityAuthenticator(
                        secret=method.secret, trusted_proxies=config.trusted_proxies
                    )
                )
        return built

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in self.config.public_paths:
            try:
                principal = await self.identify(request)
            except TesseraError as error:
                return error_response(error)
            if principal is not None:
                set_principal(request, principal)
        try:
            return await handler(request)
        except HANDLER_REFUSALS as error:
            return error_response(error)

    async def identify(self, request: RequestView) -> Principal | None:
        """The caller, or None when the request carries no credential of an accepted kind.

        Raises a :class:`~tessera_verify.errors.TesseraError` to refuse: 401 for a bad
        credential, 400 for a credential cookie sent twice, and
        :class:`~tessera_verify.errors.ServiceUnavailable` (503) when Redis or the JWKS
        endpoint cannot be reached, never letting a connection error through as a 500.
        """
        try:
            return await self.authentication.identify(request)
        except DEPENDENCY_ERRORS as exc:
            log.warning("dependency unavailable while authenticating: %r", exc)
            raise ServiceUnavailable() from exc

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
    "CacheConfig",
    "ForwardConfig",
    "JwtConfig",
    "LocalSessionConfig",
    "SharedSessionConfig",
    "TesseraVerify",
    "VerifyConfig",
    "tessera_verify",
]
