"""The token endpoint (RFC 6749 §5): the refresh-token grant, with rotation and reuse detection."""

from __future__ import annotations

from aiohttp import web

from tessera_platform.jsonbody import read_body, require_str
from tessera_verify.errors import InvalidGrant, UnsupportedGrantType

from . import app_state
from .routes_oauth import oauth_endpoint
from .token_pairs import grant_is_revoked

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@routes.post("/auth/token")
@oauth_endpoint
async def token(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[app_state.METRICS]
    body = await read_body(request, fields=("grant_type", "refresh_token"), allow_form=True)
    grant_type = require_str(body, "grant_type", max_length=64)
    if grant_type != "refresh_token":
        raise UnsupportedGrantType("only grant_type=refresh_token is supported here")
    refresh_tokens = app[app_state.REFRESH_TOKENS]
    presented = require_str(body, "refresh_token", max_length=256)
    try:
        # Everything that can refuse is checked before the token is spent, so a
        # refusal (or an outage) never burns a good token.
        grant = await refresh_tokens.peek(presented)
        user = await app[app_state.ACCOUNTS].users.by_id(grant.user_id)
        if user is None or user.disabled:
            raise InvalidGrant("the refresh token's user no longer exists or is disabled")
        if await grant_is_revoked(app[app_state.REVOCATIONS], grant):
            raise InvalidGrant("the refresh token has been revoked")
        claim = await refresh_tokens.claim(presented, grant)
    except InvalidGrant:
        metrics.refreshes.labels("invalid_grant").inc()
        raise
    if claim.outcome == "reuse":
        family = await refresh_tokens.family(grant.family_id)
        if family is not None:
            await app[app_state.REVOKER].revoke_family(family, reason="refresh token reuse")
        metrics.refreshes.labels("reuse_detected").inc()
        app[app_state.AUDIT].record(
            "refresh.reuse", outcome="failure", user_id=grant.user_id, family=grant.family_id
        )
        raise InvalidGrant("refresh token reuse detected: this login has been revoked")
    if claim.outcome == "grace":
        assert claim.successor is not None
        metrics.refreshes.labels("concurrent").inc()
        return web.json_response(claim.successor, headers=NO_STORE)
    assert claim.rotated is not None  # a fresh claim made the family's next token current
    payload = await app[app_state.TOKEN_PAIRS].issue(
        user_id=grant.user_id, session_link=grant.session_link, rotated=claim.rotated
    )
    if not await refresh_tokens.record_successor(presented, grant, payload):
        # Revoked while this pair was made, perhaps dated before it: nobody gets it.
        await app[app_state.REVOKER].revoke_session_link(
            grant.session_link, lives_until=grant.expires_at
        )
        metrics.refreshes.labels("invalid_grant").inc()
        raise InvalidGrant("the refresh token has been revoked")
    metrics.refreshes.labels("success").inc()
    return web.json_response(payload, headers=NO_STORE)
