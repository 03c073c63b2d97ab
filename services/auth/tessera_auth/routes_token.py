"""The token endpoint (RFC 6749 §5): the refresh-token grant."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from tessera_verify.errors import InvalidGrant, UnsupportedGrantType
from tessera_verify.jsonbody import read_body, require_str

from . import appkeys

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def token_response(
    app: web.Application,
    *,
    user_id: str,
    session_link: str,
    family_id: str | None = None,
    family_expires_at: float | None = None,
) -> dict[str, Any]:
    """A new access + refresh token pair, shaped like RFC 6749 §5.1."""
    access = app[appkeys.ISSUER].issue(subject=user_id, session_link=session_link)
    refresh, _ = await app[appkeys.REFRESH_TOKENS].issue(
        user_id=user_id,
        family_id=family_id or secrets.token_urlsafe(12),
        session_link=session_link,
        expires_at=family_expires_at,
    )
    metrics = app[appkeys.METRICS]
    metrics.tokens_issued.labels("access_token").inc()
    metrics.tokens_issued.labels("refresh_token").inc()
    return {
        "access_token": access.token,
        "token_type": "Bearer",
        "expires_in": access.expires_in,
        "refresh_token": refresh,
    }


@routes.post("/auth/token")
async def token(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[appkeys.METRICS]
    body = await read_body(request, allow_form=True)
    grant_type = require_str(body, "grant_type", max_length=64)
    if grant_type != "refresh_token":
        raise UnsupportedGrantType("only grant_type=refresh_token is supported here")
    refresh_tokens = app[appkeys.REFRESH_TOKENS]
    presented = require_str(body, "refresh_token", max_length=256)
    try:
        grant = await refresh_tokens.peek(presented)
        user = await app[appkeys.ACCOUNTS].users.by_id(grant.user_id)
        if user is None or user.disabled:
            raise InvalidGrant("the refresh token's user no longer exists or is disabled")
        # Spent only now, atomically: of two concurrent uses exactly one gets here.
        grant = await refresh_tokens.consume(presented)
    except InvalidGrant:
        metrics.refreshes.labels("invalid_grant").inc()
        raise
    payload = await token_response(
        app,
        user_id=grant.user_id,
        session_link=grant.session_link,
        family_id=grant.family_id,
        family_expires_at=grant.expires_at,
    )
    metrics.refreshes.labels("success").inc()
    return web.json_response(payload, headers=NO_STORE)
