"""OpenAPI 3.1: the pieces both services' descriptions share, and the route serving one.

Each service describes itself in its own ``openapi`` module, from Python data (one
source of truth per service). What both answer alike is written here once: RFC 9457
problem details and RFC 6749 §5.2 errors, the credentials (security schemes), health
and readiness, the headers every answer carries. :func:`document` joins a service's
paths to these components; :func:`openapi_routes` serves the result at
``GET /openapi.json``, public and cacheable.

What every document says the same way:

- Request bodies are closed (``additionalProperties: false``): a JSON member the
  handler does not read is refused with 400 ``invalid_request``, so a misspelt field
  is never silently ignored. OAuth's forms are open, as RFC 6749 §3.2 asks.
- Response bodies are open: a later minor version may add members, and a client must
  ignore the ones it does not know. Removing or changing one is a major version.
- Errors are ``application/problem+json`` with the stable code in ``error``; the token,
  introspection and revocation endpoints answer ``application/json`` in RFC 6749's
  shape instead. A 5xx other than 503 is a bug and is described nowhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web

from tessera_verify.authenticators import FORWARD_SECRET_HEADER, FORWARD_USER_ID_HEADER
from tessera_verify.errors import PROBLEM_JSON, REALM
from tessera_verify.integration import INSECURE_LOCAL_SESSION_COOKIE, LOCAL_SESSION_COOKIE
from tessera_verify.sessions import INSECURE_SESSION_COOKIE, SESSION_COOKIE

from .jsonbody import FORM, JSON
from .observability import REQUEST_ID_HEADER

OPENAPI_VERSION = "3.1.0"
OPENAPI_PATH = "/openapi.json"

Schema = dict[str, Any]

#: Names of the security schemes (``components.securitySchemes``).
BEARER = "bearerToken"
SESSION = "sessionCookie"
SESSION_INSECURE = "sessionCookieInsecure"
LOCAL_SESSION = "localSessionCookie"
LOCAL_SESSION_INSECURE = "localSessionCookieInsecure"
FORWARD_SECRET = "forwardSecret"  # noqa: S105 - a scheme name
FORWARDED_USER = "forwardedUser"
INTROSPECTION_CLIENT = "introspectionClient"

_INSECURE = (
    "Only with TESSERA_COOKIE_INSECURE on plain-HTTP loopback development, where "
    "browsers refuse `__Host-` cookies."
)

SECURITY_SCHEMES: dict[str, Schema] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "An access token from `POST /auth/login` (`credential`: `token` or `both`) or "
            "`POST /auth/token`: a JWT signed with a key of the auth service's JWKS "
            "(`/.well-known/jwks.json`), valid for minutes, revocable."
        ),
    },
    SESSION: {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": (
            "The shared session, set by `POST /auth/login`. Requests that change state "
            "with it must come from the same origin (`Origin`, `Sec-Fetch-Site`): 403 "
            "`csrf_rejected` otherwise."
        ),
    },
    SESSION_INSECURE: {
        "type": "apiKey",
        "in": "cookie",
        "name": INSECURE_SESSION_COOKIE,
        "description": "The shared session under its development name. " + _INSECURE,
    },
    LOCAL_SESSION: {
        "type": "apiKey",
        "in": "cookie",
        "name": LOCAL_SESSION_COOKIE,
        "description": (
            "A session only the replica that made it knows (`POST /api/login`; replicas "
            "with the `local_session` method)."
        ),
    },
    LOCAL_SESSION_INSECURE: {
        "type": "apiKey",
        "in": "cookie",
        "name": INSECURE_LOCAL_SESSION_COOKIE,
        "description": "A local session under its development name. " + _INSECURE,
    },
    FORWARD_SECRET: {
        "type": "apiKey",
        "in": "header",
        "name": FORWARD_SECRET_HEADER,
        "description": (
            "Forward authentication (the `forward` method): nginx asks `GET /auth/forward` "
            "and passes the identity on with the shared forward secret. Believed only from "
            "a trusted proxy; never sent by clients."
        ),
    },
    FORWARDED_USER: {
        "type": "apiKey",
        "in": "header",
        "name": FORWARD_USER_ID_HEADER,
        "description": "The user ID nginx forwards, with the forward secret.",
    },
    INTROSPECTION_CLIENT: {
        "type": "http",
        "scheme": "basic",
        "description": (
            "An introspection client of TESSERA_INTROSPECTION_CLIENTS (RFC 6749 §2.3.1: "
            "the ID and secret form-encoded, then Base64)."
        ),
    },
}

OPERATIONS_TAG = {
    "name": "operations",
    "description": "Liveness, readiness, metrics and this document: public.",
}

#: The caller's credential where either kind of shared credential is accepted.
SIGNED_IN: list[dict[str, list[str]]] = [
    {BEARER: []},
    {SESSION: []},
    {SESSION_INSECURE: []},
]


def ref(name: str) -> Schema:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def response_ref(name: str) -> Schema:
    """A reference to the component response ``name``."""
    return {"$ref": f"#/components/responses/{name}"}


def _header_ref(name: str) -> Schema:
    return {"$ref": f"#/components/headers/{name}"}


def answer(
    description: str,
    schema: Schema | None = None,
    *,
    media_type: str = JSON,
    headers: Mapping[str, Schema] | None = None,
) -> Schema:
    """A response: ``schema`` as ``media_type`` (no body without one), with ``headers``."""
    response: Schema = {"description": description}
    if headers:
        response["headers"] = dict(headers)
    if schema is not None:
        response["content"] = {media_type: {"schema": schema}}
    return response


def body(schema: Schema, *, form: bool = False, required: bool = True) -> Schema:
    """A request body of the JSON object ``schema`` (closed: unknown members are a 400);
    with ``form``, also as ``application/x-www-form-urlencoded``, where parameters
    tessera does not read are ignored (RFC 6749 §3.2) and an empty one is as if omitted."""
    content: dict[str, Schema] = {JSON: {"schema": {**schema, "additionalProperties": False}}}
    if form:
        content[FORM] = {"schema": {**schema, "additionalProperties": True}}
    return {"required": required, "content": content}


def header(description: str, schema: Schema | None = None, *, required: bool = True) -> Schema:
    """A response header."""
    return {
        "description": description,
        "required": required,
        "schema": schema or {"type": "string"},
    }


NO_STORE = header("`no-store`: credentials and personal data are never cached.")

#: Problem details (RFC 9457), as the services answer every error.
PROBLEM: Schema = {
    "type": "object",
    "description": (
        "RFC 9457 problem details. `error` is the stable, machine-readable code; "
        "`detail` is for people and may change. Further members say what else the "
        "error knows."
    ),
    "required": ["type", "title", "status", "detail", "error"],
    "properties": {
        "type": {"type": "string", "description": "Always `about:blank`: told apart by `error`."},
        "title": {"type": "string", "description": "The HTTP status phrase."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "error": {
            "type": "string",
            "description": "The stable error code (`invalid_request`, `invalid_token`, ...).",
            "examples": ["invalid_request", "invalid_credentials", "dependency_unavailable"],
        },
        "field": {"type": "string", "description": "The request field at fault."},
        "rule": {"type": "string", "description": "The password rule broken (`weak_password`)."},
        "min_length": {"type": "integer"},
        "max_length": {"type": "integer"},
        "retry_after": {
            "type": "integer",
            "minimum": 0,
            "description": "Seconds to wait, as in `Retry-After`.",
        },
        "accepted_methods": {
            "type": "array",
            "items": {"type": "string"},
            "description": "`credential_not_accepted`: the credential kinds this service takes.",
        },
    },
}

#: RFC 6749 §5.2, as the token, introspection and revocation endpoints answer errors.
OAUTH_ERROR: Schema = {
    "type": "object",
    "description": "RFC 6749 §5.2's error response.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "string",
            "examples": [
                "invalid_request",
                "invalid_client",
                "invalid_grant",
                "unsupported_grant_type",
                "temporarily_unavailable",
            ],
        },
        "error_description": {"type": "string"},
    },
}

HEALTH: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"const": "ok"},
        "version": {"type": "string", "description": "The running release."},
    },
}

READINESS: Schema = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "not ready"]},
        "checks": {
            "type": "object",
            "description": "Each dependency or state, `ok` or what is wrong with it.",
            "additionalProperties": {"type": "string"},
        },
    },
}

USER: Schema = {
    "type": "object",
    "required": ["id", "username"],
    "properties": {"id": {"type": "string"}, "username": {"type": "string"}},
}

SCHEMAS: dict[str, Schema] = {
    "Problem": PROBLEM,
    "OAuthError": OAUTH_ERROR,
    "Health": HEALTH,
    "Readiness": READINESS,
    "User": USER,
}

HEADERS: dict[str, Schema] = {
    "RetryAfter": header("Seconds to wait before trying again.", {"type": "integer"}),
    "WWWAuthenticate": header(
        f'The challenge (RFC 9110 §11.6.1): `Bearer realm="{REALM}"` with `error` for a bad '
        "token (RFC 6750), `Basic` for a bad client, `Cookie` where only sessions are taken."
    ),
}


def problem(description: str, *, headers: Mapping[str, Schema] | None = None) -> Schema:
    """A problem-details answer (the shared ones are in ``components.responses``)."""
    return answer(description, ref("Problem"), media_type=PROBLEM_JSON, headers=headers)


def _oauth(description: str, *, headers: Mapping[str, Schema] | None = None) -> Schema:
    return answer(
        description, ref("OAuthError"), headers={"Cache-Control": NO_STORE, **(headers or {})}
    )


_RETRY = {"Retry-After": _header_ref("RetryAfter")}
_CHALLENGE = {"WWW-Authenticate": _header_ref("WWWAuthenticate")}

RESPONSES: dict[str, Schema] = {
    "BadRequest": problem(
        "The request is malformed: `malformed_json`, `invalid_request` (a field missing, "
        "of the wrong type, too long or unknown, named in `field`), `duplicate_cookie` "
        "(a credential cookie sent twice), `weak_password` (with `rule`)."
    ),
    "Unauthorized": problem(
        "No credential, or a bad one: `unauthenticated`, `invalid_token`, "
        "`invalid_session`, `invalid_credentials`, `credential_not_accepted`.",
        headers=_CHALLENGE,
    ),
    "Forbidden": problem(
        "Refused: `csrf_rejected` (a cookie-borne request from another origin), or the "
        "operation's own reason."
    ),
    "NotFound": problem("`not_found`."),
    "PayloadTooLarge": problem("`payload_too_large`: the body is over the size limit."),
    "UnsupportedMediaType": problem(
        "`unsupported_media_type`: another content type, or a charset other than UTF-8."
    ),
    "TooManyAttempts": problem(
        "`too_many_attempts`: too many failed password attempts for this account or "
        "address (`retry_after`).",
        headers=_RETRY,
    ),
    "ServiceUnavailable": problem(
        "`dependency_unavailable` (Redis, PostgreSQL or the auth service cannot be "
        "reached: fail closed) or `server_busy` (password hashing is queued full).",
        headers=_RETRY,
    ),
    "OAuthBadRequest": _oauth(
        "`invalid_request` (a parameter missing, repeated or invalid; a malformed, "
        "oversized or wrongly typed body), `invalid_grant`, `unsupported_grant_type`."
    ),
    "OAuthInvalidClient": _oauth(
        "`invalid_client`: client authentication failed.", headers=_CHALLENGE
    ),
    "OAuthPayloadTooLarge": _oauth("`invalid_request`: the body is over the size limit."),
    "OAuthUnsupportedMediaType": _oauth("`invalid_request`: another content type or charset."),
    "OAuthServiceUnavailable": _oauth(
        "`temporarily_unavailable`: a dependency cannot be reached.", headers=_RETRY
    ),
}


def body_errors(*, oauth: bool = False) -> dict[str, Schema]:
    """What reading a request body can answer: 400, 413, 415."""
    prefix = "OAuth" if oauth else ""
    return {
        "400": response_ref(f"{prefix}BadRequest"),
        "413": response_ref(f"{prefix}PayloadTooLarge"),
        "415": response_ref(f"{prefix}UnsupportedMediaType"),
    }


def signed_in_errors() -> dict[str, Schema]:
    """What checking the caller's credential can answer: 400 (a credential cookie sent
    twice), 401, 503 (the session store or the JWKS cannot be reached)."""
    return {
        "400": response_ref("BadRequest"),
        "401": response_ref("Unauthorized"),
        "503": response_ref("ServiceUnavailable"),
    }


def health_operations(health: Schema) -> dict[str, Schema]:
    """``/healthz``, ``/readyz`` and ``/metrics``, as every service answers them."""
    public: list[dict[str, list[str]]] = []
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers (says nothing about dependencies).",
                "tags": ["operations"],
                "security": public,
                "responses": {"200": answer("Alive.", health)},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: every dependency answers in time.",
                "tags": ["operations"],
                "security": public,
                "responses": {
                    "200": answer("Ready.", ref("Readiness"), headers={"Cache-Control": NO_STORE}),
                    "503": answer(
                        "Not ready (a dependency down, or shutting down).",
                        ref("Readiness"),
                        headers={"Cache-Control": NO_STORE},
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format).",
                "tags": ["operations"],
                "security": public,
                "responses": {
                    "200": answer("The metrics.", {"type": "string"}, media_type="text/plain")
                },
            }
        },
    }


def _openapi_operation() -> Schema:
    return {
        "get": {
            "operationId": "openapi",
            "summary": "This document (OpenAPI 3.1).",
            "tags": ["operations"],
            "security": [],
            "parameters": [
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "The `ETag` of a copy held: 304 when it is still current.",
                }
            ],
            "responses": {
                "200": answer(
                    "The OpenAPI document.",
                    {"type": "object", "required": ["openapi", "info", "paths"]},
                    headers={"ETag": header("The document's version.")},
                ),
                "304": answer("The copy held is current.", headers={"ETag": header("As sent.")}),
            },
        }
    }


def document(
    *,
    title: str,
    version: str,
    description: str,
    paths: Mapping[str, Schema],
    schemas: Mapping[str, Schema],
    security_schemes: Iterable[str],
    tags: Iterable[Mapping[str, str]],
    response_headers: Mapping[str, Schema] | None = None,
) -> dict[str, Any]:
    """A service's OpenAPI 3.1 document: its ``paths`` (``/openapi.json`` is added) and
    ``schemas``, the shared components, the ``security_schemes`` it accepts (by name),
    and ``response_headers`` (besides ``X-Request-Id``) on every response."""
    every_response = {
        REQUEST_ID_HEADER: header("The request's ID, as logged (sent, or made up)."),
        **(response_headers or {}),
    }
    components = {
        "schemas": {**SCHEMAS, **schemas},
        "responses": copy.deepcopy(RESPONSES),
        "headers": HEADERS,
        "securitySchemes": {name: SECURITY_SCHEMES[name] for name in security_schemes},
    }
    # A copy: the service-wide headers go into this document's responses only.
    all_paths = copy.deepcopy({**paths, OPENAPI_PATH: _openapi_operation()})
    for response in _responses(all_paths, components["responses"]):
        response.setdefault("headers", {}).update(every_response)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": description,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [*map(dict, tags), OPERATIONS_TAG],
        "paths": all_paths,
        "components": components,
    }


def _responses(paths: Mapping[str, Schema], shared: Mapping[str, Schema]) -> Iterator[Schema]:
    """Every response object written out (references are covered by their target)."""
    yield from shared.values()
    for item in paths.values():
        for operation in item.values():
            for response in operation["responses"].values():
                if "$ref" not in response:
                    yield response


def operations(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every ``(METHOD, path template)`` that ``doc`` describes."""
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def openapi_routes(doc: Mapping[str, Any]) -> web.RouteTableDef:
    """``GET /openapi.json``: ``doc``, serialised once, public and cacheable (an ``ETag``
    and ``If-None-Match``: clients and caches refetch it only when it changed)."""
    payload = json.dumps(doc, ensure_ascii=False).encode()
    etag = hashlib.sha256(payload).hexdigest()[:32]
    caching = {"Cache-Control": "public, max-age=300"}
    routes = web.RouteTableDef()

    @routes.get(OPENAPI_PATH)
    async def openapi(request: web.Request) -> web.Response:
        held = request.if_none_match or ()
        if any(tag.value in (etag, "*") for tag in held):
            response = web.Response(status=304, headers=caching)
        else:
            response = web.Response(body=payload, content_type=JSON, headers=caching)
        response.etag = etag
        return response

    return routes
