"""tessera-verify as another service uses it: a real aiohttp app and a real FastAPI app
(served by uvicorn on a socket), each protected by the package against a live auth
service (real PostgreSQL and Redis), and the auth-service client.

The aiohttp app has no error middleware of its own: ``install()`` alone must answer
every refusal as problem+json, never a 500. Each protected app reaches Redis through
a TCP proxy, so a test can take Redis away from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fastapi import FastAPI

from tessera_auth.app import create_app
from tessera_auth.settings import Settings
from tessera_verify.asgi import ScopeRequest, TesseraMiddleware
from tessera_verify.client import AuthServiceClient, AuthServiceRefusedClient, Introspection
from tessera_verify.clock import ManualClock
from tessera_verify.error_middleware import error_middleware
from tessera_verify.errors import (
    PROBLEM_JSON,
    AuthenticationError,
    InvalidTokenError,
    NotFound,
    ServiceUnavailable,
)
from tessera_verify.fastapi import Caller, OptionalCaller
from tessera_verify.integration import (
    JwtConfig,
    SharedSessionConfig,
    TesseraVerify,
    VerifyConfig,
)
from tessera_verify.principal import AuthMethod, Principal, get_principal
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import with_changes
from .tcp_proxy import TcpProxy

Client = TestClient[Any, Any]
INTROSPECTION_CLIENT = ("orders-service", "orders-secret-0123456789abcdef")


# --- the live auth service and a user holding a token and a session ---------------------


@pytest.fixture
async def auth_service(
    aiohttp_server: Callable[..., Awaitable[TestServer]], settings: Settings, clock: ManualClock
) -> TestServer:
    """The auth service on a socket, with one introspection client configured."""
    client_id, secret = INTROSPECTION_CLIENT
    configured = with_changes(settings, introspection_clients=((client_id, secret.encode()),))
    return await aiohttp_server(create_app(configured, clock=clock))


@pytest.fixture
async def auth(
    aiohttp_client: Callable[..., Awaitable[Client]], auth_service: TestServer
) -> Client:
    return await aiohttp_client(auth_service)


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    token: str
    refresh_token: str
    cookie: dict[str, str]

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def user(auth: Client) -> User:
    """A fresh user logged in for a token pair and a session cookie at once."""
    username = f"user-{uuid.uuid4().hex[:10]}"
    password = "correct horse battery staple"
    credentials = {"username": username, "password": password}
    response = await auth.post("/auth/register", json=credentials)
    assert response.status == 201, await response.text()
    response = await auth.post("/auth/login", json={**credentials, "credential": "both"})
    assert response.status == 200, await response.text()
    body = await response.json()
    cookie = {"Cookie": f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE].value}"}
    return User(body["user"]["id"], username, body["access_token"], body["refresh_token"], cookie)


# --- the two protected apps -------------------------------------------------------------


def _principal_json(principal: Principal | None) -> dict[str, Any]:
    if principal is None:
        return {"user_id": None}
    return {
        "user_id": principal.user_id,
        "method": principal.method.value,
        "username": principal.username,
    }


def aiohttp_app(verify: TesseraVerify, *, own_error_middleware: bool = False) -> web.Application:
    """A third-party aiohttp service: by default without any middleware of its own."""

    async def me(request: web.Request) -> web.Response:
        return web.json_response(_principal_json(get_principal(request)))

    async def missing(request: web.Request) -> web.Response:
        raise NotFound("no such order")

    app = web.Application(middlewares=[error_middleware] if own_error_middleware else [])
    verify.install(app)
    app.router.add_get("/me", me)
    app.router.add_get("/orders/42", missing)
    return app


def fastapi_app(verify: TesseraVerify) -> FastAPI:
    """A third-party FastAPI service: the middleware and the dependency."""
    app = FastAPI()
    app.add_middleware(TesseraMiddleware, verify=verify)

    @app.get("/me")
    async def me(caller: Caller) -> dict[str, Any]:
        return _principal_json(caller)

    @app.get("/hello")
    async def hello(caller: OptionalCaller) -> dict[str, Any]:
        return _principal_json(caller)

    return app


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port, with its lifespan; the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Protected:
    """A protected app on a socket, the Redis link it depends on, and an HTTP client."""

    url: str
    redis_link: TcpProxy
    http: aiohttp.ClientSession

    async def get(self, path: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        response = await self.http.get(self.url + path, headers=headers)
        await response.read()
        return response


@pytest.fixture
async def redis_link(settings: Settings) -> AsyncIterator[TcpProxy]:
    """A TCP proxy to the suite's Redis: closing it is Redis going down for the app."""
    target = urlsplit(settings.redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


def verify_config(
    auth_service: TestServer, settings: Settings, redis_link: TcpProxy
) -> VerifyConfig:
    """What a third-party service configures: the JWKS URL, the session key, Redis."""
    redis = urlsplit(settings.redis_url)
    return VerifyConfig(
        issuer=settings.issuer,
        audience=settings.audience,
        methods=(
            JwtConfig(jwks_url=str(auth_service.make_url("/.well-known/jwks.json"))),
            SharedSessionConfig(hash_key=settings.session_hash_key),
        ),
        redis_url=urlunsplit(redis._replace(netloc=f"127.0.0.1:{redis_link.port}")),
        dependency_timeout=1.0,
    )


ServeProtected = Callable[[str], contextlib.AbstractAsyncContextManager[Protected]]


@pytest.fixture
def serve_protected(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    auth_service: TestServer,
    settings: Settings,
    clock: ManualClock,
    redis_link: TcpProxy,
) -> ServeProtected:
    """Serve the ``"aiohttp"`` or the ``"fastapi"`` app, protected against ``auth_service``."""

    @contextlib.asynccontextmanager
    async def serve(framework: str) -> AsyncIterator[Protected]:
        verify = TesseraVerify(verify_config(auth_service, settings, redis_link), clock=clock)
        async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
            if framework == "aiohttp":
                server = await aiohttp_server(aiohttp_app(verify))
                url = str(server.make_url("")).rstrip("/")
            else:
                url = await stack.enter_async_context(uvicorn_serving(fastapi_app(verify)))
            yield Protected(url, redis_link, http)

    return serve


@pytest.fixture(params=["aiohttp", "fastapi"])
async def protected(
    request: pytest.FixtureRequest, serve_protected: ServeProtected
) -> AsyncIterator[Protected]:
    async with serve_protected(request.param) as protected:
        yield protected


async def _problem(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    body: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    assert body["status"] == status
    assert body["error"] == code
    return body


# --- refusals and callers, the same in both frameworks ----------------------------------


async def test_an_anonymous_request_is_401_problem_json_never_a_500(protected: Protected) -> None:
    response = await protected.get("/me")
    await _problem(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tessera"'
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_bad_token_is_401_invalid_token(protected: Protected) -> None:
    response = await protected.get("/me", {"Authorization": "Bearer not.a.token"})
    await _problem(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_real_access_token_is_the_caller(protected: Protected, user: User) -> None:
    response = await protected.get("/me", user.bearer)
    assert response.status == 200, await response.text()
    assert await response.json() == {"user_id": user.user_id, "method": "jwt", "username": None}


async def test_a_session_cookie_is_the_caller(protected: Protected, user: User) -> None:
    response = await protected.get("/me", user.cookie)
    assert response.status == 200, await response.text()
    assert await response.json() == {
        "user_id": user.user_id,
        "method": "shared_session",
        "username": user.username,
    }


async def test_a_token_revoked_by_logout_is_401(
    protected: Protected, user: User, auth: Client
) -> None:
    assert (await protected.get("/me", user.bearer)).status == 200  # verified and cached
    logout = await auth.post("/auth/logout", headers=user.bearer)
    assert logout.status == 200, await logout.text()
    # The revocation reaches the app through Redis: a moment, never a cache's lifetime.
    for _ in range(100):
        response = await protected.get("/me", user.bearer)
        if response.status != 200:
            break
        await asyncio.sleep(0.02)
    body = await _problem(response, 401, "invalid_token")
    assert body["detail"] == "the access token has been revoked"


async def test_a_session_ended_by_logout_is_401(
    protected: Protected, user: User, auth: Client
) -> None:
    assert (await protected.get("/me", user.cookie)).status == 200
    logout = await auth.post("/auth/logout", headers=user.cookie)
    assert logout.status == 200, await logout.text()
    for _ in range(100):
        response = await protected.get("/me", user.cookie)
        if response.status != 200:
            break
        await asyncio.sleep(0.02)
    await _problem(response, 401, "invalid_session")


async def test_redis_down_is_503_never_500(
    protected: Protected, user: User, clock: ManualClock
) -> None:
    assert (await protected.get("/me", user.bearer)).status == 200
    await protected.redis_link.close()
    # Past the revocation copy's allowed staleness nothing may be answered from memory.
    clock.advance(10)
    for headers in (user.bearer, user.cookie):
        response = await protected.get("/me", headers)
        await _problem(response, 503, "dependency_unavailable")
        assert response.headers["Retry-After"] == "1"


async def test_a_session_cookie_sent_twice_is_400_duplicate_cookie(
    protected: Protected, user: User
) -> None:
    cookie = user.cookie["Cookie"]
    response = await protected.get("/me", {"Cookie": f"{cookie}; {cookie}"})
    await _problem(response, 400, "duplicate_cookie")


async def test_a_bad_token_on_a_public_path_is_not_looked_at(protected: Protected) -> None:
    response = await protected.get("/healthz", {"Authorization": "Bearer not.a.token"})
    assert response.status == 404  # neither app has one: reached the router, not refused


# --- each framework's own side ----------------------------------------------------------


async def test_install_keeps_the_apps_own_error_middleware_for_everything_else(
    aiohttp_client: Callable[..., Awaitable[Client]],
    auth_service: TestServer,
    settings: Settings,
    clock: ManualClock,
    redis_link: TcpProxy,
) -> None:
    verify = TesseraVerify(verify_config(auth_service, settings, redis_link), clock=clock)
    client = await aiohttp_client(aiohttp_app(verify, own_error_middleware=True))
    refused = await client.get("/me")
    assert refused.status == 401
    assert (await refused.json(content_type=PROBLEM_JSON))["error"] == "unauthenticated"
    assert refused.headers.getall("WWW-Authenticate") == ['Bearer realm="tessera"']  # once
    # What a handler raises besides a refusal is still the app's middleware's to answer.
    response = await client.get("/orders/42")
    assert response.status == 404
    assert (await response.json(content_type=PROBLEM_JSON))["detail"] == "no such order"


async def test_fastapi_optional_caller_is_none_when_anonymous_and_the_caller_otherwise(
    serve_protected: ServeProtected, user: User
) -> None:
    async with serve_protected("fastapi") as protected:
        anonymous = await protected.get("/hello")
        assert anonymous.status == 200
        assert await anonymous.json() == {"user_id": None}
        known = await protected.get("/hello", user.bearer)
        assert (await known.json())["user_id"] == user.user_id
        bad = await protected.get("/hello", {"Authorization": "Bearer x"})
        await _problem(bad, 401, "invalid_token")  # a bad credential is never anonymous


async def test_the_asgi_middleware_refuses_a_websocket_with_a_bad_token_before_accepting(
    auth_service: TestServer, settings: Settings, clock: ManualClock, redis_link: TcpProxy
) -> None:
    reached = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)
        await send({"type": "websocket.accept"})

    verify = TesseraVerify(verify_config(auth_service, settings, redis_link), clock=clock)
    middleware = TesseraMiddleware(app, verify=verify)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/feed",
        "headers": [(b"authorization", b"Bearer not.a.token")],
        "client": ("127.0.0.1", 50000),
    }
    async with verify.running():
        await middleware(scope, receive, send)
    assert reached == []
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid_token"}]


# --- the auth-service client --------------------------------------------------------------


@pytest.fixture
async def auth_client(auth_service: TestServer) -> AsyncIterator[AuthServiceClient]:
    client_id, secret = INTROSPECTION_CLIENT
    async with aiohttp.ClientSession() as http:
        yield AuthServiceClient(
            http, str(auth_service.make_url("")), client_id=client_id, client_secret=secret
        )


async def test_introspection_of_a_live_token_is_active_with_its_subject(
    auth_client: AuthServiceClient, user: User
) -> None:
    answer = await auth_client.introspect(user.token)
    assert answer.active
    assert answer.token_type == "access_token"
    assert answer.subject == user.user_id
    assert answer.expires_at is not None


async def test_introspection_of_a_revoked_token_is_inactive(
    auth_client: AuthServiceClient, user: User, auth: Client
) -> None:
    assert (await auth.post("/auth/logout", headers=user.bearer)).status == 200
    answer = await auth_client.introspect(user.token)
    assert answer == Introspection(active=False, claims={"active": False})  # and nothing else
    refresh = await auth_client.introspect(user.refresh_token, token_type_hint="refresh_token")
    assert refresh.active  # logout with a bearer token revokes that token alone


async def test_introspection_with_a_wrong_client_secret_is_a_configuration_error(
    auth_service: TestServer, user: User
) -> None:
    async with aiohttp.ClientSession() as http:
        client = AuthServiceClient(
            http, str(auth_service.make_url("")), client_id="orders-service", client_secret="x"
        )
        with pytest.raises(AuthServiceRefusedClient):
            await client.introspect(user.token)


async def test_forward_auth_names_the_caller_of_a_token_or_a_cookie(
    auth_client: AuthServiceClient, user: User
) -> None:
    for headers, method in (
        (user.bearer, AuthMethod.JWT),
        (user.cookie, AuthMethod.SHARED_SESSION),
    ):
        request = make_view(headers)
        principal = await auth_client.forward(request)
        assert (principal.user_id, principal.username, principal.method) == (
            user.user_id,
            user.username,
            method,
        )


async def test_forward_auth_refuses_a_bad_or_missing_credential_as_401(
    auth_client: AuthServiceClient,
) -> None:
    with pytest.raises(InvalidTokenError):
        await auth_client.forward(make_view({"Authorization": "Bearer not.a.token"}))
    with pytest.raises(AuthenticationError):
        await auth_client.forward(make_view({}))


async def test_an_unreachable_auth_service_is_503() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with aiohttp.ClientSession() as http:
            client = AuthServiceClient(
                http, f"http://127.0.0.1:{port}", client_id="a", client_secret="b"
            )
            with pytest.raises(ServiceUnavailable):
                await client.introspect("token")
            with pytest.raises(ServiceUnavailable):
                await client.forward(make_view({"Authorization": "Bearer x"}))


def make_view(headers: dict[str, str]) -> ScopeRequest:
    """The credentials of an incoming request, as a service would pass them on."""
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return ScopeRequest.of({"headers": raw, "client": ("127.0.0.1", 50000)})


# --- the package's shape --------------------------------------------------------------------


def test_fastapi_is_an_extra_and_the_asgi_middleware_imports_none_of_it() -> None:
    requirements = importlib.metadata.requires("tessera-verify") or []
    web_frameworks = [r for r in requirements if r.startswith(("fastapi", "starlette"))]
    assert web_frameworks
    assert all('extra == "fastapi"' in r for r in web_frameworks), web_frameworks
    code = (
        "import sys, tessera_verify.asgi, tessera_verify.client, tessera_verify.integration\n"
        "assert not {'fastapi', 'starlette'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
