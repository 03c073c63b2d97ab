"""One revocation plane for sessions and JWTs: every way a credential is taken back.

Every revocation is written to PostgreSQL first (durable before the caller
hears "done"), then to Redis and the feed, so resource replicas refuse the
credential within the feed's delivery time (milliseconds), without asking
anyone per request. Only then are the Redis records (sessions, refresh
families) deleted: if Redis brings one back (a restore, a lagging failover),
the plane still kills it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from tessera_verify.clock import Clock
from tessera_verify.revocation import MAX_LEEWAY, RevocationEvent, RevocationKind
from tessera_verify.sessions import Session, SessionManager

from .audit import AuditLog
from .metrics import AuthMetrics
from .refresh_tokens import Family, RefreshTokenStore
from .revocation_store import REDIS_ERRORS, RevocationStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevocationSummary:
    sessions: int = 0
    refresh_families: int = 0
    access_tokens_before: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "refresh_families": self.refresh_families,
            "access_tokens_issued_before": self.access_tokens_before,
        }


class Revoker:
    def __init__(
        self,
        *,
        sessions: SessionManager,
        refresh_tokens: RefreshTokenStore,
        store: RevocationStore,
        access_token_ttl: float,
        credential_lifetime: float,
        clock: Clock,
        metrics: AuthMetrics,
        audit: AuditLog,
    ) -> None:
        self._audit = audit
        self._sessions = sessions
        self._refresh = refresh_tokens
        self._store = store
        # The longest an access token is accepted: its lifetime plus any verifier's leeway.
        self._token_lifetime = access_token_ttl + MAX_LEEWAY
        # The longest any credential lives (a session, a refresh family, a token).
        self._credential_lifetime = max(credential_lifetime, self._token_lifetime)
        self._clock = clock
        self._metrics = metrics

    async def revoke_access_token(self, jti: str, expires_at: float) -> None:
        # Remembered past exp by the largest leeway any verifier may use.
        until = expires_at + MAX_LEEWAY
        await self._store.record(RevocationEvent(RevocationKind.TOKEN, jti, until, until))
        self._metrics.revocations.labels("access_token").inc()
        self._audit.record("revocation.access_token", jti=jti)

    async def revoke_session_link(self, session_link: str, *, lives_until: float = 0.0) -> None:
        """Every credential carrying this link dies now: access tokens, the session, the
        refresh family. Remembered as long as the longest of them could be presented."""
        until = max(self._clock.now() + self._token_lifetime, lives_until)
        await self._store.record(
            RevocationEvent(RevocationKind.SESSION_LINK, session_link, until, until)
        )

    async def revoke_family(self, family: Family, *, reason: str) -> None:
        """A refresh family and everything it stands for: its access tokens, its session."""
        await self.revoke_session_link(family.session_link, lives_until=family.expires_at)
        await self._refresh.revoke_family(family)
        if family.session_key:
            await self._sessions.destroy_by_key(family.session_key)
        self._metrics.revocations.labels("refresh_family").inc()
        self._audit.record(
            "revocation.refresh_family",
            user_id=family.user_id,
            family=family.family_id,
            reason=reason,
        )
        log.info(
            "revoked refresh family %s of user %s (%s)", family.family_id, family.user_id, reason
        )

    async def revoke_session(self, session: Session) -> None:
        """One session, the access tokens linked to it and the refresh families started with it."""
        link = session.record.public_id
        families = [
            family
            for family in await self._refresh.families_of(session.record.user_id)
            if family.session_link == link
        ]
        lives_until = max([session.record.expires_at, *(f.expires_at for f in families)])
        await self.revoke_session_link(link, lives_until=lives_until)
        await self._sessions.destroy_by_key(session.storage_key)
        for family in families:
            await self._refresh.revoke_family(family)
        self._metrics.revocations.labels("session").inc()
        self._audit.record(
            "revocation.session",
            user_id=session.record.user_id,
            username=session.record.username,
            session=session.record.public_id,
        )

    async def revoke_everything(self, user_id: str, *, reason: str) -> RevocationSummary:
        """Logout everywhere: sessions, refresh families, and every access token issued so far.

        The families are flagged before the revocation is dated. A refresh racing this
        one makes its pair, then finds its family flagged
        (:meth:`RefreshTokenStore.record_successor`) and kills the pair, or finds it
        standing, which means the date below comes after the pair and kills it here.
        """
        try:
            families: list[Family] | None = await self._revoke_families_of(user_id)
        except REDIS_ERRORS:
            # Redis unreachable: the record below still makes the revocation durable in
            # PostgreSQL (then answers 503, Redis being down).
            families = None
        before = await self._revoke_user_before_now(user_id)
        sessions = await self._sessions.destroy_all_for_user(user_id)
        if families is None:
            # Redis came back in between: flagged only now, so dated again after the
            # flags, and past the second of the first date: an access token issued
            # meanwhile was dated into the next whole second ("never born revoked").
            families = await self._revoke_families_of(user_id)
            before = await self._revoke_user_before_now(user_id, not_before=math.floor(before) + 1)
        self._metrics.revocations.labels("user").inc()
        self._audit.record(
            "revocation.user",
            user_id=user_id,
            reason=reason,
            sessions=sessions,
            refresh_families=len(families),
        )
        log.info(
            "revoked everything of user %s (%s): %d sessions, %d refresh families",
            user_id,
            reason,
            sessions,
            len(families),
        )
        return RevocationSummary(sessions, len(families), before)

    async def _revoke_user_before_now(self, user_id: str, *, not_before: float = 0.0) -> float:
        before = max(self._clock.now(), not_before)
        await self._store.record(
            RevocationEvent(
                RevocationKind.USER, user_id, before, before + self._credential_lifetime
            )
        )
        return before

    async def _revoke_families_of(self, user_id: str) -> list[Family]:
        families = await self._refresh.families_of(user_id)
        for family in families:
            await self._refresh.revoke_family(family)
        return families
