"""Server-side sessions: IDs, keyed hashing, idle and absolute timeouts (OWASP).

The session ID is 256 bits from :mod:`secrets` and exists only in the client's
cookie. Stores see ``HMAC-SHA256(key, id)``, so a leaked Redis dump does not
hand out live cookies, and a guessed storage key cannot be replayed as a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from .clock import Clock
from .session_store import SessionRecord, SessionStore, StoredSession

SESSION_COOKIE = "__Host-tessera_session"
#: Only for plain-HTTP loopback development, where browsers refuse ``__Host-`` cookies.
INSECURE_SESSION_COOKIE = "tessera_session"

SESSION_ID_BYTES = 32  # 256 bits
#: Stores keep a session's time of death in whole milliseconds (Redis ``PEXPIREAT``), so
#: a death read back may lie up to this much past the exact one written.
STORE_TIME_RESOLUTION = 0.001


def session_cookie_name(*, insecure: bool) -> str:
    """The shared session's cookie: ``__Host-`` unless on plain-HTTP loopback development."""
    return INSECURE_SESSION_COOKIE if insecure else SESSION_COOKIE


_SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")


def set_session_cookie(
    response: web.StreamResponse, name: str, session_id: str, *, secure: bool
) -> None:
    """The session cookie as OWASP wants it: HttpOnly, Secure, SameSite=Lax, Path=/,
    no Domain (with the ``__Host-`` prefix browsers enforce that), no expiry."""
    response.set_cookie(name, session_id, path="/", secure=secure, httponly=True, samesite="Lax")


def clear_session_cookie(response: web.StreamResponse, name: str, *, secure: bool) -> None:
    response.del_cookie(name, path="/", secure=secure, httponly=True, samesite="Lax")


@dataclass(frozen=True)
class SessionPolicy:
    """Timeouts in seconds.

    The last-seen time is written at most once per ``touch_interval``, so the
    idle refresh costs one Redis write per interval, not one per request; in
    exchange a session may idle out up to ``touch_interval`` early.
    """

    idle_timeout: float = 1800.0
    absolute_timeout: float = 12 * 3600.0
    touch_interval: float | None = None

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0 or self.absolute_timeout <= 0:
            raise ValueError("session timeouts must be positive")

    @property
    def effective_touch_interval(self) -> float:
        if self.touch_interval is not None:
            return self.touch_interval
        return min(60.0, self.idle_timeout / 10)


@dataclass(frozen=True)
class Session:
    """A live session as a request sees it."""

    storage_key: str
    record: SessionRecord


class SessionRevocations(Protocol):
    """The revocation plane as sessions see it (a
    :class:`~tessera_verify.revocation_cache.RevocationCache`)."""

    async def is_session_revoked(self, record: SessionRecord) -> bool: ...


class SessionManager:
    """Creates, loads (with timeout and revocation checks) and destroys sessions in any store.

    A session is dead when its record is gone *or* the revocation plane says so
    (its link revoked, or its user's "valid after" time is later than its
    creation): a record that comes back (a Redis restored from a lagging
    replica or an old AOF) stays dead.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        hash_key: bytes,
        policy: SessionPolicy,
        clock: Clock,
        revocations: SessionRevocations | None = None,
    ) -> None:
        if len(hash_key) < 32:
            raise ValueError("the session hash key must be at least 32 bytes")
        self.store = store
        self._hash_key = hash_key
        self.policy = policy
        self._clock = clock
        #: The plane sessions are checked against; None checks nothing (set once, before
        #: the first load, where the plane starts after the manager).
        self.revocations = revocations

    def storage_key(self, session_id: str) -> str:
        return hmac.digest(self._hash_key, session_id.encode(), hashlib.sha256).hex()

    async def create(
        self,
        *,
        user_id: str,
        username: str,
        ip: str,
        user_agent: str,
        authenticated_at: float | None = None,
    ) -> tuple[str, Session]:
        """A new session; returns the ID for the cookie and the stored session.

        ``authenticated_at``: when the password it stands on was checked, if that was
        elsewhere (a replica asks the auth service), on the clock of whoever checked
        it, which is the clock revocations are dated by. The session is dated from
        then, so a revocation of the user's credentials made after the check (a
        password change that committed meanwhile) ends it too, and one made before
        does not, whatever this process's clock says.
        """
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self._clock.now()
        created_at = now if authenticated_at is None else authenticated_at
        record = SessionRecord(
            user_id=user_id,
            username=username,
            public_id=secrets.token_urlsafe(12),
            created_at=created_at,
            last_seen_at=now,
            expires_at=now + self.policy.absolute_timeout,
            ip=ip,
            user_agent=user_agent[:256],
        )
        key = self.storage_key(session_id)
        await self.store.save(key, record, self._dies_at(record, now))
        return session_id, Session(key, record)

    async def load(self, session_id: str) -> Session | None:
        """The live session for a cookie value, or None; refreshes the idle timer."""
        if not _SESSION_ID_PATTERN.match(session_id):
            return None
        key = self.storage_key(session_id)
        return await self.load_by_key(key)

    async def load_by_key(self, key: str) -> Session | None:
        stored = await self.store.load(key)
        if stored is None:
            return None
        now = self._clock.now()
        record = self._as_seen(stored)
        if now >= record.expires_at or now >= stored.dies_at:
            return None  # the store forgets it by itself; a verifier never deletes
        if self.revocations is not None and await self.revocations.is_session_revoked(record):
            return None
        if (
            now - record.last_seen_at >= self.policy.effective_touch_interval
            and stored.dies_at < record.expires_at
        ):
            if not await self.store.touch(key, self._dies_at(record, now)):
                return None  # deleted (revoked) since we read it
            record = record.seen_at(now)
        return Session(key, record)

    async def destroy(self, session_id: str) -> bool:
        if not _SESSION_ID_PATTERN.match(session_id):
            return False
        return await self.store.delete(self.storage_key(session_id))

    async def destroy_by_key(self, key: str) -> bool:
        return await self.store.delete(key)

    async def list_for_user(self, user_id: str) -> list[Session]:
        now = self._clock.now()
        return [
            Session(key, self._as_seen(stored))
            for key, stored in await self.store.list_for_user(user_id)
            if now < stored.record.expires_at and now < stored.dies_at
        ]

    async def destroy_all_for_user(self, user_id: str) -> int:
        count = 0
        for key, _ in await self.store.list_for_user(user_id):
            count += await self.store.delete(key)
        return count

    def _dies_at(self, record: SessionRecord, now: float) -> float:
        """When a session seen ``now`` idles out unless seen again: one idle timeout
        later, never past its absolute timeout."""
        return min(now + self.policy.idle_timeout, record.expires_at)

    def _as_seen(self, stored: StoredSession) -> SessionRecord:
        """The record with its last-seen time, which lives in the store's time of death.

        A touch moves the death to ``last seen + idle timeout`` without rewriting
        the record, so the time is read back from there. While the absolute
        timeout caps the death, this is a lower bound, which only makes the
        session look idle sooner.
        """
        seen = stored.dies_at - self.policy.idle_timeout
        if seen <= stored.record.last_seen_at + STORE_TIME_RESOLUTION:
            return stored.record  # not touched since written (no copy on the hot path)
        return stored.record.seen_at(seen)
