"""A verifier's local copy of the revocation plane, fed by Redis pub/sub and *proven* current.

While the copy is fresh, a check is a few dict look-ups: no network round-trip.
Fresh means: a probe that started at most ``max_staleness`` seconds ago proved
the copy complete. A probe reads the plane's generation and change number
(``seq``) on an ordinary connection, then sends ``PING`` on the subscription
itself. Redis answers a subscriber in order, so when the ``PONG`` arrives every
change numbered up to that ``seq`` has been delivered before it: if one is
missing (a feed that dropped bytes), or the generation changed (Redis lost its
state and was rebuilt), the copy is reloaded. No ``PONG`` within the probe
timeout (a half-open connection, a paused Redis) and the subscription is torn
down and made again. Silence is never taken for "nothing happened": it ends
the trust after ``max_staleness``; a known failure (an error, a gap, a new
generation) ends it at once.

When the copy is not fresh, each check asks Redis directly, and Redis answers
only while its copy is complete (the generation marker); otherwise, or when
Redis cannot be reached, the check fails with 503. ``max_staleness`` 0 means
the local copy is never trusted: every check goes to Redis.

The copy only grows: a reload adds what it finds and forgets nothing that has
not expired, so a snapshot read from a replica that lags behind (a failover)
cannot take back a revocation this process already knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from .background import pause, reraise_if_cancelling, stop_if_cancelling
from .clock import Clock
from .revocation import (
    CHANNEL,
    Credential,
    FeedMessage,
    RevocationEvent,
    RevocationKind,
    RevocationReader,
    is_revoked_by,
)

if TYPE_CHECKING:
    from .access_tokens import AccessTokenClaims
    from .session_store import SessionRecord

log = logging.getLogger(__name__)

#: What a feed meets when Redis or the way to it fails: logged in a line, not in full.
_KNOWN_FAILURES = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
    TimeoutError,
)

#: The default staleness bound S, in seconds (README, "Revocation invariants").
DEFAULT_MAX_STALENESS = 5.0

Listener = Callable[[RevocationEvent | None], None]
"""Told of every event; ``None`` means "forget everything cached" (the copy was reloaded)."""


class _Resync(Exception):
    """The copy must be reloaded: a gap in the feed, or a new generation."""


class RevocationCache:
    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        probe_interval: float | None = None,
        probe_timeout: float = 2.0,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 1.0,
    ) -> None:
        if max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self._redis = redis
        self._clock = clock
        self.reader = RevocationReader(redis)
        self.max_staleness = max_staleness
        self.probe_interval = probe_interval or min(1.0, max(max_staleness / 3, 0.1))
        self.probe_timeout = probe_timeout
        self._jti: dict[str, float] = {}
        self._sid: dict[str, float] = {}
        self._valid_after: dict[str, tuple[float, float]] = {}  # user -> (valid after, until)
        self._listeners: list[Listener] = []
        self.generation: str | None = None
        self.seq = 0
        self.confirmed_at: float | None = None
        self._confirmed = asyncio.Event()
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self.local_checks = 0
        self.fallback_checks = 0
        self.events_applied = 0
        self.resyncs = 0

    # --- freshness --------------------------------------------------------------------

    @property
    def fresh(self) -> bool:
        """The local copy was proven complete at most ``max_staleness`` seconds ago."""
        confirmed = self.confirmed_at
        return (
            self.max_staleness > 0
            and confirmed is not None
            and self._clock.now() - confirmed <= self.max_staleness
        )

    @property
    def staleness(self) -> float | None:
        """Seconds since the copy was last proven complete (None: never)."""
        return None if self.confirmed_at is None else self._clock.now() - self.confirmed_at

    async def wait_fresh(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._confirmed.wait(), timeout)
        return self.fresh

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- checks -----------------------------------------------------------------------

    async def is_revoked(self, credential: Credential) -> bool:
        now = self._clock.now()
        if not self.fresh:
            self.fallback_checks += 1
            return await self.reader.is_revoked(credential, now)
        self.local_checks += 1
        after = self._valid_after.get(credential.user_id)
        return is_revoked_by(
            credential,
            jti_revoked=credential.token_id is not None
            and self._jti.get(credential.token_id, 0.0) > now,
            sid_revoked=credential.session_link is not None
            and self._sid.get(credential.session_link, 0.0) > now,
            user_valid_after=None if after is None else after[0],
        )

    async def is_token_revoked(self, claims: AccessTokenClaims) -> bool:
        return await self.is_revoked(Credential.of_token(claims))

    async def is_session_revoked(self, record: SessionRecord) -> bool:
        return await self.is_revoked(Credential.of_session(record))

    async def user_valid_after(self, user_id: str) -> float | None:
        if not self.fresh:
            return await self.reader.user_valid_after(user_id)
        after = self._valid_after.get(user_id)
        return None if after is None else after[0]

    # --- the copy ---------------------------------------------------------------------

    def apply(self, event: RevocationEvent) -> None:
        if event.kind is RevocationKind.TOKEN:
            self._jti[event.value] = max(event.until, self._jti.get(event.value, 0.0))
        elif event.kind is RevocationKind.SESSION_LINK:
            self._sid[event.value] = max(event.until, self._sid.get(event.value, 0.0))
        elif event.kind is RevocationKind.USER:
            known = self._valid_after.get(event.value)
            if known is None or event.when > known[0]:
                self._valid_after[event.value] = (event.when, event.until)
        self.events_applied += 1
        for listener in self._listeners:
            listener(event)

    def _prune(self) -> None:
        now = self._clock.now()
        for table in (self._jti, self._sid):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
        for user in [u for u, (_, until) in self._valid_after.items() if until <= now]:
            del self._valid_after[user]

    def _unconfirm(self, reason: str, *, level: int = logging.WARNING) -> None:
        if self.confirmed_at is not None:
            log.log(level, "revocation feed unconfirmed (%s)", reason)
        self.confirmed_at = None
        self._confirmed.clear()

    def _confirm(self, at: float) -> None:
        self.confirmed_at = at
        self._confirmed.set()

    # --- following the feed -----------------------------------------------------------

    async def run(self) -> None:
        """Follow the feed forever (a background task): resubscribes and reloads as needed."""
        delay = self._reconnect_delay
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                # A clean stop (the process shutting down) is no trouble to warn about.
                self._unconfirm("stopped", level=logging.INFO)
                raise
            except _Resync as exc:
                # Something was missed: distrust the copy until it is reloaded.
                self._unconfirm(str(exc))
                self.resyncs += 1
                delay = self._reconnect_delay
                continue
            except Exception as exc:
                reraise_if_cancelling(exc)
                if not isinstance(exc, _KNOWN_FAILURES):
                    # One the client should have called a connection error (redis-py 8.1
                    # lets a connection closed under a write through as AttributeError
                    # or TypeError), or a bug: in full in the log. Either way the feed is
                    # followed again; one stopped for good would leave every credential
                    # refused until a restart.
                    log.exception("revocation feed failed")
                # A failure ends the trust at once; silence ends it after S.
                self._unconfirm(repr(exc))
            await pause(delay)
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _follow(self) -> None:
        # An ordinary command first: it connects a cluster client and refreshes its slot
        # map, so the subscription goes to the node that now owns the plane's slot (the
        # node whose scripts publish the feed, so messages and PONGs stay in order).
        await self.reader.marker()
        pubsub = self._redis.pubsub()
        try:
            # Subscribe first, then read the snapshot: a change made in between is in
            # one or the other (applying it twice is harmless).
            await pubsub.subscribe(CHANNEL)
            started = self._clock.now()
            snapshot = await self.reader.snapshot()
            if snapshot.generation is None:
                raise redis.exceptions.RedisError("revocation state lost; waiting for a rebuild")
            for listener in self._listeners:
                listener(None)
            for event in snapshot.events:
                self.apply(event)
            self.generation, self.seq = snapshot.generation, snapshot.seq
            self._confirm(started)
            log.info("revocation feed synced (%d live revocations)", len(snapshot.events))
            while True:
                stop_if_cancelling()
                await self._probe(pubsub)
                self._prune()
                await self._drain(pubsub, self.probe_interval)
        finally:
            # The copy stays (it only grows), but is trusted only until it goes stale.
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _probe(self, pubsub: PubSub) -> None:
        started = self._clock.now()
        token = secrets.token_hex(8)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation.
        async with asyncio.timeout(self.probe_timeout):
            generation, seq = await self.reader.marker()
            await pubsub.ping(token)
            while True:
                message = await pubsub.get_message(timeout=self.probe_timeout)
                if message is None:
                    continue
                if message.get("type") == "pong":
                    data = message.get("data")
                    if (data.decode() if isinstance(data, bytes) else data) == token:
                        break
                    continue
                self._handle(message)
        if generation != self.generation:
            raise _Resync(f"generation changed ({self.generation} -> {generation})")
        if seq > self.seq:
            raise _Resync(f"changes {self.seq + 1}..{seq} never arrived")
        self._confirm(started)

    async def _drain(self, pubsub: PubSub, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, object]) -> None:
        if message.get("type") != "message":
            return
        data = message.get("data")
        if not isinstance(data, bytes | str):
            return
        try:
            parsed = FeedMessage.parse(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed revocation message: %r", exc)
            return
        if parsed.generation != self.generation:
            raise _Resync(f"a message of generation {parsed.generation}")
        if parsed.seq > self.seq + 1:
            raise _Resync(f"changes {self.seq + 1}..{parsed.seq - 1} never arrived")
        self.seq = max(self.seq, parsed.seq)
        if parsed.event is not None:
            self.apply(parsed.event)
