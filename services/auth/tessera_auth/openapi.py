"""The auth service's OpenAPI 3.1 description, served at ``GET /openapi.json``.

The one source of truth for the auth service's HTTP contract; what it shares with
the replicas (errors, credentials, health) comes from :mod:`tessera_platform.openapi`.
``tests/test_openapi.py`` holds it to the route table both ways and fuzzes the live
service against it.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from aiohttp import web

from tessera_platform import openapi as oa
from tessera_platform.jsonbody import FORM
from tessera_platform.openapi import NO_STORE, SIGNED_IN, Schema, answer, body, ref, response_ref

from .password_policy import DEFAULT_MIN_LENGTH, MAX_INPUT_LENGTH, MAX_LENGTH, MIN_LENGTH_FLOOR
from .portal import routes as portal
from .portal.pages import SECURITY_HEADERS
from .portal.return_url import MAX_LENGTH as RETURN_URL_MAX_LENGTH
from .routes_account import CREDENTIAL_KINDS
from .routes_discovery import JWKS_PATH, METADATA_PATH

__all__ = ["api_description", "routes"]

PUBLIC: list[dict[str, list[str]]] = []
#: Revocation takes a client's credentials, or none (public clients).
MAYBE_CLIENT: list[dict[str, list[str]]] = [{}, {oa.INTROSPECTION_CLIENT: []}]

_USERNAME = {
    "type": "string",
    "maxLength": 256,
    "description": (
        "Compared after Unicode NFKC and case folding; any other name is only an unknown one (401)."
    ),
}
_NEW_USERNAME = {
    **_USERNAME,
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$",
    "description": (
        "3-64 characters: letters, digits, `.`, `_` or `-`, starting with a letter or "
        "digit. Kept in Unicode NFKC, case folded: `Alice` and `alice` are one account."
    ),
}
_PASSWORD = {"type": "string", "maxLength": MAX_INPUT_LENGTH}
_NEW_PASSWORD = {
    **_PASSWORD,
    "minLength": MIN_LENGTH_FLOOR,
    "description": (
        f"Checked against the password policy (at least TESSERA_PASSWORD_MIN_LENGTH, "
        f"{DEFAULT_MIN_LENGTH} by default, and at most {MAX_LENGTH} characters after NFKC; "
        "no common password, repetition or username): 400 `weak_password` naming the "
        "`rule` broken."
    ),
}
_TIME = {"type": "number", "description": "Seconds since the Unix epoch."}
_CREDENTIALS = {"username": _USERNAME, "password": _PASSWORD}

SCHEMAS: dict[str, Schema] = {
    "UserResult": {
        "type": "object",
        "required": ["user"],
        "properties": {"user": ref("User")},
    },
    "PasswordCheckResult": {
        "type": "object",
        "required": ["user", "checked_at"],
        "properties": {
            "user": ref("User"),
            "checked_at": {
                **_TIME,
                "description": (
                    "When the check began, on the auth service's clock. A replica dates the "
                    "session it starts from here, so a revocation of the user's credentials "
                    "that commits after the check (a password change) also ends it."
                ),
            },
        },
    },
    "Session": {
        "type": "object",
        "description": "A session as its owner sees it; `id` is public (never the cookie).",
        "required": ["id", "created_at", "last_seen_at", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "created_at": _TIME,
            "last_seen_at": _TIME,
            "expires_at": {**_TIME, "description": "The absolute timeout."},
        },
    },
    "SessionDetails": {
        "allOf": [ref("Session")],
        "type": "object",
        "required": ["ip", "user_agent", "current"],
        "properties": {
            "ip": {"type": "string"},
            "user_agent": {"type": "string"},
            "current": {"type": "boolean", "description": "The session of this request."},
        },
    },
    "TokenPair": {
        "type": "object",
        "description": "RFC 6749 §5.1's successful response.",
        "required": ["access_token", "token_type", "expires_in", "refresh_token"],
        "properties": {
            "access_token": {"type": "string", "description": "A JWT."},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 0},
            "refresh_token": {"type": "string", "description": "Single use: rotated."},
        },
    },
    "LoginResult": {
        "type": "object",
        "description": (
            "`session` for the `session` and `both` credentials (the cookie is set too); "
            "the token pair for `token` and `both`."
        ),
        "required": ["user"],
        "properties": {
            "user": ref("User"),
            "session": ref("Session"),
            "access_token": {"type": "string"},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 0},
            "refresh_token": {"type": "string"},
        },
    },
    "Me": {
        "type": "object",
        "required": ["user_id", "method", "username"],
        "properties": {
            "user_id": {"type": "string"},
            "username": {"type": "string"},
            "method": {"enum": ["jwt", "shared_session"]},
            "session": ref("Session"),
            "token": {
                "type": "object",
                "required": ["jti", "expires_at", "session_link"],
                "properties": {
                    "jti": {"type": "string"},
                    "expires_at": _TIME,
                    "session_link": {
                        "type": ["string", "null"],
                        "description": "The public ID of the login the token belongs to.",
                    },
                },
            },
        },
    },
    "Revoked": {
        "type": "object",
        "required": ["revoked"],
        "properties": {
            "revoked": {
                "type": "array",
                "items": {"enum": ["session", "access_token", "refresh_token"]},
                "description": "What the request presented and this revoked.",
            }
        },
    },
    "RevokedEverything": {
        "type": "object",
        "required": ["revoked"],
        "properties": {
            "revoked": {
                "type": "object",
                "required": ["sessions", "refresh_families", "access_tokens_issued_before"],
                "properties": {
                    "sessions": {"type": "integer", "minimum": 0},
                    "refresh_families": {"type": "integer", "minimum": 0},
                    "access_tokens_issued_before": {
                        "type": ["number", "null"],
                        "description": "Every access token issued before this time is revoked.",
                    },
                },
            }
        },
    },
    "Introspection": {
        "type": "object",
        "description": (
            "RFC 7662 §2.2. Inactive (unknown, expired, revoked, forged) is only "
            '`{"active": false}`.'
        ),
        "required": ["active"],
        "properties": {
            "active": {"type": "boolean"},
            "token_type": {"enum": ["access_token", "refresh_token", "session"]},
            "sub": {"type": "string"},
            "username": {"type": "string"},
            "client_id": {"type": ["string", "null"]},
            "iss": {"type": "string"},
            "aud": {"type": "string"},
            "exp": {"type": "integer"},
            "iat": {"type": "integer"},
            "jti": {"type": "string"},
            "sid": {"type": ["string", "null"]},
        },
    },
    "JWKS": {
        "type": "object",
        "description": (
            "RFC 7517 key set: the keys access tokens are signed with, published ahead "
            "of use. Empty with an HS256 shared secret (never published)."
        ),
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "kid"],
                    "properties": {
                        "kty": {"type": "string"},
                        "kid": {"type": "string"},
                        "alg": {"type": "string"},
                        "use": {"type": "string"},
                    },
                },
            }
        },
    },
    "ServerMetadata": {
        "type": "object",
        "description": "RFC 8414 authorization-server metadata.",
        "required": ["issuer", "jwks_uri", "token_endpoint", "response_types_supported"],
        "properties": {
            "issuer": {"type": "string"},
            "jwks_uri": {"type": "string"},
            "token_endpoint": {"type": "string"},
            "introspection_endpoint": {"type": "string"},
            "revocation_endpoint": {"type": "string"},
            "grant_types_supported": {"type": "array", "items": {"type": "string"}},
            "response_types_supported": {"type": "array", "items": {"type": "string"}},
        },
    },
}

_SESSION_COOKIE_SET = {
    "Set-Cookie": oa.header(
        "The session cookie (`HttpOnly; Secure; SameSite=Lax; Path=/`), when a session "
        "was asked for.",
        required=False,
    ),
    "Cache-Control": NO_STORE,
}
_COOKIE_CLEARED = {
    "Set-Cookie": oa.header("The session cookie, cleared.", required=False),
    "Cache-Control": NO_STORE,
}


def _account_paths() -> dict[str, Schema]:
    password_errors = {
        **oa.body_errors(),
        "401": response_ref("Unauthorized"),
        "429": response_ref("TooManyAttempts"),
        "503": response_ref("ServiceUnavailable"),
    }
    return {
        "/auth/register": {
            "post": {
                "operationId": "register",
                "summary": "Create an account.",
                "tags": ["account"],
                "security": PUBLIC,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {"username": _NEW_USERNAME, "password": _NEW_PASSWORD},
                    }
                ),
                "responses": {
                    "201": answer(
                        "Registered.", ref("UserResult"), headers={"Cache-Control": NO_STORE}
                    ),
                    **oa.body_errors(),
                    "403": oa.problem("`registration_disabled`."),
                    "409": oa.problem("`username_taken`."),
                    "429": response_ref("TooManyAttempts"),
                    "503": response_ref("ServiceUnavailable"),
                },
            }
        },
        "/auth/login": {
            "post": {
                "operationId": "login",
                "summary": "Log in: a session cookie, a token pair, or both.",
                "description": (
                    "A session the client brings is destroyed, never upgraded (fixation). "
                    "An unknown user and a wrong password get the same 401, in the same "
                    "time. Failures are throttled per account and address (429)."
                ),
                "tags": ["account"],
                "security": PUBLIC,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {
                            **_CREDENTIALS,
                            "credential": {
                                "enum": list(CREDENTIAL_KINDS),
                                "default": "session",
                            },
                        },
                    }
                ),
                "responses": {
                    "200": answer("Logged in.", ref("LoginResult"), headers=_SESSION_COOKIE_SET),
                    **password_errors,
                    "403": response_ref("Forbidden"),
                },
            }
        },
        "/auth/password-check": {
            "post": {
                "operationId": "passwordCheck",
                "summary": "Whether a password is right, issuing nothing.",
                "description": (
                    "For replicas that keep their own sessions; throttled and audited "
                    "exactly like login."
                ),
                "tags": ["account"],
                "security": PUBLIC,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": _CREDENTIALS,
                    }
                ),
                "responses": {
                    "200": answer(
                        "The password is right.",
                        ref("PasswordCheckResult"),
                        headers={"Cache-Control": NO_STORE},
                    ),
                    **password_errors,
                },
            }
        },
        "/auth/logout": {
            "post": {
                "operationId": "logout",
                "summary": "Revoke what the request presents.",
                "description": (
                    "The session cookie, the bearer token and a `refresh_token` in the "
                    "body, whichever are sent (at least one: 401 otherwise). A credential "
                    "already dead is skipped, not refused."
                ),
                "tags": ["account"],
                "security": [{}, *SIGNED_IN],
                "requestBody": body(
                    {
                        "type": "object",
                        "properties": {"refresh_token": {"type": "string", "maxLength": 256}},
                    },
                    form=True,
                    required=False,
                ),
                "responses": {
                    "200": answer("What was revoked.", ref("Revoked"), headers=_COOKIE_CLEARED),
                    **oa.body_errors(),
                    "401": response_ref("Unauthorized"),
                    "403": response_ref("Forbidden"),
                    "503": response_ref("ServiceUnavailable"),
                },
            }
        },
        "/auth/forward": {
            "get": {
                "operationId": "forwardAuth",
                "summary": "nginx `auth_request`: who is calling, in headers.",
                "description": (
                    "200 with the identity headers nginx copies onto the proxied request. "
                    "nginx renders refusals itself; a 400 means a session cookie sent twice."
                ),
                "tags": ["account"],
                "security": SIGNED_IN,
                "responses": {
                    "200": answer(
                        "Authenticated.",
                        headers={
                            "X-Tessera-User-Id": oa.header("The user's ID."),
                            "X-Tessera-Username": oa.header("The user's name."),
                            "X-Tessera-Auth-Method": oa.header(
                                "How the caller was authenticated.",
                                {"enum": ["jwt", "shared_session"]},
                            ),
                            "Cache-Control": NO_STORE,
                        },
                    ),
                    **oa.signed_in_errors(),
                },
            }
        },
        "/auth/me": {
            "get": {
                "operationId": "me",
                "summary": "Who is calling, and with what.",
                "tags": ["account"],
                "security": SIGNED_IN,
                "responses": {
                    "200": answer("The caller.", ref("Me"), headers={"Cache-Control": NO_STORE}),
                    **oa.signed_in_errors(),
                },
            }
        },
    }


def _session_paths() -> dict[str, Schema]:
    write_errors = {**oa.signed_in_errors(), "403": response_ref("Forbidden")}
    revoked_everything = answer(
        "Everything of the caller's is revoked, this device included.",
        ref("RevokedEverything"),
        headers={"Cache-Control": NO_STORE},
    )
    return {
        "/auth/sessions": {
            "get": {
                "operationId": "listSessions",
                "summary": "The caller's live sessions, newest first.",
                "tags": ["sessions"],
                "security": SIGNED_IN,
                "responses": {
                    "200": answer(
                        "The sessions; the one making this request is `current`.",
                        {
                            "type": "object",
                            "required": ["sessions"],
                            "properties": {
                                "sessions": {"type": "array", "items": ref("SessionDetails")}
                            },
                        },
                        headers={"Cache-Control": NO_STORE},
                    ),
                    **oa.signed_in_errors(),
                },
            }
        },
        "/auth/sessions/{session_id}": {
            "delete": {
                "operationId": "revokeSession",
                "summary": "Revoke one of the caller's sessions.",
                "tags": ["sessions"],
                "security": SIGNED_IN,
                "parameters": [
                    {
                        "name": "session_id",
                        "in": "path",
                        "required": True,
                        "description": "The session's public `id`.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": answer(
                        "Revoked.",
                        ref("Revoked"),
                        headers={"Cache-Control": NO_STORE},
                    ),
                    **write_errors,
                    "404": response_ref("NotFound"),
                },
            }
        },
        "/auth/logout-all": {
            "post": {
                "operationId": "logoutEverywhere",
                "summary": "Revoke every session, refresh token and access token of the caller.",
                "tags": ["sessions"],
                "security": SIGNED_IN,
                "responses": {"200": revoked_everything, **write_errors},
            }
        },
        "/auth/password": {
            "post": {
                "operationId": "changePassword",
                "summary": "Change the password; everything issued before is revoked.",
                "description": (
                    "Wrong current passwords are throttled like login (429); a wrong one "
                    "is 403 `wrong_current_password` (the caller stays signed in)."
                ),
                "tags": ["sessions"],
                "security": SIGNED_IN,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["current_password", "new_password"],
                        "properties": {
                            "current_password": _PASSWORD,
                            "new_password": _NEW_PASSWORD,
                        },
                    }
                ),
                "responses": {
                    "200": revoked_everything,
                    **write_errors,
                    **oa.body_errors(),
                    "429": response_ref("TooManyAttempts"),
                },
            }
        },
    }


_TOKEN = {"type": "string", "maxLength": 8192}
_TOKEN_REQUEST = {
    "type": "object",
    "required": ["token"],
    "properties": {
        "token": {**_TOKEN, "description": "An access token, a refresh token or a session ID."},
        "token_type_hint": {
            "type": "string",
            "maxLength": 32,
            "description": "`access_token`, `refresh_token` or `session`; may be ignored.",
        },
    },
}


def _oauth_paths() -> dict[str, Schema]:
    oauth_failures = {
        **oa.body_errors(oauth=True),
        "503": response_ref("OAuthServiceUnavailable"),
    }
    no_store = {"Cache-Control": NO_STORE}
    return {
        "/auth/token": {
            "post": {
                "operationId": "token",
                "summary": "RFC 6749 token endpoint: the refresh-token grant.",
                "description": (
                    "The refresh token is single use: each one is rotated. Presenting a "
                    "used one again revokes its whole login (reuse detection), except "
                    "within a short grace for concurrent requests."
                ),
                "tags": ["oauth"],
                "security": PUBLIC,
                "requestBody": body(
                    {
                        "type": "object",
                        "required": ["grant_type", "refresh_token"],
                        "properties": {
                            "grant_type": {"const": "refresh_token"},
                            "refresh_token": {"type": "string", "maxLength": 256},
                        },
                    },
                    form=True,
                ),
                "responses": {
                    "200": answer("A new pair.", ref("TokenPair"), headers=no_store),
                    **oauth_failures,
                },
            }
        },
        "/auth/introspect": {
            "post": {
                "operationId": "introspect",
                "summary": "RFC 7662 introspection of any tessera credential.",
                "tags": ["oauth"],
                "security": [{oa.INTROSPECTION_CLIENT: []}],
                "requestBody": body(_TOKEN_REQUEST, form=True),
                "responses": {
                    "200": answer(
                        "Whether it is live, and whose.", ref("Introspection"), headers=no_store
                    ),
                    **oauth_failures,
                    "401": response_ref("OAuthInvalidClient"),
                },
            }
        },
        "/auth/revoke": {
            "post": {
                "operationId": "revoke",
                "summary": "RFC 7009 revocation of any tessera credential.",
                "description": (
                    "200 whether or not the token was valid. Client authentication is "
                    "optional, but checked when sent."
                ),
                "tags": ["oauth"],
                "security": MAYBE_CLIENT,
                "requestBody": body(_TOKEN_REQUEST, form=True),
                "responses": {
                    "200": answer(
                        "Revoked, or nothing to revoke.", {"type": "object"}, headers=no_store
                    ),
                    **oauth_failures,
                    "401": response_ref("OAuthInvalidClient"),
                },
            }
        },
    }


def _discovery_paths() -> dict[str, Schema]:
    return {
        JWKS_PATH: {
            "get": {
                "operationId": "jwks",
                "summary": "The keys that verify access tokens (RFC 7517).",
                "tags": ["discovery"],
                "security": PUBLIC,
                "responses": {
                    "200": answer(
                        "The key set; cache it no longer than `max-age` says.",
                        ref("JWKS"),
                        media_type="application/jwk-set+json",
                        headers={"Cache-Control": oa.header("`public, max-age=N`.")},
                    )
                },
            }
        },
        METADATA_PATH: {
            "get": {
                "operationId": "serverMetadata",
                "summary": "Authorization-server metadata (RFC 8414).",
                "tags": ["discovery"],
                "security": PUBLIC,
                "responses": {"200": answer("The metadata.", ref("ServerMetadata"))},
            }
        },
    }


HTML = "text/html"
_PAGE = {"type": "string", "description": "An HTML page (no script)."}
#: What every portal answer carries besides ``X-Request-Id``.
_PORTAL_HEADERS = {
    "Content-Security-Policy": oa.header(
        f"`{SECURITY_HEADERS['Content-Security-Policy']}`; with "
        + ", ".join(
            f"`{name}: {value}`"
            for name, value in SECURITY_HEADERS.items()
            if name != "Content-Security-Policy"
        )
        + "."
    ),
}
#: The portal is for browsers: a session cookie, or nobody yet (never a bearer token).
BROWSER: list[dict[str, list[str]]] = [{}, {oa.SESSION: []}, {oa.SESSION_INSECURE: []}]


def _page(description: str, **headers: Schema) -> Schema:
    """A portal answer with a page: never cached, with the portal's headers."""
    return answer(
        description,
        _PAGE,
        media_type=HTML,
        headers={**_PORTAL_HEADERS, "Cache-Control": NO_STORE, **headers},
    )


