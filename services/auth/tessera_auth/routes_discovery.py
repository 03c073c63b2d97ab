"""JWKS (RFC 7517) and authorization-server metadata (RFC 8414)."""

from __future__ import annotations

from aiohttp import web

from . import app_state

routes = web.RouteTableDef()

JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"


@routes.get(JWKS_PATH)
async def jwks(request: web.Request) -> web.Response:
    # A verifier that only refetches when its copy expires (not on an unknown kid) must
    # still see a new key before it signs: keep copies younger than the publish lead time.
    max_age = max(0, request.app[app_state.SETTINGS].key_publish_lead_time // 2)
    return web.json_response(
        request.app[app_state.KEYRING].jwks(),
        headers={"Cache-Control": f"public, max-age={max_age}"},
        content_type="application/jwk-set+json",
    )


@routes.get(METADATA_PATH)
async def metadata(request: web.Request) -> web.Response:
    """RFC 8414 members only, each one true of this server. Tessera's own endpoints
    (login, sessions, forward auth...) are described by its OpenAPI document, not here.

    No authorization endpoint, so no response types (the member is required) and no
    PKCE; no scopes. The token endpoint takes refresh tokens from public clients (no
    client authentication, so no signing algorithms for it either); introspection
    needs HTTP Basic (``TESSERA_INTROSPECTION_CLIENTS``); revocation takes it or none.
    """
    issuer = request.app[app_state.SETTINGS].issuer
    document = {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "token_endpoint": issuer + "/auth/token",
        "grant_types_supported": ["refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": [],
        "introspection_endpoint": issuer + "/auth/introspect",
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "revocation_endpoint": issuer + "/auth/revoke",
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
    }
    return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})
