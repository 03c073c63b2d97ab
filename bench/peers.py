"""What a Python user would otherwise pick, as the benchmark's peers.

Two minimal aiohttp services with the same ``GET /api/me`` shape as a
tessera replica, each the obvious way to do it with a popular library:

* ``jwt``: a handler that calls ``jwt.decode`` on every request (pyjwt,
  algorithm pinned, audience, issuer and the required claims checked), with
  the keys fetched once from tessera's JWKS at start-up;
* ``session``: ``aiohttp-session`` with its ``RedisStorage`` (redis-py's
  asyncio client), which reads the session from Redis on every request;
* ``bare``: aiohttp and nothing else, its ``GET /healthz`` answering the same JSON
  as a replica's: the floor tessera's own middleware adds to (the baseline's peer);
  with ``--middleware empty|service``, the same behind one middleware that does
  nothing, or behind tessera's service middleware: the rungs between the two.

Run as ``python -m bench.peers jwt|session|bare --port P --identity ID ...``, on the
event loop ``--loop`` names (``asyncio`` or ``uvloop``, as ``TESSERA_EVENT_LOOP``
picks the services'); no access log, like the tessera services during a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
import warnings
from typing import Any

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session import get_session, new_session
from aiohttp_session import setup as setup_sessions
from aiohttp_session.redis_storage import RedisStorage
from redis.asyncio import Redis

from tessera_platform.middleware import service_middleware
from tessera_platform.process_settings import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from tessera_platform.program import distribution_version
from tessera_platform.serve import new_event_loop
from tessera_verify.http_metrics import ServiceMetrics

__all__ = [
    "BARE_MIDDLEWARE",
    "PEER_SESSION_COOKIE",
    "bare_peer",
    "jwt_peer",
    "main",
    "session_peer",
]

PEER_SESSION_COOKIE = "AIOHTTP_SESSION"
REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti"]


def _healthz(identity: str) -> web.RouteDef:
    async def healthz(request: web.Request) -> web.Response:
        version = distribution_version("tessera-resource")
        return web.json_response({"status": "ok", "replica": identity, "version": version})

    return web.get("/healthz", healthz)


def _fetch_jwks(url: str) -> dict[str, Any]:
    if not url.startswith(("http://127.", "http://localhost")):
        raise ValueError("the peers fetch JWKS from loopback only")
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - checked above
        jwks: dict[str, Any] = json.load(response)
    return jwks


def jwt_peer(identity: str, *, jwks: dict[str, Any], issuer: str, audience: str) -> web.Application:
    """``jwt.decode`` on every request, keys by ``kid`` from a JWKS fetched once (at start)."""
    keys = {item["kid"]: jwt.PyJWK(item) for item in jwks["keys"] if "kid" in item}

    async def me(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise web.HTTPUnauthorized()
        token = header[len("Bearer ") :]
        try:
            key = keys[jwt.get_unverified_header(token).get("kid", "")]
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=audience,
                issuer=issuer,
                options={"require": REQUIRED},
            )
        except (KeyError, jwt.PyJWTError):
            raise web.HTTPUnauthorized() from None
        return web.json_response(
            {"user_id": claims["sub"], "auth_method": "jwt", "served_by": identity},
            headers={"Cache-Control": "no-store"},
        )

    app = web.Application()
    app.add_routes([web.get("/api/me", me), _healthz(identity)])
    return app


#: What ``bare`` may run in front of its handler: the rungs from aiohttp alone to a replica.
BARE_MIDDLEWARE = ("none", "empty", "service")


@web.middleware
async def _empty_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)


def bare_peer(identity: str, middleware: str = "none") -> web.Application:
    """aiohttp alone: ``GET /healthz`` as a replica answers it, without middleware, or with
    one that does nothing (``empty``: the price of aiohttp's middleware mechanism), or with
    tessera's service middleware (``service``: request ID, errors, metrics; no access log,
    as in the bench), so the report can say which layer the floor's cost sits in."""
    layers: list[Middleware] = []
    if middleware == "empty":
        layers.append(_empty_middleware)
    elif middleware == "service":
        layers.append(service_middleware(ServiceMetrics()))
    app = web.Application(middlewares=layers)
    app.add_routes([_healthz(identity)])
    return app


def session_peer(identity: str, *, redis_url: str) -> web.Application:
    """aiohttp-session's RedisStorage; ``POST /login`` starts a session without a password."""
    app = web.Application()
    redis = Redis.from_url(redis_url)
    setup_sessions(app, RedisStorage(redis, cookie_name=PEER_SESSION_COOKIE, httponly=True))

    async def close_redis(_: web.Application) -> None:
        await redis.aclose()

    app.on_cleanup.append(close_redis)

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        session = await new_session(request)
        session["user_id"] = str(body["user_id"])
        session["username"] = str(body["username"])
        return web.json_response({"ok": True})

    async def me(request: web.Request) -> web.Response:
        session = await get_session(request)
        if "user_id" not in session:
            raise web.HTTPUnauthorized()
        return web.json_response(
            {
                "user_id": session["user_id"],
                "username": session["username"],
                "auth_method": "aiohttp_session",
                "served_by": identity,
            },
            headers={"Cache-Control": "no-store"},
        )

    app.add_routes([web.post("/login", login), web.get("/api/me", me), _healthz(identity)])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("kind", choices=("jwt", "session", "bare"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--jwks-url")
    parser.add_argument("--issuer")
    parser.add_argument("--audience", default="tessera")
    parser.add_argument("--redis-url")
    parser.add_argument("--loop", choices=EVENT_LOOPS, default=DEFAULT_EVENT_LOOP)
    parser.add_argument("--middleware", choices=BARE_MIDDLEWARE, default="none")
    args = parser.parse_args(argv)
    # aiohttp-session stores its state under string keys, which aiohttp >= 3.14
    # warns about on every request; that is the library's business, not the benchmark's.
    warnings.filterwarnings("ignore", category=NotAppKeyWarning)
    if args.kind == "jwt":
        if not args.jwks_url or not args.issuer:
            parser.error("the jwt peer needs --jwks-url and --issuer")
        app = jwt_peer(
            args.identity,
            jwks=_fetch_jwks(args.jwks_url),
            issuer=args.issuer,
            audience=args.audience,
        )
    elif args.kind == "session":
        if not args.redis_url:
            parser.error("the session peer needs --redis-url")
        app = session_peer(args.identity, redis_url=args.redis_url)
    else:
        app = bare_peer(args.identity, args.middleware)
    loop: asyncio.AbstractEventLoop = new_event_loop(args.loop)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
