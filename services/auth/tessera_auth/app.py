"""The auth service's aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Histogram
from redis.asyncio import Redis

from tessera_platform.middleware import service_middleware
from tessera_platform.pg_migrations import open_database
from tessera_platform.service_errors import DEPENDENCY_ERRORS
from tessera_verify import redis_layout
from tessera_verify.access_tokens import AccessTokenClaims, AccessTokenVerifier
from tessera_verify.background import pause, reraise_if_cancelling
from tessera_verify.clock import Clock, SystemClock
from tessera_verify.dependency_metrics import instrumented_redis
from tessera_verify.revocation_cache import RevocationCache
from tessera_verify.session_cache import CachedSessionStore
from tessera_verify.session_store import RedisSessionStore
from tessera_verify.sessions import SessionManager, SessionPolicy
from tessera_verify.ttl_cache import TTLCache

from . import (
    app_state,
    db,
    openapi,
    routes_account,
    routes_discovery,
    routes_health,
    routes_oauth,
    routes_sessions,
    routes_token,
)
from .access_tokens import AccessTokenIssuer
from .accounts import Accounts
from .announcing_sessions import AnnouncingSessionStore
from .audit import AuditLog
from .authenticate import build_authentication, session_cookie_name
from .keyring import KeyRing
from .metrics import AuthMetrics
from .password_check import PasswordCheck
from .password_policy import PasswordPolicy
from .passwords import PasswordHasher
from .portal import routes as portal
from .portal.csrf import FormTokens
from .portal.return_url import ReturnUrlPolicy, origin_of
from .refresh_tokens import RefreshTokenStore, refresh_token_key
from .regulation import Regulator
from .revocation_store import RevocationStore
from .revoker import Revoker
from .settings import Settings
from .token_pairs import TokenPairs
from .users import UserRepository

log = logging.getLogger(__name__)


def create_redis(settings: Settings, latency: Histogram | None = None) -> Redis:
    return instrumented_redis(
        settings.redis_url, timeout=settings.process.dependency_timeout, latency=latency
    )


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    redis = create_redis(app[app_state.SETTINGS], app[app_state.METRICS].dependency_latency)
    app[app_state.REDIS] = redis
    yield
    await redis.aclose()


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    latency = app[app_state.METRICS].dependency_latency
    pool = await open_database(
        settings.database_url, settings.process, db.MIGRATOR, latency=latency
    )
    app[app_state.DB] = pool
    yield
    await pool.close()


async def _maintain_keys_forever(
    keyring: KeyRing, clock: Clock, interval: float, audit: AuditLog
) -> None:
    """Every ``interval`` s: run the key-rotation schedule, then reload the keys.

    Every replica runs this; the key ring's advisory lock makes one of them act
    on each step, and every one picks the result up on its reload.
    """
    while True:
        await pause(interval)
        try:
            for change in await keyring.run_schedule(now=clock.now()):
                audit.record("key.rotation", kid=change.kid, state=change.state, by="schedule")
        except DEPENDENCY_ERRORS as exc:
            reraise_if_cancelling(exc)
            log.warning("key maintenance failed, keeping the loaded keys: %r", exc)
        except Exception:
            # Never let one bad step stop the reloads for good.
            log.exception("key maintenance failed, keeping the loaded keys")


SESSION_COUNT_INTERVAL = 30.0


async def _count_sessions_forever(redis: Redis, metrics: AuthMetrics) -> None:
    """Keep ``tessera_sessions_live{store="redis"}`` current with a background SCAN
    (never on a request's path; its cost grows with the number of sessions)."""
    pattern = redis_layout.session("*")
    while True:
        try:
            count = 0
            async for _ in redis.scan_iter(match=pattern, count=1000):
                count += 1
            metrics.sessions_live.labels("redis").set(count)
        except DEPENDENCY_ERRORS as exc:
            reraise_if_cancelling(exc)
            log.warning("could not count sessions: %r", exc)
        except Exception:
            # Never let one bad count stop the counting for good.
            log.exception("could not count sessions")
        await pause(SESSION_COUNT_INTERVAL)


def _password_services(settings: Settings) -> tuple[PasswordHasher, PasswordPolicy]:
    """Blocking (a dummy hash, the blocklist read from disk): run in an executor."""
    hasher = PasswordHasher(settings.argon2, max_pending=settings.argon2_max_pending)
    return hasher, PasswordPolicy(min_length=settings.password_min_length)


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, clock = app[app_state.SETTINGS], app[app_state.CLOCK]
    redis, pool = app[app_state.REDIS], app[app_state.DB]

    hasher, password_policy = await asyncio.get_running_loop().run_in_executor(
        None, _password_services, settings
    )
    keyring = KeyRing(pool, settings)
    await keyring.load(now=clock.now())
    revocations = RevocationCache(
        redis, clock, max_staleness=settings.caches.revocation_max_staleness
    )
    store = RevocationStore(
        pool, redis, clock, local=revocations, wait_replicas=settings.redis_wait_replicas
    )
    app[app_state.KEYRING] = keyring
    app[app_state.REVOCATION_STORE] = store
    app[app_state.REVOCATIONS] = revocations
    app[app_state.ACCOUNTS] = Accounts(UserRepository(pool), hasher, clock, password_policy)
    policy = SessionPolicy(
        idle_timeout=settings.session_idle_timeout,
        absolute_timeout=settings.session_absolute_timeout,
        touch_interval=settings.session_touch_interval,
    )
    sessions_cache = CachedSessionStore(
        AnnouncingSessionStore(RedisSessionStore(redis, clock), store),
        revocations,
        clock,
        ttl=settings.caches.ttl,
        max_entries=settings.caches.max_entries,
    )
    sessions = SessionManager(
        sessions_cache,
        hash_key=settings.session_hash_key,
        policy=policy,
        clock=clock,
        revocations=revocations,
    )
    app[app_state.SESSIONS] = sessions
    token_cache: TTLCache[str, AccessTokenClaims] = TTLCache(settings.caches.max_entries)
    app[app_state.ISSUER] = AccessTokenIssuer(
        keyring,
        issuer=settings.issuer,
        audience=settings.audience,
        client_id=settings.client_id,
        ttl=settings.access_token_ttl,
        clock=clock,
    )
    verifier = AccessTokenVerifier(
        keyring.verification_keys,
        issuer=settings.issuer,
        audience=settings.audience,
        algorithms=[settings.jwt_algorithm],
        clock=clock,
        revocations=revocations,
        cache=token_cache,
    )
    app[app_state.VERIFIER] = verifier
    app[app_state.AUTHENTICATION] = build_authentication(
        verifier,
        sessions,
        cookie_name=session_cookie_name(app),
        metrics=app[app_state.METRICS],
    )
    refresh_tokens = RefreshTokenStore(
        redis,
        hash_key=refresh_token_key(settings.key_encryption_key),
        ttl=settings.refresh_token_ttl,
        clock=clock,
        grace=settings.refresh_grace,
    )
    app[app_state.REFRESH_TOKENS] = refresh_tokens
    app[app_state.TOKEN_PAIRS] = TokenPairs(
        revocations, app[app_state.ISSUER], refresh_tokens, app[app_state.METRICS]
    )
    regulator = Regulator(redis, clock, settings.regulation)
    app[app_state.REGULATOR] = regulator
    audit = AuditLog(pool, clock, app[app_state.METRICS])
    app[app_state.AUDIT] = audit
    app[app_state.PASSWORD_CHECK] = PasswordCheck(
        regulator, app[app_state.ACCOUNTS], app[app_state.METRICS], audit
    )
    app[app_state.REVOKER] = Revoker(
        sessions=sessions,
        refresh_tokens=refresh_tokens,
        store=store,
        access_token_ttl=settings.access_token_ttl,
        credential_lifetime=max(settings.session_absolute_timeout, settings.refresh_token_ttl),
        clock=clock,
        metrics=app[app_state.METRICS],
        audit=audit,
    )
    metrics = app[app_state.METRICS]
    session_cache = sessions_cache.cache
    metrics.watch_cache("verified_tokens", lambda: (token_cache.hits, token_cache.misses))
    metrics.watch_cache("sessions", lambda: (session_cache.hits, session_cache.misses))
    metrics.watch_revocations(revocations)
    try:
        if await store.needs_rebuild():
            await store.rebuild()
    except DEPENDENCY_ERRORS as exc:
        log.warning("revocation plane not checked at start (%r): the watch will", exc)
    watch = asyncio.create_task(store.watch())
    feed = asyncio.create_task(revocations.run())
    await revocations.wait_fresh(settings.process.dependency_timeout)
    reloader = asyncio.create_task(
        _maintain_keys_forever(keyring, clock, settings.key_reload_interval, audit)
    )
    counter = asyncio.create_task(_count_sessions_forever(redis, metrics))
    auditor = asyncio.create_task(audit.run())
    yield
    for task in (reloader, feed, watch, counter, auditor):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        await audit.flush()
    except Exception as exc:  # shutting down: report, never raise
        log.warning("%d audit events not written at shutdown: %r", audit.pending, exc)
    hasher.close()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def create_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    """The auth application; nothing connects until it starts."""
    metrics = AuthMetrics()
    app = web.Application(
        client_max_size=settings.process.max_body_bytes,
        middlewares=[service_middleware(metrics)],
    )
    app[app_state.SETTINGS] = settings
    app[app_state.CLOCK] = clock or SystemClock()
    app[app_state.METRICS] = metrics
    app[app_state.FORM_TOKENS] = FormTokens.from_key_encryption_key(settings.key_encryption_key)
    app[app_state.RETURN_URLS] = ReturnUrlPolicy.of(
        (origin_of(settings.issuer), *settings.portal_allowed_origins),
        allow_http=settings.development,
    )
    app.cleanup_ctx.extend([_redis_ctx, _db_ctx, _services_ctx])
    app.on_response_prepare.append(_security_headers)
    for table in (
        routes_account.routes,
        routes_token.routes,
        routes_sessions.routes,
        routes_oauth.routes,
        routes_discovery.routes,
        routes_health.routes,
        portal.routes,
        openapi.routes(),
    ):
        app.add_routes(table)
    if settings.cookie_insecure:
        log.warning(
            "!!! INSECURE COOKIES: session cookies are sent without Secure and without the "
            "__Host- prefix. Only for plain-HTTP development on loopback. Never in production."
        )
    return app
