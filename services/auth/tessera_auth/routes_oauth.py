"""Token introspection (RFC 7662) and revocation (RFC 7009), for JWTs, sessions and refresh tokens.

Introspection tells other services whether a credential is live and whose it
is; it requires client authentication (HTTP Basic with a client configured in
``TESSERA_INTROSPECTION_CLIENTS``), so it is not an oracle for anyone holding
a stolen token. Revocation accepts public clients too: whoever holds a token
may give it up.

These endpoints and the token endpoint answer errors in RFC 6749 §5.2's shape
(``error``, ``error_description``), not as problem details: :func:`oauth_endpoint`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler

from tessera_platform.jsonbody import get_str, read_body, require_str
from tessera_platform.service_errors import DEPENDENCY_ERRORS
from tessera_verify.error_middleware import error_middleware_for, oauth_error_response
from tessera_verify.errors import AuthenticationError, InvalidTokenError

from . import app_state
from .settings import Settings
from .token_pairs import grant_is_revoked

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: RFC 7009 §2.1 and RFC 7662 §2.1: what a revocation or introspection request carries.
TOKEN_FIELDS = ("token", "token_type_hint")

_oauth_errors = error_middleware_for(DEPENDENCY_ERRORS, render=oauth_error_response)


def oauth_endpoint(handler: Handler) -> Handler:
    """Answer ``handler``'s errors in RFC 6749 §5.2's shape: the app's error middleware,
    run around this handler alone with OAuth's renderer, so nothing it raises (an
    outage and a bug included) reaches the app's problem-details middleware."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return await _oauth_errors(request, handler)

    return answer


class InvalidClient(AuthenticationError):
    code = "invalid_client"
    default_message = "client authentication failed"

    def www_authenticate(self) -> str | None:
        return 'Basic realm="tessera"'


def _authenticated_client(request: web.Request, settings: Settings) -> str | None:
    """The client ID from HTTP Basic credentials, None when none were sent."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient() from None
    client_id, sep, secret = decoded.partition(":")
    client_id, secret = unquote(client_id), unquote(secret)  # RFC 6749 §2.3.1 form-encodes
    matched = False
    for known_id, known_secret in settings.introspection_clients:
        # Compare against every client, so timing does not tell which IDs exist.
        same = hmac.compare_digest(known_id.encode(), client_id.encode()) & hmac.compare_digest(
            known_secret, secret.encode()
        )
        matched |= same
    if not sep or not matched:
        raise InvalidClient()
    return client_id


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


async def _introspect(app: web.Application, token: str, hint: str | None) -> dict[str, Any]:
    settings = app[app_state.SETTINGS]
    if _looks_like_jwt(token):
        try:
            claims = await app[app_state.VERIFIER].verify(token)
        except InvalidTokenError:
            return {"active": False}
        return {
            "active": True,
            "token_type": "access_token",
            "sub": claims.subject,
            "client_id": claims.client_id,
            "iss": settings.issuer,
            "aud": settings.audience,
            "exp": int(claims.expires_at),
            "iat": int(claims.issued_at),
            "jti": claims.token_id,
            "sid": claims.session_link,
        }
    order = (
        ["refresh_token", "session"] if hint == "refresh_token" else ["session", "refresh_token"]
    )
    for kind in order:
        if kind == "session":
            session = await app[app_state.SESSIONS].load(token)
            if session is not None:
                record = session.record
                return {
                    "active": True,
                    "token_type": "session",
                    "sub": record.user_id,
                    "username": record.username,
                    "iss": settings.issuer,
                    "iat": int(record.created_at),
                    "exp": int(record.expires_at),
                    "sid": record.public_id,
                }
        else:
            grant = await app[app_state.REFRESH_TOKENS].live_grant(token)
            if grant is not None and not await grant_is_revoked(app[app_state.REVOCATIONS], grant):
                return {
                    "active": True,
                    "token_type": "refresh_token",
                    "sub": grant.user_id,
                    "iss": settings.issuer,
                    "iat": int(grant.issued_at),
                    "exp": int(grant.expires_at),
                    "sid": grant.session_link,
                }
    return {"active": False}


@routes.post("/auth/introspect")
@oauth_endpoint
async def introspect(request: web.Request) -> web.Response:
    app = request.app
    if _authenticated_client(request, app[app_state.SETTINGS]) is None:
        raise InvalidClient("introspection requires client authentication (HTTP Basic)")
    body = await read_body(request, fields=TOKEN_FIELDS, allow_form=True)
    token = require_str(body, "token", max_length=8192)
    hint = get_str(body, "token_type_hint", required=False, max_length=32)
    return web.json_response(await _introspect(app, token, hint), headers=NO_STORE)


@routes.post("/auth/revoke")
@oauth_endpoint
async def revoke(request: web.Request) -> web.Response:
    """RFC 7009: 200 whether or not the token was valid (nothing to learn from the answer).
    Every kind of token is revoked here, so ``unsupported_token_type`` never applies,
    and ``token_type_hint`` is not needed to find one (§2.1 lets it be ignored)."""
    app = request.app
    _authenticated_client(request, app[app_state.SETTINGS])  # optional, but must be right if sent
    body = await read_body(request, fields=TOKEN_FIELDS, allow_form=True)
    token = require_str(body, "token", max_length=8192)
    revoker = app[app_state.REVOKER]
    if _looks_like_jwt(token):
        try:
            claims = await app[app_state.VERIFIER].verify(token)
        except InvalidTokenError:
            claims = None
        if claims is not None:
            await revoker.revoke_access_token(claims.token_id, claims.expires_at)
        return web.json_response({}, headers=NO_STORE)
    family = await app[app_state.REFRESH_TOKENS].family_of(token)
    if family is not None:
        await revoker.revoke_family(family, reason="revocation endpoint")
        return web.json_response({}, headers=NO_STORE)
    session = await app[app_state.SESSIONS].load(token)
    if session is not None:
        await revoker.revoke_session(session)
    return web.json_response({}, headers=NO_STORE)
