"""The auth service's session store: every deletion is announced on the revocation feed,
so the verifiers' caches (:class:`tessera_verify.session_cache.CachedSessionStore`) forget
it at once. Writer-side, so it lives here, not in the verify package."""

from __future__ import annotations

from typing import Protocol

from tessera_verify.session_store import SessionRecord, SessionStore, StoredSession


class SessionAnnouncer(Protocol):
    """Who tells the revocation feed that a session is gone (the auth service's writer)."""

    async def announce_session_deleted(self, storage_key: str) -> None: ...


class AnnouncingSessionStore:
    """Publishes every deletion on the revocation feed, so replicas' caches forget it."""

    def __init__(self, inner: SessionStore, announcer: SessionAnnouncer) -> None:
        self._inner = inner
        self._announcer = announcer

    async def save(self, key: str, record: SessionRecord, dies_at: float) -> None:
        await self._inner.save(key, record, dies_at)

    async def touch(self, key: str, dies_at: float) -> bool:
        return await self._inner.touch(key, dies_at)

    async def load(self, key: str) -> StoredSession | None:
        return await self._inner.load(key)

    async def delete(self, key: str) -> bool:
        deleted = await self._inner.delete(key)
        if deleted:
            await self._announcer.announce_session_deleted(key)
        return deleted

    async def list_for_user(self, user_id: str) -> list[tuple[str, StoredSession]]:
        return await self._inner.list_for_user(user_id)

    async def ping(self) -> None:
        await self._inner.ping()
