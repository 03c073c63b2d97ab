"""One revocation plane for sessions and JWTs: every way a credential is taken back.

All of it lands in Redis and is published on the revocation feed, so resource
replicas refuse the credential within the feed's delivery time (milliseconds),
without asking anyone per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tessera_verify.clock import Clock
from tessera_verify.revocation import Denylist
from tessera_verify.sessions import Session, SessionManager

from .audit import AuditLog
from .metrics import AuthMetrics
from .refresh_tokens import Family, RefreshTokenStore

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
        denylist: Denylist,
        access_token_ttl: float,
        clock: Clock,
        metrics: AuthMetrics,
        audit: AuditLog,
        leeway: float = 5.0,
    ) -> None:
        self._audit = audit
        self._sessions = sessions
        self._refresh = refresh_tokens
        self._denylist = denylist
        # How long a revocation must be remembered: the longest an access token lives.
        self._token_lifetime = access_token_ttl + leeway
        self._clock = clock
        self._metrics = metrics

    async def revoke_access_token(self, jti: str, expires_at: float) -> None:
        await self._denylist.revoke(jti, expires_at)
        self._metrics.revocations.labels("access_token").inc()
        self._audit.record("revocation.access_token", jti=jti)

    async def revoke_session_link(self, session_link: str) -> None:
        """Every access token carrying this link dies now."""
        await self._denylist.revoke_session_link(
            session_link, self._clock.now() + self._token_lifetime
        )

    async def revoke_family(self, family: Family, *, reason: str) -> None:
        """A refresh family and everything it stands for: its access tokens, its session."""
        await self._refresh.revoke_family(family)
        await self.revoke_session_link(family.session_link)
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
        await self._sessions.destroy_by_key(session.storage_key)
        await self.revoke_session_link(session.record.public_id)
        for family in await self._refresh.families_of(session.record.user_id):
            if family.session_link == session.record.public_id:
                await self._refresh.revoke_family(family)
        self._metrics.revocations.labels("session").inc()
        self._audit.record(
            "revocation.session",
            user_id=session.record.user_id,
            username=session.record.username,
            session=session.record.public_id,
        )

    async def revoke_everything(self, user_id: str, *, reason: str) -> RevocationSummary:
        """Logout everywhere: sessions, refresh families, and every access token issued so far."""
        sessions = await self._sessions.destroy_all_for_user(user_id)
        families = await self._refresh.families_of(user_id)
        for family in families:
            await self._refresh.revoke_family(family)
        before = await self._denylist.revoke_user_tokens(user_id, self._token_lifetime)
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
