"""A replica's local copy of the revocation plane, fed by Redis pub/sub.

While subscribed and caught up (``synced``), a token check is a few dict
look-ups: no network round-trip. Whenever the subscription is down, or not yet
caught up, checks go to Redis directly (:class:`~tessera_verify.revocation.Denylist`),
and if Redis is down too they fail (503): stale state is never trusted.

Order matters on (re)connect: subscribe first, then load the snapshot, so an
event published in between is seen by one or the other (both are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.exceptions
from redis.asyncio import Redis

from .clock import Clock
from .revocation import CHANNEL, Denylist, RevocationEvent, RevocationKind, token_is_revoked_by

if TYPE_CHECKING:
    from .access_tokens import AccessTokenClaims

log = logging.getLogger(__name__)

#: Access tokens are short-lived (minutes); a day is a generous upper bound.
MAX_TOKEN_LIFETIME = 24 * 3600.0

Listener = Callable[[RevocationEvent | None], None]
"""Told of every event; ``None`` means "forget everything" (the feed was interrupted)."""


class RevocationCache:
    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 2.0,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.denylist = Denylist(redis, clock)
        self._jti: dict[str, float] = {}
        self._sid: dict[str, float] = {}
        self._valid_after: dict[str, float] = {}  # user -> tokens issued up to then are dead
        self._listeners: list[Listener] = []
        self._synced = asyncio.Event()
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self.local_checks = 0
        self.fallback_checks = 0
        self.events_applied = 0

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout)
        return self.synced

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def is_token_revoked(self, claims: AccessTokenClaims) -> bool:
        if not self.synced:
            self.fallback_checks += 1
            return await self.denylist.is_token_revoked(claims)
        self.local_checks += 1
        now = self._clock.now()
        sid = claims.session_link
        valid_after = self._valid_after.get(claims.subject)
        return token_is_revoked_by(
            claims,
            jti_revoked=self._jti.get(claims.token_id, 0.0) > now,
            sid_revoked=sid is not None and self._sid.get(sid, 0.0) > now,
            user_valid_after=valid_after,
        )

    def apply(self, event: RevocationEvent) -> None:
        if event.kind is RevocationKind.TOKEN:
            self._jti[event.value] = max(event.when, self._jti.get(event.value, 0.0))
        elif event.kind is RevocationKind.SESSION_LINK:
            self._sid[event.value] = max(event.when, self._sid.get(event.value, 0.0))
        elif event.kind is RevocationKind.USER:
            self._valid_after[event.value] = max(
                event.when, self._valid_after.get(event.value, 0.0)
            )
        self.events_applied += 1
        for listener in self._listeners:
            listener(event)

    def _prune(self) -> None:
        now = self._clock.now()
        for table in (self._jti, self._sid):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
        # A valid-after time older than any access token's lifetime revokes nothing more.
        stale = [u for u, after in self._valid_after.items() if now - after > MAX_TOKEN_LIFETIME]
        for user in stale:
            del self._valid_after[user]

    def _unsync(self, reason: str) -> None:
        if self.synced:
            log.warning("revocation feed interrupted (%s): checking Redis directly", reason)
        self._synced.clear()
        for listener in self._listeners:
            listener(None)

    async def run(self) -> None:
        """Follow the feed forever (a background task); reconnects with backoff."""
        delay = self._reconnect_delay
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                self._synced.clear()
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                self._unsync(repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)
            if self.synced:  # pragma: no cover - _follow only returns by raising
                delay = self._reconnect_delay

    async def _follow(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            snapshot = await self.denylist.snapshot()
            self._jti.clear()
            self._sid.clear()
            self._valid_after.clear()
            for listener in self._listeners:
                listener(None)
            for event in snapshot:
                self.apply(event)
            self._synced.set()
            log.info("revocation feed synced (%d live revocations)", len(snapshot))
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    self._prune()
                    continue
                if message.get("type") != "message":
                    continue
                try:
                    event = RevocationEvent.from_json(message["data"])
                except (ValueError, KeyError) as exc:
                    log.warning("ignoring a malformed revocation event: %r", exc)
                    continue
                self.apply(event)
        finally:
            self._synced.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
