"""A resource replica's OpenAPI 3.1 description, served at ``GET /openapi.json``.

The one source of truth for the replica's HTTP contract; what it shares with the
auth service (errors, credentials, health) comes from :mod:`tessera_platform.openapi`.
``tests/test_openapi.py`` holds it to the route table both ways and fuzzes a live
replica against it.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from aiohttp import web

from tessera_platform import openapi as oa
from tessera_platform.openapi import NO_STORE, SIGNED_IN, Schema, answer, body, ref, response_ref
from tessera_verify.principal import AuthMethod

from .comments import MAX_COMMENT_LENGTH

__all__ = ["api_description", "routes"]

#: Every credential a replica can take; which it does is its configuration
#: (``TESSERA_AUTH_METHODS``): a kind it does not take is as if not sent.
CALLER: list[dict[str, list[str]]] = [
    *SIGNED_IN,
    {oa.LOCAL_SESSION: []},
    {oa.LOCAL_SESSION_INSECURE: []},
    {oa.FORWARD_SECRET: [], oa.FORWARDED_USER: []},
]
PUBLIC: list[dict[str, list[str]]] = []

SCHEMAS: dict[str, Schema] = {
    "ReplicaMe": {
        "type": "object",
        "required": ["user_id", "username", "auth_method", "served_by"],
        "properties": {
            "user_id": {"type": "string"},
            "username": {
                "type": ["string", "null"],
                "description": "Null for a bearer token (tokens carry no name).",
            },
            "auth_method": {"enum": [method.value for method in AuthMethod]},
            "served_by": {"type": "string", "description": "The replica's ID."},
            "token_expires_at": {"type": "number", "description": "For a bearer token."},
        },
    },
    "Comment": {
        "type": "object",
        "required": ["id", "user_id", "username", "body", "served_by", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "user_id": {"type": "string"},
            "username": {"type": ["string", "null"]},
            "body": {"type": "string"},
            "served_by": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "LocalLogin": {
        "type": "object",
        "required": ["user", "session", "served_by"],
        "properties": {
            "user": ref("User"),
            "session": {
                "type": "object",
                "required": ["id", "expires_at"],
                "properties": {"id": {"type": "string"}, "expires_at": {"type": "number"}},
            },
            "served_by": {"type": "string"},
        },
    },
    "ReplicaHealth": {
        "allOf": [ref("Health")],
        "type": "object",
        "required": ["replica"],
        "properties": {"replica": {"type": "string"}},
    },
}

_WRITE_ERRORS = {**oa.signed_in_errors(), "403": response_ref("Forbidden")}
_REVOKED = {
    "type": "object",
    "required": ["revoked"],
    "properties": {"revoked": {"type": "array", "items": {"const": "session"}}},
}


def _api_paths() -> dict[str, Schema]:
    no_store = {"Cache-Control": NO_STORE}
    return {
        "/api/me": {
            "get": {
                "operationId": "me",
                "summary": "Who is calling, and how this replica knows.",
                "tags": ["api"],
                "security": CALLER,
                "responses": {
                    "200": answer("The caller.", ref("ReplicaMe"), headers=no_store),
                    **oa.signed_in_errors(),
                },
            }
        },
        "/api/comments": {
            "get": {
                "operationId": "listComments",
                "summary": "The latest comments of the forum, newest first.",
                "tags": ["api"],
                "security": CALLER,
                "responses": {
                    "200": answer(
                        "At most 50 comments.",
                        {
                            "type": "object",
                            "required": ["comments"],
                            "properties": {"comments": {"type": "array", "items": ref("Comment")}},
                        },
                        headers=no_store,
                    ),
                    **oa.signed_in_errors(),
                },
            },
            "post": {
                "operationId": "addComment",
                "summary": "Post a comment.",
                "tags": ["api"],
                "security": CALLER,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["body"],
                        "properties": {
                            "body": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_COMMENT_LENGTH,
                                "pattern": "^[^\\u0000]*$",
                                "description": (
                                    "Stored without its surrounding whitespace; whitespace "
                                    "alone is 400, and so is a NUL character."
                                ),
                            }
                        },
                    }
                ),
                "responses": {
                    "201": answer(
                        "Posted.",
                        {
                            "type": "object",
                            "required": ["comment"],
                            "properties": {"comment": ref("Comment")},
                        },
                    ),
                    **_WRITE_ERRORS,
                    **oa.body_errors(),
                },
            },
        },
        "/api/login": {
            "post": {
                "operationId": "localLogin",
                "summary": "Log in to this replica alone (a local session).",
                "description": (
                    "Replicas with the `local_session` method (404 otherwise). The password "
                    "is checked by the auth service (`/auth/password-check`), throttled "
                    "like its login."
                ),
                "tags": ["api"],
                "security": PUBLIC,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {
                            "username": {"type": "string", "maxLength": 256},
                            "password": {"type": "string", "maxLength": 1024},
                        },
                    }
                ),
                "responses": {
                    "200": answer(
                        "Logged in; the local session cookie is set.",
                        ref("LocalLogin"),
                        headers={
                            "Set-Cookie": oa.header("The local session cookie."),
                            "Cache-Control": NO_STORE,
                        },
                    ),
                    **oa.signed_in_errors(),
                    **oa.body_errors(),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                    "429": response_ref("TooManyAttempts"),
                },
            }
        },
        "/api/logout": {
            "post": {
                "operationId": "localLogout",
                "summary": "End the local session (other credentials log out at the auth service).",
                "tags": ["api"],
                "security": CALLER,
                "responses": {
                    "200": answer(
                        "The local session is gone; its cookie is cleared.",
                        _REVOKED,
                        headers={
                            "Set-Cookie": oa.header("The local session cookie, cleared."),
                            "Cache-Control": NO_STORE,
                        },
                    ),
                    **_WRITE_ERRORS,
                },
            }
        },
    }


@functools.cache
def api_description() -> dict[str, Any]:
    """A replica's OpenAPI document."""
    from .app import AUTH_METHOD_HEADER, SERVED_BY_HEADER  # the app module imports this one

    return oa.document(
        title="tessera resource replica",
        version=metadata.version("tessera-resource"),
        description=(
            "A service protected by tessera: each request's credential is verified here "
            "(JWT against the auth service's JWKS, sessions in the shared store or in "
            "memory, or nginx's forwarded identity), behind nginx with its siblings."
        ),
        paths={**_api_paths(), **oa.health_operations(ref("ReplicaHealth"))},
        schemas=SCHEMAS,
        security_schemes=(
            oa.BEARER,
            oa.SESSION,
            oa.SESSION_INSECURE,
            oa.LOCAL_SESSION,
            oa.LOCAL_SESSION_INSECURE,
            oa.FORWARD_SECRET,
            oa.FORWARDED_USER,
        ),
        tags=({"name": "api", "description": "The protected API: who am I, the forum."},),
        response_headers={
            SERVED_BY_HEADER: oa.header("The replica that answered."),
            AUTH_METHOD_HEADER: oa.header(
                "How the caller was authenticated (`none` when not).",
                {"enum": ["none", *(method.value for method in AuthMethod)]},
            ),
        },
    )


def routes() -> web.RouteTableDef:
    """``GET /openapi.json`` serving :func:`api_description`."""
    return oa.openapi_routes(api_description())
