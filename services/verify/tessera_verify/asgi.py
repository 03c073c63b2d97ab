"""tessera-verify for any ASGI app (Starlette, FastAPI, Quart, Django's ASGI handler)::

    from tessera_verify.asgi import TesseraMiddleware
    from tessera_verify.integration import JwtConfig, TesseraVerify, VerifyConfig

    verify = TesseraVerify(VerifyConfig(issuer=..., audience=...,
                                        methods=(JwtConfig(jwks_url=...),), redis_url=...))
    app = TesseraMiddleware(app, verify=verify)
    # Starlette and FastAPI: always app.add_middleware(TesseraMiddleware, verify=verify);
    # wrapped from outside, their error middleware turns a dependency's 401 into a 500.
    # Behind a proxy, run the server without proxy headers (uvicorn --no-proxy-headers):
    # the peer address in the scope must be the proxy's own.

A pure ASGI 3 middleware on the same :class:`~tessera_verify.integration.TesseraVerify`
and authentication stack as the aiohttp integration: every HTTP request and
WebSocket handshake outside ``config.public_paths`` is checked, and the caller (or
None, anonymous) is put in the scope for :func:`principal_of` and
:func:`require_principal` (:mod:`tessera_verify.fastapi` wraps them as dependencies).

Refusals are RFC 9457 problem details, as in aiohttp: 401 for a bad credential (also
raised by ``require_principal`` inside the app, when nobody is calling), 403 for
:class:`~tessera_verify.errors.Forbidden`, 400 for a credential cookie sent twice, 503
when Redis or the JWKS endpoint is unreachable. A refused WebSocket handshake gets
the same response where the server supports the ``websocket.http.response``
extension, and is closed before it is accepted (HTTP 403) where it does not.

Connections open on the ASGI lifespan's startup and close on its shutdown; under a
server that runs no lifespan they open on the first request. asyncio only (Redis and
the JWKS client are asyncio's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from .error_middleware import error_response
from .errors import AuthenticationError, TesseraError
from .integration import HANDLER_REFUSALS, TesseraVerify
from .principal import Principal

__all__ = [
    "PRINCIPAL_SCOPE_KEY",
    "ScopeRequest",
    "TesseraMiddleware",
    "principal_of",
    "require_principal",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the middleware leaves the caller in the scope: a Principal, or None (anonymous).
PRINCIPAL_SCOPE_KEY = "tessera.principal"


def principal_of(scope: Scope) -> Principal | None:
    """The caller :class:`TesseraMiddleware` found, None when the request is anonymous."""
    if PRINCIPAL_SCOPE_KEY not in scope:
        raise RuntimeError("no TesseraMiddleware in front of this app: nothing checked the caller")
    principal: Principal | None = scope[PRINCIPAL_SCOPE_KEY]
    return principal


def require_principal(scope: Scope) -> Principal:
    """The caller; raises :class:`~tessera_verify.errors.AuthenticationError`, which the
    middleware answers 401, when the request is anonymous."""
    principal = principal_of(scope)
    if principal is None:
        raise AuthenticationError()
    return principal


@dataclass(frozen=True, slots=True)
class ScopeRequest:
    """An ASGI scope as the :class:`~tessera_verify.request_view.RequestView` the
    authenticators read."""

    headers: CIMultiDictProxy[str]
    remote: str | None

    @classmethod
    def of(cls, scope: Scope) -> ScopeRequest:
        # ASGI gives header names lowercased and both as bytes; HTTP says latin-1.
        headers = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        client = scope.get("client")
        return cls(CIMultiDictProxy(headers), client[0] if client else None)


class TesseraMiddleware:
    """Checks the credential of every request to ``app`` with ``verify``'s authenticators."""

    def __init__(self, app: ASGIApp, *, verify: TesseraVerify) -> None:
        self.app = app
        self.verify = verify
        self._connections: contextlib.AsyncExitStack | None = None
        self._starting = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        principal = None
        if scope["path"] not in self.verify.config.public_paths:
            if not self.verify.started:
                await self._start(lazily=True)
            try:
                principal = await self.verify.identify(ScopeRequest.of(scope))
            except TesseraError as error:
                await _refuse(scope, send, error)
                return
        scope = {**scope, PRINCIPAL_SCOPE_KEY: principal}  # a copy: the server's stays as it was
        responded = False

        async def watched_send(message: Message) -> None:
            nonlocal responded
            responded = responded or message["type"] in _FIRST_ANSWERS
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except HANDLER_REFUSALS as error:
            if responded:
                raise  # too late to answer: the server ends the response
            await _refuse(scope, send, error)

    def _lifespan_send(self, send: Send) -> Send:
        """``send`` for the lifespan scope: ours open once the app's startup is complete,
        and close before the server hears that its shutdown is."""

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._start(lazily=False)
                except Exception as exc:
                    log.exception("tessera-verify could not start")
                    message = {"type": "lifespan.startup.failed", "message": repr(exc)}
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._stop()
            await send(message)

        return lifespan_send

    async def _start(self, *, lazily: bool) -> None:
        async with self._starting:
            if self.verify.started:
                return
            if lazily:
                log.warning(
                    "no ASGI lifespan: tessera-verify opens its connections on the first request "
                    "and never closes them"
                )
            connections = contextlib.AsyncExitStack()
            await connections.enter_async_context(self.verify.running())
            self._connections = connections

    async def _stop(self) -> None:
        connections, self._connections = self._connections, None
        if connections is not None:
            await connections.aclose()


#: The messages that start an answer: after one, a refusal can no longer be sent.
_FIRST_ANSWERS = frozenset(
    {"http.response.start", "websocket.accept", "websocket.close", "websocket.http.response.start"}
)


async def _refuse(scope: Scope, send: Send, error: TesseraError) -> None:
    """Answer ``error`` as the aiohttp integration does (one mapping of errors to
    responses: :func:`~tessera_verify.error_middleware.error_response`)."""
    response = error_response(error)
    body = response.body
    assert isinstance(body, bytes)  # json_response's body is its encoded text
    headers = [(b"content-length", str(len(body)).encode())]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        start = {"type": "websocket.http.response.start", "status": response.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.code})
