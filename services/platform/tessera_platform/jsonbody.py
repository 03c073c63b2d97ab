"""Reading request bodies: content type, size and shape are checked before use."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from tessera_verify.errors import (
    InvalidRequest,
    MalformedJSON,
    PayloadTooLarge,
    UnsupportedMediaType,
)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _check_charset(request: web.Request) -> None:
    """Only UTF-8 is read: JSON is UTF-8 (RFC 8259 §8.1), and so are tessera's forms.

    Any other ``charset`` parameter, known to Python or not, is a 415 before the
    body is decoded (the form parser would look the codec up and fail with a 500).
    """
    charset = request.charset
    if charset is None:
        return
    if charset.strip().lower().replace("-", "").replace("_", "") != "utf8":
        raise UnsupportedMediaType("the request body must be UTF-8 (charset=utf-8 or none)")


async def _read_bytes(request: web.Request) -> bytes:
    limit = request._client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes") from exc


def _field_error(message: str, name: str) -> InvalidRequest:
    return InvalidRequest(message, details={"field": name})


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose member names are all different: with a name given twice,
    which value counts depends on the parser (RFC 8259 §4), so none is guessed."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _field_error(f"'{name}' is given more than once", name)
            seen.add(name)
    return members


def _parameters(form: MultiDictProxy[Any]) -> dict[str, str]:
    """A form's parameters as RFC 6749 §3.2 reads them: one sent more than once is
    refused (which copy is meant cannot be known), one sent without a value is as if
    omitted."""
    params: dict[str, str] = {}
    for name in form:
        values = form.getall(name)
        if len(values) > 1:
            raise _field_error(f"'{name}' is sent more than once", name)
        if isinstance(values[0], str) and values[0]:
            params[name] = values[0]
    return params


async def read_body(
    request: web.Request, *, fields: Collection[str], allow_form: bool = False
) -> dict[str, Any]:
    """Parse a JSON object body (or a form body when ``allow_form``) with the ``fields``
    the handler reads.

    A JSON member outside ``fields`` is refused (400 ``invalid_request`` naming it):
    a misspelt field is never silently ignored. A form (OAuth's encoding) follows
    RFC 6749 §3.2 instead: an unknown parameter is ignored (clients send ones
    tessera has no use for, such as ``client_id``), one without a value is as if
    omitted. A member or parameter given twice is refused in either.

    Raises 415 for another content type, 413 above the app's ``client_max_size``,
    400 for malformed JSON or a JSON value that is not an object.
    """
    allowed = (JSON, FORM) if allow_form else (JSON,)
    if request.content_type not in allowed:
        raise UnsupportedMediaType(f"expected {' or '.join(allowed)}")
    _check_charset(request)
    raw = await _read_bytes(request)
    if request.content_type == FORM:
        try:
            form = await request.post()
        except ValueError as exc:  # UnicodeDecodeError: the form is not in its charset
            raise InvalidRequest("request body is not valid form data") from exc
        return _parameters(form)
    try:
        data = json.loads(raw, object_pairs_hook=_unique_members)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, bad UTF-8 and integers longer than
        # Python converts (4300 digits); RecursionError, nesting deeper than it recurses.
        raise MalformedJSON() from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    for name in data:
        if name not in fields:
            known = ", ".join(f"'{field}'" for field in fields)
            raise _field_error(f"unknown field '{name}' (this endpoint reads {known})", name)
    return data


def get_str(
    body: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    max_length: int = 1024,
    default: str | None = None,
) -> str | None:
    """A string field of ``body``, checked for presence, type and length."""
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required", details={"field": name})
        return default
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", details={"field": name})
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate, which JSON can spell as "\ud800"
            raise InvalidRequest(
                f"'{name}' must be valid Unicode", details={"field": name}
            ) from None
    if len(value) > max_length:
        raise InvalidRequest(
            f"'{name}' must be at most {max_length} characters", details={"field": name}
        )
    return value


def require_str(body: Mapping[str, Any], name: str, *, max_length: int = 1024) -> str:
    value = get_str(body, name, required=True, max_length=max_length)
    assert value is not None
    return value
