"""A session store layered on a real one: the verifiers' cache of loaded sessions."""

from __future__ import annotations

from .clock import Clock
from .revocation import RevocationEvent, RevocationKind
from .revocation_cache import RevocationCache
from .session_store import SessionRecord, SessionStore, StoredSession
from .ttl_cache import TTLCache


class CachedSessionStore:
    """Remembers loaded sessions for ``ttl`` seconds, only while the revocation copy is fresh.

    A deleted session is announced on the feed (the auth service's
    ``tessera_auth.announcing_sessions.AnnouncingSessionStore``)
    and dropped here at once; while the copy is not fresh the cache is bypassed,
    and it is emptied whenever the copy is reloaded.
    """

    def __init__(
        self,
        inner: SessionStore,
        revocations: RevocationCache,
        clock: Clock,
        *,
        ttl: float = 30.0,
        max_entries: int = 10_000,
    ) -> None:
        self._inner = inner
        self._revocations = revocations
        self._clock = clock
        self._ttl = ttl
        self.cache: TTLCache[str, StoredSession] = TTLCache(max_entries)
        revocations.add_listener(self._on_revocation)

    def _on_revocation(self, event: RevocationEvent | None) -> None:
        if event is None:
            self.cache.clear()
        elif event.kind is RevocationKind.SESSION:
            self.cache.evict(event.value)
        elif event.kind is RevocationKind.USER:
            self.cache.evict_where(lambda _, stored: stored.record.user_id == event.value)

    def _remember(self, key: str, stored: StoredSession) -> None:
        if self._revocations.fresh:
            # Never served past the moment this copy would die: another replica
            # may have refreshed the session since, and only Redis knows.
            self.cache.put(key, stored, min(self._clock.now() + self._ttl, stored.dies_at))

    async def save(self, key: str, record: SessionRecord, dies_at: float) -> None:
        await self._inner.save(key, record, dies_at)
        self._remember(key, StoredSession(record, dies_at))

    async def touch(self, key: str, dies_at: float) -> bool:
        cached = self.cache.get(key, self._clock.now())
        self.cache.evict(key)
        if not await self._inner.touch(key, dies_at):
            return False
        if cached is not None:
            self._remember(key, StoredSession(cached.record, dies_at))
        return True

    async def load(self, key: str) -> StoredSession | None:
        if self._revocations.fresh:
            cached = self.cache.get(key, self._clock.now())
            if cached is not None:
                return cached
        stored = await self._inner.load(key)
        if stored is not None:
            self._remember(key, stored)
        return stored

    async def delete(self, key: str) -> bool:
        self.cache.evict(key)
        return await self._inner.delete(key)

    async def list_for_user(self, user_id: str) -> list[tuple[str, StoredSession]]:
        return await self._inner.list_for_user(user_id)

    async def ping(self) -> None:
        await self._inner.ping()