def _redirect(description: str, **headers: Schema) -> Schema:
    return answer(
        description,
        headers={
            **_PORTAL_HEADERS,
            "Location": oa.header("Where the browser goes next."),
            "Cache-Control": NO_STORE,
            **headers,
        },
    )


_RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
_PORTAL_ERRORS: dict[str, Schema] = {
    "400": _page(
        "The form again saying what is missing, or an error page: a field too long or "
        "sent twice, a credential cookie sent twice."
    ),
    "503": _page("An error page: a dependency is down (fail closed).", **_RETRY_AFTER),
}
_FORM_ERRORS: dict[str, Schema] = {
    **_PORTAL_ERRORS,
    "403": _page(
        "An error page, nothing done: the CSRF token is missing or wrong, or the post "
        "comes from another site (`Origin`, `Sec-Fetch-Site`)."
    ),
    "413": _page("An error page: the form is over the size limit."),
    "415": _page("An error page: not `application/x-www-form-urlencoded` in UTF-8."),
}
_CSRF_TOKEN = {
    "type": "string",
    "description": "The token of the page the form is on (an HMAC bound to this browser).",
}


def _form(properties: dict[str, Schema], required: list[str]) -> Schema:
    """An HTML form's body: parameters the portal does not read are ignored."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"required": True, "content": {FORM: {"schema": schema}}}


_SIGNED_IN_FORM = _form({"csrf_token": _CSRF_TOKEN}, ["csrf_token"])
_TO_LOGIN = _redirect("No live session: to the login form, coming back to the account page after.")


def _portal_paths() -> dict[str, Schema]:
    """The login portal and account page (HTML for browsers; no JavaScript)."""
    tags = ["portal"]
    return {
        portal.LOGIN_PATH: {
            "get": {
                "operationId": "portalLoginForm",
                "summary": "The login form.",
                "tags": tags,
                "security": BROWSER,
                "parameters": [
                    {
                        "name": "rd",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Where to go after logging in: a path on this site or an "
                            "https URL of an allowed origin (TESSERA_PORTAL_ALLOWED_ORIGINS; "
                            f"at most {RETURN_URL_MAX_LENGTH} characters). Anything else "
                            "is ignored."
                        ),
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "notice",
                        "in": "query",
                        "required": False,
                        "description": "A notice to show, by name.",
                        "schema": {"enum": list(portal.NOTICES)},
                    },
                ],
                "responses": {
                    "200": _page(
                        "The form.",
                        **{
                            "Set-Cookie": oa.header(
                                "The CSRF cookie (`__Host-tessera_csrf`), when the "
                                "browser has none.",
                                required=False,
                            )
                        },
                    ),
                    "400": _PORTAL_ERRORS["400"],
                },
            },
            "post": {
                "operationId": "portalLogin",
                "summary": "Log in: a new session cookie, and to the return URL.",
                "description": (
                    "A session the browser brings is destroyed first (fixation). A wrong "
                    "password and an unknown user get the same page; failures are "
                    "throttled like `POST /auth/login`."
                ),
                "tags": tags,
                "security": BROWSER,
                "requestBody": _form(
                    {
                        "username": _USERNAME,
                        "password": _PASSWORD,
                        "csrf_token": _CSRF_TOKEN,
                        "rd": {"type": "string", "description": "As the form's `rd`."},
                    },
                    ["username", "password", "csrf_token"],
                ),
                "responses": {
                    "303": _redirect(
                        "Logged in: to the return URL (default: the account page).",
                        **{"Set-Cookie": oa.header("The new session cookie.")},
                    ),
                    **_FORM_ERRORS,
                    "401": _page(
                        "The form again: wrong username or password.",
                        **{
                            "WWW-Authenticate": oa.header(
                                '`Cookie realm="tessera"`: log in for a session cookie.'
                            )
                        },
                    ),
                    "429": _page(
                        "The form again: too many failed attempts, and when to retry.",
                        **_RETRY_AFTER,
                    ),
                },
            },
        },
        portal.LOGOUT_PATH: {
            "post": {
                "operationId": "portalLogout",
                "summary": "Log out: revoke this browser's session, to the login form.",
                "tags": tags,
                "security": BROWSER,
                "requestBody": {**_SIGNED_IN_FORM, "required": False},
                "responses": {
                    "303": _redirect(
                        "Logged out (or was not logged in).",
                        **{"Set-Cookie": oa.header("The session cookie, cleared.", required=False)},
                    ),
                    **_FORM_ERRORS,
                },
            }
        },
        portal.ACCOUNT_PATH: {
            "get": {
                "operationId": "portalAccount",
                "summary": "The account page: who am I, my sessions, my password.",
                "tags": tags,
                "security": BROWSER,
                "responses": {
                    "200": _page("The page."),
                    "303": _TO_LOGIN,
                    **_PORTAL_ERRORS,
                },
            }
        },
        portal.REVOKE_PATH: {
            "post": {
                "operationId": "portalRevokeSession",
                "summary": "Revoke one of my sessions.",
                "tags": tags,
                "security": BROWSER,
                "parameters": [
                    {
                        "name": "session_id",
                        "in": "path",
                        "required": True,
                        "description": "The session's public ID.",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": _SIGNED_IN_FORM,
                "responses": {
                    "303": _redirect(
                        "Done (a session already gone is no error): to the account page, "
                        "or to the login form when it was this browser's.",
                        **{
                            "Set-Cookie": oa.header(
                                "The session cookie, cleared, when it was this one.",
                                required=False,
                            )
                        },
                    ),
                    **_FORM_ERRORS,
                    "404": response_ref("NotFound"),
                },
            }
        },
        portal.LOGOUT_ALL_PATH: {
            "post": {
                "operationId": "portalLogoutEverywhere",
                "summary": "Log out everywhere: every session, refresh and access token.",
                "tags": tags,
                "security": BROWSER,
                "requestBody": _SIGNED_IN_FORM,
                "responses": {
                    "303": _redirect(
                        "Done: to the login form (or, without a session, there to log in).",
                        **{"Set-Cookie": oa.header("The session cookie, cleared.", required=False)},
                    ),
                    **_FORM_ERRORS,
                },
            }
        },
        portal.PASSWORD_PATH: {
            "post": {
                "operationId": "portalChangePassword",
                "summary": "Change my password; everything issued before is revoked.",
                "tags": tags,
                "security": BROWSER,
                "requestBody": _form(
                    {
                        "csrf_token": _CSRF_TOKEN,
                        "current_password": _PASSWORD,
                        "new_password": _NEW_PASSWORD,
                    },
                    ["csrf_token", "current_password", "new_password"],
                ),
                "responses": {
                    "303": _redirect(
                        "Changed: to the login form (or, without a session, there to log in).",
                        **{"Set-Cookie": oa.header("The session cookie, cleared.", required=False)},
                    ),
                    **_FORM_ERRORS,
                    "400": _page(
                        "The account page saying why (a field missing, a weak new "
                        "password), or an error page (a field too long or sent twice)."
                    ),
                    "403": _page(
                        "The account page saying the current password is wrong, or an "
                        "error page, nothing done (CSRF)."
                    ),
                    "429": _page(
                        "The account page: too many wrong current passwords, and when to retry.",
                        **_RETRY_AFTER,
                    ),
                },
            }
        },
        portal.START_PATH: {
            "get": {
                "operationId": "portalStart",
                "summary": "Where nginx sends a browser its `auth_request` refused.",
                "tags": tags,
                "security": PUBLIC,
                "parameters": [
                    {
                        "name": "X-Original-URL",
                        "in": "header",
                        "required": False,
                        "description": (
                            "The URL the browser asked for (nginx: "
                            "`$scheme://$http_host$request_uri`)."
                        ),
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "302": _redirect(
                        "To the login form, with the URL as its `rd` when it is a valid return URL."
                    )
                },
            }
        },
        portal.STYLESHEET_PATH: {
            "get": {
                "operationId": "portalStylesheet",
                "summary": "The portal's stylesheet.",
                "tags": tags,
                "security": PUBLIC,
                "responses": {
                    "200": answer(
                        "The stylesheet.",
                        {"type": "string"},
                        media_type="text/css",
                        headers={**_PORTAL_HEADERS, "Cache-Control": oa.header("Cacheable.")},
                    )
                },
            }
        },
    }


@functools.cache
def api_description() -> dict[str, Any]:
    """The auth service's OpenAPI document."""
    return oa.document(
        title="tessera auth service",
        version=metadata.version("tessera-auth"),
        description=(
            "Accounts, logins, sessions and tokens: the only writer. Replicas and other "
            "services verify its credentials themselves (JWKS, the shared session store) "
            "or ask it (`/auth/introspect`, `/auth/forward`)."
        ),
        paths={
            **_account_paths(),
            **_session_paths(),
            **_oauth_paths(),
            **_discovery_paths(),
            **_portal_paths(),
            **oa.health_operations(ref("Health")),
        },
        schemas=SCHEMAS,
        security_schemes=(oa.BEARER, oa.SESSION, oa.SESSION_INSECURE, oa.INTROSPECTION_CLIENT),
        tags=(
            {"name": "account", "description": "Register, log in, log out, who am I."},
            {"name": "sessions", "description": "The caller's own sessions and password."},
            {
                "name": "oauth",
                "description": "Token, introspection and revocation (RFC 6749 errors).",
            },
            {"name": "discovery", "description": "Keys and server metadata."},
            {
                "name": "portal",
                "description": "The login portal and account page: HTML for browsers.",
            },
        ),
    )


def routes() -> web.RouteTableDef:
    """``GET /openapi.json`` serving :func:`api_description`."""
    return oa.openapi_routes(api_description())
