"""Issuing an access + refresh token pair (the use case login and the token endpoint share),
and the revocation check of a refresh grant (the token and revocation endpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera_verify.revocation import Credential
from tessera_verify.revocation_cache import RevocationCache

from .access_tokens import AccessTokenIssuer
from .metrics import AuthMetrics
from .refresh_tokens import RefreshGrant, RefreshTokenStore


async def grant_is_revoked(revocations: RevocationCache, grant: RefreshGrant) -> bool:
    """Asked of the revocation plane, not only of the family's flag in Redis: a family
    that Redis brings back (a restore, a lagging failover) stays revoked."""
    credential = Credential(grant.user_id, grant.issued_at, grant.session_link)
    return await revocations.is_revoked(credential)


@dataclass(frozen=True)
class TokenPairs:
    revocations: RevocationCache
    issuer: AccessTokenIssuer
    refresh_tokens: RefreshTokenStore
    metrics: AuthMetrics

    async def issue(
        self,
        *,
        user_id: str,
        session_link: str,
        session_key: str | None = None,
        rotated: tuple[str, RefreshGrant] | None = None,
    ) -> dict[str, Any]:
        """A new pair, shaped like RFC 6749 §5.1.

        Without ``rotated`` this starts a refresh family (a login); with it (the token
        and grant a fresh claim made current), the pair continues that family. The
        access token is dated after the user's "valid after" time, so it is never born
        revoked.
        """
        valid_after = await self.revocations.user_valid_after(user_id)
        access = self.issuer.issue(
            subject=user_id, session_link=session_link, valid_after=valid_after
        )
        if rotated is None:
            refresh, _ = await self.refresh_tokens.start_family(
                user_id=user_id, session_link=session_link, session_key=session_key
            )
        else:
            refresh, _ = rotated
        self.metrics.tokens_issued.labels("access_token").inc()
        self.metrics.tokens_issued.labels("refresh_token").inc()
        return {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": access.expires_in,
            "refresh_token": refresh,
        }
