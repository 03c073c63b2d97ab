"""The nginx policies: every rendered configuration passes ``nginx -t``, and a real
nginx in front of stand-in upstreams routes, retries and guards headers as the
templates say it does.

The stand-in replicas and auth service are small aiohttp apps that record what
nginx sent them; nginx, TLS and the balancing are the real thing. Where what
matters is how nginx relays the real auth service's verdict (a session cookie
sent twice), the real auth service on real PostgreSQL and Redis answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tessera_stack import StackError, free_port
from tessera_stack.compose_nginx import render_compose
from tessera_stack.nginx_conf import (
    POLICIES,
    NginxConfig,
    Replica,
    default_demo_site,
    default_template_dir,
    render,
    render_to,
)
from tessera_stack.servers import NginxServer, nginx_check
from tessera_stack.tls import TlsFiles
from tessera_verify.errors import PROBLEM_JSON, AuthenticationError, ServiceUnavailable
from tessera_verify.sessions import INSECURE_SESSION_COOKIE, SESSION_COOKIE
from tests.conftest import AuthClientFactory, register_and_login
from tests.stack_clients import https_client, source_address

SECRET = "forward-secret-" + "x" * 40
IDENTITY_HEADERS = (
    "X-Tessera-User-Id",
    "X-Tessera-Username",
    "X-Tessera-Auth-Method",
    "X-Tessera-Forward-Secret",
)


def _config(
    tmp_path: Path,
    tls: TlsFiles,
    policy: str,
    replicas: Sequence[Replica],
    *,
    https_port: int = 8443,
    auth_port: int = 8080,
) -> NginxConfig:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return NginxConfig(
        policy=policy,
        nginx_dir=tmp_path / "nginx",
        log_dir=tmp_path / "logs",
        https_port=https_port,
        auth_port=auth_port,
        replicas=tuple(replicas),
        tls_cert=tls.cert,
        tls_key=tls.key,
        forward_secret=SECRET if policy == "forward_auth" else None,
        worker_processes="2",
    )


THREE = (Replica("r1", 18081), Replica("r2", 18082), Replica("r3", 18083))


# -- rendering -------------------------------------------------------------------


def _retry_conditions(text: str) -> list[list[str]]:
    return [
        line.split("proxy_next_upstream ", 1)[1].rstrip(";").split()
        for line in text.splitlines()
        if line.strip().startswith("proxy_next_upstream ")
    ]


def test_every_nginx_config_retries_a_replica_only_when_it_cannot_be_reached(
    tmp_path: Path, tls: TlsFiles
) -> None:
    """Local policies, the compose config and the Kubernetes ingress alike: a replica's
    503 is never retried (which would count it as a failure and trip max_fails)."""
    root = Path(__file__).resolve().parents[1]
    found: dict[str, list[list[str]]] = {}
    for policy in POLICIES:
        files = render(_config(tmp_path, tls, policy, THREE))
        found[policy] = [c for text in files.values() for c in _retry_conditions(text)]
    # What the compose nginx image renders at build time (tests/test_deploy_compose.py
    # checks the image's own render command produces exactly this).
    found["compose"] = [c for text in render_compose().values() for c in _retry_conditions(text)]
    ingress = (root / "deploy" / "k8s" / "ingress.yaml").read_text()
    annotation = "nginx.ingress.kubernetes.io/proxy-next-upstream:"
    found["k8s"] = [
        line.split(":", 1)[1].strip().strip('"').split()
        for line in ingress.splitlines()
        if line.strip().startswith(annotation)
    ]
    assert found == {name: [["error", "timeout"]] for name in found}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_renders_to_a_configuration_nginx_accepts(
    policy: str, tmp_path: Path, tls: TlsFiles
) -> None:
    target = render_to(_config(tmp_path, tls, policy, THREE), tmp_path / "nginx" / "conf")
    nginx_check(target.entry, tmp_path / "nginx")
    text = target.entry.read_text()
    assert "{{" not in "".join(path.read_text() for path in target.directory.glob("*.conf"))
    for replica in THREE:
        assert f"server 127.0.0.1:{replica.port} " in text


def test_paths_with_spaces_are_quoted_and_still_accepted(tmp_path: Path, tls: TlsFiles) -> None:
    base = tmp_path / "run dir with spaces"
    base.mkdir()
    target = render_to(_config(base, tls, "round_robin", THREE), base / "nginx" / "conf")
    nginx_check(target.entry, base / "nginx")
    assert f'pid "{base}/nginx/nginx.pid";' in (target.directory / "main.conf").read_text()


def test_route_cookie_gives_each_replica_a_group_with_the_others_as_backup(
    tmp_path: Path, tls: TlsFiles
) -> None:
    text = render(_config(tmp_path, tls, "route_cookie", THREE))["nginx.conf"]
    group = text[text.index("upstream tessera_route_r2 {") :]
    group = group[: group.index("}")]
    servers = [line.strip() for line in group.splitlines() if line.strip().startswith("server")]
    assert servers[0].startswith("server 127.0.0.1:18082 ") and "backup" not in servers[0]
    assert all(line.endswith("backup;") for line in (s.split("  #")[0] for s in servers[1:]))
    assert len(servers) == 3
    assert "r2 tessera_route_r2;" in text


def test_forward_auth_subrequest_carries_no_body_and_the_secret_reaches_only_replicas(
    tmp_path: Path, tls: TlsFiles
) -> None:
    files = render(_config(tmp_path, tls, "forward_auth", THREE))
    entry = files["nginx.conf"]
    internal = entry[entry.index("location = /_tessera/forward-auth") :]
    internal = internal[: internal.index("}")]
    assert "internal;" in internal
    assert "proxy_pass_request_body off;" in internal
    assert 'proxy_set_header Content-Length "";' in internal
    assert SECRET in files["identity_forward.conf"]
    assert "identity_forward.conf" not in render(_config(tmp_path, tls, "round_robin", THREE))


def test_rendered_configuration_is_private_because_it_may_hold_the_secret(
    tmp_path: Path, tls: TlsFiles
) -> None:
    target = render_to(_config(tmp_path, tls, "forward_auth", THREE), tmp_path / "conf")
    assert target.directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in target.directory.glob("*.conf"))


def test_invalid_configurations_are_refused_with_every_reason(
    tmp_path: Path, tls: TlsFiles
) -> None:
    config = _config(tmp_path, tls, "forward_auth", ())
    bad = NginxConfig(**{**config.__dict__, "forward_secret": None, "policy": "forward_auth"})
    with pytest.raises(StackError) as excinfo:
        render(bad)
    assert "at least one replica" in str(excinfo.value)
    assert "forward-auth secret" in str(excinfo.value)
    with pytest.raises(StackError, match="unknown policy"):
        render(_config(tmp_path, tls, "sticky", THREE))
    with pytest.raises(ValueError, match="replica id"):
        Replica("r1; evil", 1)


def test_an_unknown_placeholder_in_a_template_is_an_error(tmp_path: Path, tls: TlsFiles) -> None:
    from tessera_stack.nginx_conf import default_template_dir

    templates = tmp_path / "templates"
    shutil.copytree(default_template_dir(), templates)
    server = templates / "server.conf"
    server.write_text(server.read_text() + "\n# {{ no_such_value }}\n")
    with pytest.raises(StackError, match="no_such_value"):
        render(_config(tmp_path, tls, "round_robin", THREE), templates)


# -- stand-in upstreams -----------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """A stand-in service on a free loopback port that records every request."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0
    #: While set, it answers like a tessera service whose Redis is down.
    outage: bool = False

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def _serve(
    upstream: Upstream, handler: Callable[[web.Request], Awaitable[web.Response]]
) -> None:
    async def record(request: web.Request) -> web.Response:
        upstream.seen.append(
            Seen(
                request.method, request.path_qs, CIMultiDict(request.headers), await request.read()
            )
        )
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.runner = runner
    upstream.port = runner.addresses[0][1]


REPLICA_RETRY_AFTER = "2"
AUTH_RETRY_AFTER = "7"
DEPENDENCY_DOWN = ServiceUnavailable().body()
#: Where nginx sends a browser /app/ refuses (the auth service answers the redirect).
PORTAL_START = "/auth/portal/start"


def _portal_login(rd: str) -> str:
    """The login form's URL with ``rd`` as its return URL, as the portal answers it."""
    return "/auth/portal/login?" + urlencode({"rd": rd})


def _dependency_down(retry_after: str, headers: dict[str, str] | None = None) -> web.Response:
    """A tessera service's answer while Redis or PostgreSQL is down."""
    return web.json_response(
        DEPENDENCY_DOWN,
        status=503,
        headers={"Retry-After": retry_after, "Cache-Control": "no-store", **(headers or {})},
        content_type=PROBLEM_JSON,
    )


async def fake_replica(name: str) -> Upstream:
    """Answers like a replica: X-Served-By, and the route cookie when it differs."""
    upstream = Upstream(name)

    async def handler(request: web.Request) -> web.Response:
        if upstream.outage:
            return _dependency_down(REPLICA_RETRY_AFTER, {"X-Served-By": name})
        response = web.json_response(
            {"replica": name}, headers={"X-Served-By": name, "X-Auth-Method": "shared_session"}
        )
        if request.cookies.get("tessera_route") != name:
            response.set_cookie(
                "tessera_route", name, path="/", secure=True, httponly=True, samesite="Lax"
            )
        return response

    await _serve(upstream, handler)
    return upstream


async def fake_auth() -> Upstream:
    """``/auth/forward`` knows the cookie ``session=good``; everything else echoes."""
    upstream = Upstream("auth")

    async def handler(request: web.Request) -> web.Response:
        if upstream.outage:
            return _dependency_down(AUTH_RETRY_AFTER)
        if request.path == "/auth/forward":
            if request.cookies.get("session") == "good":
                return web.Response(
                    headers={
                        "X-Tessera-User-Id": "user-1",
                        "X-Tessera-Username": "alice",
                        "X-Tessera-Auth-Method": "session",
                    }
                )
            return web.json_response(
                AuthenticationError().body(),
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="tessera"'},
                content_type=PROBLEM_JSON,
            )
        if request.path == PORTAL_START:
            # The portal's contract: the URL from X-Original-URL, encoded into rd.
            rd = request.headers.get("X-Original-URL", "")
            return web.Response(
                status=302,
                headers={"Location": _portal_login(rd), "Cache-Control": "no-store"},
            )
        return web.json_response({"service": "auth", "path": request.path})

    await _serve(upstream, handler)
    return upstream


@dataclass
class Crasher:
    """Reads a request's head, then drops the connection: a replica dying mid-request."""

    server: asyncio.Server
    port: int
    requests: list[bytes] = field(default_factory=list)


async def crashing_upstream() -> Crasher:
    holder: list[Crasher] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            holder[0].requests.append(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    holder.append(Crasher(server, port))
    return holder[0]


@asynccontextmanager
async def running_nginx(
    tmp_path: Path, tls: TlsFiles, policy: str, replicas: Sequence[Replica], auth_port: int
) -> AsyncIterator[tuple[NginxServer, str]]:
    https_port = free_port()
    config = _config(tmp_path, tls, policy, replicas, https_port=https_port, auth_port=auth_port)
    target = render_to(config, tmp_path / "nginx" / "conf")
    server = NginxServer(
        tmp_path / "nginx", target.entry, port=https_port, log_path=tmp_path / "logs" / "nginx.log"
    )
    await asyncio.to_thread(server.start)
    try:
        yield server, f"https://127.0.0.1:{https_port}"
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def replicas() -> AsyncIterator[list[Upstream]]:
    started = [await fake_replica(f"r{n}") for n in (1, 2, 3)]
    yield started
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def auth() -> AsyncIterator[Upstream]:
    upstream = await fake_auth()
    yield upstream
    await upstream.stop()


def _set_only_cookie(client: aiohttp.ClientSession, url: str, name: str, value: str) -> None:
    client.cookie_jar.clear()
    client.cookie_jar.update_cookies({name: value}, response_url=URL(url))


def _replicas(upstreams: Sequence[Upstream]) -> list[Replica]:
    return [Replica(u.name, u.port) for u in upstreams]


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "error"}


async def _nginx_problem(response: aiohttp.ClientResponse, status: int, code: str) -> str:
    """Assert ``response`` is an error nginx made itself, in the services' shape (RFC 9457
    problem details with the stable ``code``), with the headers every response has;
    return its ``detail``."""
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"] == PROBLEM_JSON, text
    body = json.loads(text)
    assert set(body) == PROBLEM_MEMBERS, body
    assert body["type"] == "about:blank" and body["status"] == status, body
    assert body["error"] == code, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "X-Request-ID" in response.headers
    _assert_hsts(response)
    detail: str = body["detail"]
    return detail


# -- behaviour ----------------------------------------------------------------------


async def test_round_robin_spreads_requests_and_sends_request_id_and_client_address(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert, source_address(4)) as client,
    ):
        served = []
        for _ in range(6):
            async with client.get(f"{url}/api/me") as response:
                assert response.status == 200
                served.append(response.headers["X-Served-By"])
                request_id = response.headers["X-Request-ID"]
        assert sorted(served) == ["r1", "r1", "r2", "r2", "r3", "r3"]
    everything = [seen for u in replicas for seen in u.seen]
    assert request_id in {seen.headers["X-Request-ID"] for seen in everything}
    assert len({seen.headers["X-Request-ID"] for seen in everything}) == 6
    for seen in everything:
        assert seen.headers["X-Forwarded-For"] == source_address(4) == "127.0.5.1"
        assert seen.headers["X-Forwarded-Proto"] == "https"
        assert seen.headers["Host"] == url.removeprefix("https://")
        # HTTP/1.1 without "Connection: close": the upstream connection is kept alive.
        assert "close" not in seen.headers.get("Connection", "").lower()


@pytest.mark.parametrize("policy", ["round_robin", "ip_hash", "route_cookie", "least_conn"])
async def test_client_supplied_identity_and_forwarding_headers_never_reach_a_replica(
    policy: str, tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    forged = {name: "forged" for name in IDENTITY_HEADERS}
    forged["X-Forwarded-For"] = "203.0.113.9"
    forged["X-Request-ID"] = "chosen-by-client"
    async with (
        running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert, source_address(0)) as client,
    ):
        for path in ("/api/me", "/auth/me"):
            async with client.get(url + path, headers=forged) as response:
                assert response.status == 200
    everything = [seen for upstream in (*replicas, auth) for seen in upstream.seen]
    assert len(everything) == 2
    for seen in everything:
        assert not any(name in seen.headers for name in IDENTITY_HEADERS)
        assert seen.headers["X-Forwarded-For"] == "127.0.1.1"
        assert seen.headers["X-Request-ID"] != "chosen-by-client"


async def test_the_certificate_is_valid_for_127_0_0_1_and_localhost(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        for base in (url, url.replace("127.0.0.1", "localhost")):
            async with client.get(f"{base}/.well-known/jwks.json") as response:
                assert response.status == 200
                assert await response.json() == {
                    "service": "auth",
                    "path": "/.well-known/jwks.json",
                }
            async with client.get(f"{base}/elsewhere") as response:
                await _nginx_problem(response, 404, "not_found")


async def test_ip_hash_keeps_each_slash_24_on_one_replica(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async def served_to(url: str, address: str) -> set[str]:
        async with https_client(tls.ca_cert, address) as client:
            seen = set()
            for _ in range(4):
                async with client.get(f"{url}/api/me") as response:
                    seen.add(response.headers["X-Served-By"])
            return seen

    async with running_nginx(tmp_path, tls, "ip_hash", _replicas(replicas), auth.port) as (_, url):
        by_network = [await served_to(url, source_address(i)) for i in range(3)]
        # Same /24 as source_address(0): nginx cannot tell them apart.
        neighbour = await served_to(url, "127.0.1.77")
    assert all(len(seen) == 1 for seen in by_network)
    assert set().union(*by_network) == {"r1", "r2", "r3"}
    assert neighbour == by_network[0]


async def test_route_cookie_sticks_and_falls_back_to_a_live_replica_when_its_own_is_gone(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with (
        running_nginx(tmp_path, tls, "route_cookie", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert, source_address(1)) as client,
    ):
        first = []
        for _ in range(3):
            client.cookie_jar.clear()
            async with client.get(f"{url}/api/me") as response:
                first.append(response.headers["X-Served-By"])
        # Without the cookie: round-robin, so new visitors spread.
        assert sorted(first) == ["r1", "r2", "r3"]

        _set_only_cookie(client, url, "tessera_route", "r2")
        for _ in range(4):
            async with client.get(f"{url}/api/me") as response:
                assert response.headers["X-Served-By"] == "r2"

        await replicas[1].stop()
        async with client.get(f"{url}/api/me") as response:
            assert response.status == 200
            fallback = response.headers["X-Served-By"]
            assert fallback in {"r1", "r3"}
            assert response.cookies["tessera_route"].value == fallback
        async with client.get(f"{url}/api/me") as response:
            assert response.headers["X-Served-By"] == fallback

        _set_only_cookie(client, url, "tessera_route", "r9")
        async with client.get(f"{url}/api/me") as response:
            assert response.status == 200


async def test_forward_auth_passes_identity_from_auth_and_refuses_strangers_itself(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    forged = {name: "forged" for name in IDENTITY_HEADERS}
    async with (
        running_nginx(tmp_path, tls, "forward_auth", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert, source_address(2)) as client,
    ):
        async with client.get(f"{url}/api/me", headers=forged) as response:
            await _nginx_problem(response, 401, "unauthenticated")
            # The auth service's challenge, once (auth_request copies it by itself).
            assert response.headers.getall("WWW-Authenticate") == ['Bearer realm="tessera"']
            assert response.headers["Cache-Control"] == "no-store"
        assert not any(upstream.seen for upstream in replicas)

        _set_only_cookie(client, url, "session", "good")
        body = b'{"body": "' + b"x" * 2000 + b'"}'
        async with client.post(
            f"{url}/api/comments",
            data=body,
            headers={**forged, "Content-Type": "application/json"},
        ) as response:
            assert response.status == 200
        async with client.get(f"{url}/_tessera/forward-auth") as response:
            assert response.status == 404

    (seen,) = [s for upstream in replicas for s in upstream.seen]
    assert seen.method == "POST"
    assert seen.body == body
    assert seen.headers["X-Tessera-User-Id"] == "user-1"
    assert seen.headers["X-Tessera-Username"] == "alice"
    assert seen.headers["X-Tessera-Auth-Method"] == "session"
    assert seen.headers.getall("X-Tessera-Forward-Secret") == [SECRET]
    checks = [s for s in auth.seen if s.path == "/auth/forward"]
    assert len(checks) == 2
    post_check = checks[1]
    assert post_check.method == "GET"
    assert post_check.body == b""
    assert "Content-Length" not in post_check.headers
    assert post_check.headers["X-Original-Method"] == "POST"
    assert post_check.headers["X-Original-URI"] == "/api/comments"
    assert not any(name in post_check.headers for name in IDENTITY_HEADERS)


async def test_forward_auth_answers_503_when_the_auth_service_is_down(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with (
        running_nginx(tmp_path, tls, "forward_auth", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        await auth.stop()
        async with client.get(f"{url}/api/me", cookies={"session": "good"}) as response:
            await _nginx_problem(response, 503, "dependency_unavailable")
            # nginx's own 503 says when to come back, like the services' do.
            assert response.headers["Retry-After"] == "1"
            assert response.headers["Cache-Control"] == "no-store"
    assert not any(upstream.seen for upstream in replicas)


async def test_forward_auth_turns_the_auth_services_503_into_a_503_with_its_retry_after(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    # auth_request itself would answer 500 to anything but 2xx/401/403.
    async with (
        running_nginx(tmp_path, tls, "forward_auth", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        auth.outage = True
        for _ in range(3):
            async with client.get(f"{url}/api/me", cookies={"session": "good"}) as response:
                await _nginx_problem(response, 503, "dependency_unavailable")
                assert response.headers["Retry-After"] == AUTH_RETRY_AFTER
        # The auth service's own routes pass its 503 through untouched.
        async with client.get(f"{url}/auth/me") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == AUTH_RETRY_AFTER
            assert response.content_type == PROBLEM_JSON
            assert await response.json(content_type=None) == DEPENDENCY_DOWN
        auth.outage = False
        async with client.get(f"{url}/api/me", cookies={"session": "good"}) as response:
            assert response.status == 200
    assert sum(len(upstream.seen) for upstream in replicas) == 1


@pytest.mark.parametrize("cookie_insecure", [False, True])
async def test_forward_auth_relays_the_real_auth_services_400_for_a_session_cookie_sent_twice(
    cookie_insecure: bool,
    tmp_path: Path,
    tls: TlsFiles,
    replicas: list[Upstream],
    make_auth_client: AuthClientFactory,
) -> None:
    """The real auth service (on real PostgreSQL and Redis) decides; nginx relays its
    400 in the services' error shape instead of auth_request's 500."""
    direct = await make_auth_client(cookie_insecure=cookie_insecure)
    account = await register_and_login(direct, credential="none")
    username = account["user"]["username"]
    login = await direct.post(
        "/auth/login", json={"username": username, "password": account["password"]}
    )
    name = INSECURE_SESSION_COOKIE if cookie_insecure else SESSION_COOKIE
    cookie = login.cookies[name].value
    assert direct.port is not None

    async with (
        running_nginx(tmp_path, tls, "forward_auth", _replicas(replicas), direct.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        async with client.get(f"{url}/api/me", headers={"Cookie": f"{name}={cookie}"}) as ok:
            assert ok.status == 200, await ok.text()
        twice = {"Cookie": f"{name}={'a' * 43}; other=1; {name}={cookie}"}
        for method in ("GET", "POST"):
            # aiohttp merges its jar into a Cookie header, keeping one copy of each name.
            client.cookie_jar.clear()
            async with client.request(method, f"{url}/api/comments", headers=twice) as response:
                detail = await _nginx_problem(response, 400, "duplicate_cookie")
                assert detail == "a session cookie was sent more than once"
        async with client.get(f"{url}/api/me", headers={"Cookie": f"{name}={'a' * 43}"}) as gone:
            await _nginx_problem(gone, 401, "unauthenticated")
            assert gone.headers.getall("WWW-Authenticate") == ['Bearer realm="tessera"']
    (seen,) = [s for upstream in replicas for s in upstream.seen]
    assert seen.headers["X-Tessera-Username"] == username


async def test_a_get_in_flight_on_a_dying_replica_is_retried_but_a_post_is_not(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    crasher = await crashing_upstream()
    # The crashing replica is listed first, so round-robin picks it first.
    upstreams = [Replica("r9", crasher.port), Replica("r1", replicas[0].port)]
    try:
        async with (
            running_nginx(tmp_path, tls, "round_robin", upstreams, auth.port) as (_, url),
            https_client(tls.ca_cert) as client,
        ):
            async with client.get(f"{url}/api/comments") as response:
                assert response.status == 200
                assert response.headers["X-Served-By"] == "r1"
            assert len(crasher.requests) == 1
        async with (
            running_nginx(tmp_path, tls, "round_robin", upstreams, auth.port) as (_, url),
            https_client(tls.ca_cert) as client,
        ):
            async with client.post(f"{url}/api/comments", json={"body": "once"}) as response:
                await _nginx_problem(response, 502, "bad_gateway")
            assert crasher.requests[-1].startswith(b"POST ")
            # A refused connection is safe to retry even for a POST.
            async with client.post(f"{url}/api/comments", json={"body": "again"}) as response:
                assert response.status == 200
    finally:
        crasher.server.close()
        await crasher.server.wait_closed()
    assert [seen.method for seen in replicas[0].seen] == ["GET", "POST"]


def _route(policy: str, client: aiohttp.ClientSession, url: str, replica: str) -> None:
    """For route_cookie, stick ``client`` to ``replica``; other policies need nothing."""
    if policy == "route_cookie":
        _set_only_cookie(client, url, "tessera_route", replica)
    elif policy == "forward_auth":
        _set_only_cookie(client, url, "session", "good")


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_replicas_503_reaches_the_client_as_it_is_and_marks_no_replica_failed(
    policy: str, tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    """A shared dependency down: every replica answers 503; nginx neither retries that
    elsewhere nor counts it as a failure, so the first request after the outage works."""
    requests = 6
    async with (
        running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert, source_address(3)) as client,
    ):
        _route(policy, client, url, "r2")
        for upstream in replicas:
            upstream.outage = True
        for _ in range(requests):
            async with client.get(f"{url}/api/me") as response:
                assert response.status == 503
                assert response.content_type == PROBLEM_JSON
                assert await response.json(content_type=None) == DEPENDENCY_DOWN
                assert response.headers["Retry-After"] == REPLICA_RETRY_AFTER
                assert response.headers["Cache-Control"] == "no-store"
                assert response.headers["X-Served-By"] in {"r1", "r2", "r3"}
        # One replica per request: a 503 is the answer, not a reason to ask another.
        assert sum(len(upstream.seen) for upstream in replicas) == requests

        for upstream in replicas:
            upstream.outage = False
        served = []
        for _ in range(requests):
            async with client.get(f"{url}/api/me") as response:
                assert response.status == 200
                served.append(response.headers["X-Served-By"])
    if policy == "route_cookie":
        assert set(served) == {"r2"}
    elif policy == "ip_hash":
        assert len(set(served)) == 1
    else:
        # Nobody was marked failed: every replica still takes its turn.
        assert set(served) == {"r1", "r2", "r3"}


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_dead_replica_stays_invisible_while_the_live_ones_answer_503_then_200(
    policy: str, tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url):
        await replicas[1].stop()  # r2: connections refused from now on
        for upstream in replicas:
            upstream.outage = True
        statuses: dict[bool, list[int]] = {True: [], False: []}
        # Three networks, so ip_hash sends one of them to the dead r2.
        for index in range(3):
            async with https_client(tls.ca_cert, source_address(index)) as client:
                _route(policy, client, url, "r2")
                for outage in (True, False):
                    for upstream in replicas:
                        upstream.outage = outage
                    for _ in range(3):
                        async with client.get(f"{url}/api/me") as response:
                            statuses[outage].append(response.status)
                            assert response.headers.get("X-Served-By") in {"r1", "r3"}
    assert statuses == {True: [503] * 9, False: [200] * 9}


@pytest.mark.parametrize("policy", ["round_robin", "forward_auth"])
async def test_every_replica_down_is_a_502_in_problem_details(
    policy: str, tmp_path: Path, tls: TlsFiles, auth: Upstream
) -> None:
    dead = [Replica("r1", free_port()), Replica("r2", free_port())]
    async with (
        running_nginx(tmp_path, tls, policy, dead, auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
        client.get(f"{url}/api/me", cookies={"session": "good"}) as response,
    ):
        await _nginx_problem(response, 502, "bad_gateway")


async def test_the_auth_service_down_is_a_502_in_problem_details(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream]
) -> None:
    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), free_port()) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        for path in ("/auth/login", "/.well-known/jwks.json"):
            async with client.get(url + path) as response:
                await _nginx_problem(response, 502, "bad_gateway")


# -- nginx's own refusals ---------------------------------------------------------------

#: Over nginx's limits: client_max_body_size (64k) and one large_client_header_buffers
#: buffer (8k, nginx's default) for the request line and for a header line.
OVER_BODY_LIMIT = 65 * 1024
OVER_BUFFER = 9 * 1024


@pytest.mark.parametrize("policy", ["round_robin", "forward_auth"])
async def test_nginx_refuses_oversized_requests_in_problem_details(
    policy: str, tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    """forward_auth's /api/ has error pages of its own, so it is checked beside the rest."""
    async with (
        running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        _set_only_cookie(client, url, "session", "good")
        for path in ("/api/comments", "/auth/login"):
            body = b'{"body": "' + b"x" * OVER_BODY_LIMIT + b'"}'
            async with client.post(
                url + path, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await _nginx_problem(response, 413, "payload_too_large")

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(OVER_BODY_LIMIT // 4096 + 2):
                    yield b"x" * 4096

            async with client.post(url + path, data=chunks()) as response:
                assert response.request_info.headers["Transfer-Encoding"] == "chunked"
                await _nginx_problem(response, 413, "payload_too_large")
            async with client.get(url + path + "/" + "a" * OVER_BUFFER) as response:
                await _nginx_problem(response, 414, "uri_too_long")
            async with client.get(url + path, headers={"X-Padding": "a" * OVER_BUFFER}) as response:
                await _nginx_problem(response, 431, "request_header_too_large")
            # Several headers each under one buffer, together over all four.
            many = {f"X-Padding-{n}": "a" * 7000 for n in range(6)}
            async with client.get(url + path, headers=many) as response:
                await _nginx_problem(response, 431, "request_header_too_large")
    # None of it reached a service.
    assert not any(upstream.seen for upstream in replicas)
    assert not [seen for seen in auth.seen if seen.path != "/auth/forward"]


async def test_plain_http_to_the_https_port_is_400_in_problem_details(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), auth.port) as (_, url),
        aiohttp.ClientSession() as client,
        client.get(url.replace("https://", "http://") + "/api/me") as response,
    ):
        text = await response.text()
        assert response.status == 400, text
        assert response.headers["Content-Type"] == PROBLEM_JSON
        assert json.loads(text)["error"] == "https_required"
    assert not any(upstream.seen for upstream in replicas)


def _returns(text: str) -> list[tuple[int, str]]:
    """Every ``return CODE '...'`` with a body in an nginx configuration."""
    return [
        (int(code), body.replace("\\n", ""))
        for code, body in re.findall(r"return (\d{3}) '(.*)';", text)
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_error_nginx_writes_itself_is_problem_details_with_its_own_status(
    policy: str, tmp_path: Path, tls: TlsFiles
) -> None:
    """504 included, which the tests above do not provoke (it takes proxy_read_timeout)."""
    files = render(_config(tmp_path, tls, policy, THREE))
    text = "\n".join(files.values())
    pages = dict(re.findall(r"error_page (\d{3}) = (/\S+);", files["error_pages.conf"]))
    assert set(pages) == {"400", "413", "414", "494", "497", "502", "504"}
    for uri in pages.values():
        # An internal location named for the code it answers with.
        page = text[text.index(f"location = {uri} {{") :]
        page = page[: page.index("}\n")]
        assert "internal;" in page
        ((_, raw),) = _returns(page)
        assert json.loads(raw)["error"] == uri.rsplit("/", 1)[1]
    answers = _returns(text)
    assert len(answers) >= len(set(pages.values())) + 1  # and the 404 of unknown paths
    for status, raw in answers:
        if status < 400:
            continue
        body = json.loads(raw)
        assert set(body) == PROBLEM_MEMBERS, body
        assert body["type"] == "about:blank" and body["status"] == status, body
        assert re.fullmatch(r"[a-z_]+", body["error"]), body
    codes = [json.loads(raw)["error"] for status, raw in answers if status >= 400]
    assert "gateway_timeout" in codes and "uri_too_long" in codes


async def test_reload_switches_to_the_new_replica_set_and_a_bad_config_changes_nothing(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas[:1]), auth.port) as (
            server,
            url,
        ),
        https_client(tls.ca_cert) as client,
    ):
        old_workers = server.workers()
        assert old_workers
        config = _config(
            tmp_path,
            tls,
            "round_robin",
            _replicas(replicas[1:]),
            https_port=server.port,
            auth_port=auth.port,
        )
        render_to(config, server.conf.parent)
        await asyncio.to_thread(server.reload)
        assert not server.workers() & old_workers
        served = set()
        for _ in range(4):
            async with client.get(f"{url}/api/me") as response:
                served.add(response.headers["X-Served-By"])
        assert served == {"r2", "r3"}

        server.conf.write_text(server.conf.read_text() + "\nthis is not nginx;\n")
        with pytest.raises(StackError, match="nginx rejects"):
            await asyncio.to_thread(server.reload)
        async with client.get(f"{url}/api/me") as response:
            assert response.status == 200


# -- transport security -------------------------------------------------------------------

HSTS_MIN_MAX_AGE = 365 * 24 * 3600


def _assert_hsts(response: aiohttp.ClientResponse) -> None:
    """One Strict-Transport-Security header: a year or more, subdomains included."""
    values = response.headers.getall("Strict-Transport-Security", [])
    assert len(values) == 1, (response.status, response.url, values)
    directives = {d.strip().split("=")[0].lower(): d.strip() for d in values[0].split(";")}
    assert "includesubdomains" in directives, values
    assert int(directives["max-age"].split("=")[1]) >= HSTS_MIN_MAX_AGE, values


@pytest.mark.parametrize("policy", POLICIES)
async def test_every_https_response_carries_hsts_including_nginx_errors(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream, policy: str
) -> None:
    async with (
        running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        cookies = {"session": "good"}
        expected = [("/nginx-health", 200), ("/no/such/path", 404), ("/auth/me", 200)]
        expected.append(("/api/me", 200))
        for path, status in expected:
            async with client.get(f"{url}{path}", cookies=cookies) as response:
                assert response.status == status, path
                _assert_hsts(response)
        if policy == "forward_auth":
            async with client.get(f"{url}/api/me") as response:
                assert response.status == 401
                _assert_hsts(response)
            auth.outage = True
            async with client.get(f"{url}/api/me", cookies=cookies) as response:
                assert response.status == 503
                _assert_hsts(response)
        await auth.stop()
        async with client.get(f"{url}/auth/me") as response:
            assert response.status == 502
            _assert_hsts(response)


def _handshake(port: int, ca_cert: Path, *, tls12_ciphers: str | None) -> str:
    """Open a TLS connection with a real client; the negotiated cipher, or raise SSLError."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    if tls12_ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_ciphers)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
    ):
        cipher = tls_socket.cipher()
        assert cipher is not None
        return f"{tls_socket.version()} {cipher[0]}"


CBC_SHA = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
CBC_SHA2 = "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:AES128-SHA256:AES256-SHA256"
RSA_KEX = "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA"
AEAD_ECDHE = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


async def test_tls_offers_mozillas_intermediate_suites_and_refuses_cbc(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    async with running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), auth.port) as (
        server,
        _,
    ):
        port = server.port
        for refused in (CBC_SHA, CBC_SHA2, RSA_KEX):
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(_handshake, port, tls.ca_cert, tls12_ciphers=refused)
        accepted = await asyncio.to_thread(_handshake, port, tls.ca_cert, tls12_ciphers=AEAD_ECDHE)
        assert accepted.startswith("TLSv1.2 ECDHE-") and "GCM" in accepted, accepted
        assert (
            await asyncio.to_thread(_handshake, port, tls.ca_cert, tls12_ciphers=None)
        ).startswith("TLSv1.3 ")


# -- protect any app: /app/ behind forward auth and the portal --------------------------------

#: The static site every policy serves at /app/ (plain HTML and CSS, not tessera's).
DEMO_SITE = default_demo_site(default_template_dir())


@pytest.mark.parametrize("policy", POLICIES)
async def test_protected_app_sends_a_browser_without_a_session_to_the_portal_with_the_full_url(
    policy: str, tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    """nginx passes the URL as it was asked for; the auth service encodes and validates
    it. Any method, any body: the portal is asked with a bare GET."""
    forged = {name: "forged" for name in IDENTITY_HEADERS}
    async with (
        running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert, source_address(2)) as client,
    ):
        asked = [f"{url}/app/x?y=1", f"{url}/app/reports/q.html?a=b&c=%2F#frag"]
        async with client.get(asked[0], headers=forged, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            assert response.headers["Location"] == _portal_login(asked[0])
            assert response.headers["Cache-Control"] == "no-store"
            # auth_request copies the challenge onto the response itself; a browser
            # ignores it on a redirect, a script learns how to authenticate instead.
            assert response.headers.getall("WWW-Authenticate") == ['Bearer realm="tessera"']
            _assert_hsts(response)
        async with client.post(
            URL(asked[1], encoded=True), data=b"secret=1", headers=forged, allow_redirects=False
        ) as response:
            assert response.status == 302, await response.text()
            # The fragment never leaves the browser.
            assert response.headers["Location"] == _portal_login(asked[1].split("#")[0])
    checks = [seen for seen in auth.seen if seen.path == "/auth/forward"]
    assert [seen.headers["X-Original-URI"] for seen in checks] == [
        "/app/x?y=1",
        "/app/reports/q.html?a=b&c=%2F",
    ]
    starts = [seen for seen in auth.seen if seen.path.startswith(PORTAL_START)]
    # The refused request's query is in X-Original-URL only, never the portal's own.
    assert [seen.path for seen in starts] == [PORTAL_START, PORTAL_START]
    assert [seen.headers["X-Original-URL"] for seen in starts] == [
        asked[0],
        asked[1].split("#")[0],
    ]
    for seen in starts:
        assert seen.method == "GET"
        assert seen.body == b""
        assert "Content-Length" not in seen.headers
        assert not any(name in seen.headers for name in IDENTITY_HEADERS)
        assert seen.headers["X-Forwarded-Proto"] == "https"
    assert len(auth.seen) == 4
    assert not any(upstream.seen for upstream in replicas)


@pytest.mark.parametrize("policy", ["round_robin", "forward_auth"])
async def test_protected_app_serves_the_site_to_a_session_the_auth_service_knows(
    policy: str, tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    pages = {
        "/app/page.html?x=1": ("page.html", "text/html; charset=utf-8"),
        "/app/": ("index.html", "text/html; charset=utf-8"),
        "/app/reports/quarterly.html": ("reports/quarterly.html", "text/html; charset=utf-8"),
        "/app/style.css": ("style.css", "text/css; charset=utf-8"),
    }
    async with (
        running_nginx(tmp_path, tls, policy, _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        _set_only_cookie(client, url, "session", "good")
        for path, (name, content_type) in pages.items():
            async with client.get(url + path, allow_redirects=False) as response:
                assert response.status == 200, path
                assert await response.read() == (DEMO_SITE / name).read_bytes()
                assert response.headers["Content-Type"] == content_type
                assert response.headers["Cache-Control"] == "private, no-cache"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                _assert_hsts(response)
        async with client.get(f"{url}/app/no-such-page.html") as response:
            await _nginx_problem(response, 404, "not_found")
        async with client.get(f"{url}/app", allow_redirects=False) as response:
            assert response.status == 301
            assert response.headers["Location"] == "/app/"
    checks = [seen for seen in auth.seen if seen.path == "/auth/forward"]
    # Every request asked first; /app/ twice (its index is an internal redirect).
    assert [seen.headers["X-Original-URI"] for seen in checks] == [
        "/app/page.html?x=1",
        "/app/",
        "/app/",
        "/app/reports/quarterly.html",
        "/app/style.css",
        "/app/no-such-page.html",
    ]
    assert all(seen.headers["Cookie"] == "session=good" for seen in checks)
    assert not [seen for seen in auth.seen if seen.path.startswith(PORTAL_START)]
    assert not any(upstream.seen for upstream in replicas)


async def test_protected_app_answers_503_while_the_auth_service_cannot_check_never_a_login(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    """An outage is not a logout: the browser is told to come back, not sent to log in."""
    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), auth.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        _set_only_cookie(client, url, "session", "good")
        auth.outage = True
        async with client.get(f"{url}/app/page.html", allow_redirects=False) as response:
            await _nginx_problem(response, 503, "dependency_unavailable")
            assert response.headers["Retry-After"] == AUTH_RETRY_AFTER
            assert response.headers["Cache-Control"] == "no-store"
        await auth.stop()
        async with client.get(f"{url}/app/page.html", allow_redirects=False) as response:
            await _nginx_problem(response, 503, "dependency_unavailable")
            assert response.headers["Retry-After"] == "1"
    assert not [seen for seen in auth.seen if seen.path.startswith(PORTAL_START)]


async def test_protected_app_relays_the_real_auth_services_400_for_a_session_cookie_sent_twice(
    tmp_path: Path,
    tls: TlsFiles,
    replicas: list[Upstream],
    make_auth_client: AuthClientFactory,
) -> None:
    """The real auth service (on real PostgreSQL and Redis) decides who sees /app/."""
    direct = await make_auth_client()
    account = await register_and_login(direct, credential="none")
    login = await direct.post(
        "/auth/login",
        json={"username": account["user"]["username"], "password": account["password"]},
    )
    cookie = login.cookies[SESSION_COOKIE].value
    assert direct.port is not None

    async with (
        running_nginx(tmp_path, tls, "round_robin", _replicas(replicas), direct.port) as (_, url),
        https_client(tls.ca_cert) as client,
    ):
        own = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        async with client.get(f"{url}/app/page.html", headers=own) as response:
            assert response.status == 200
            assert await response.read() == (DEMO_SITE / "page.html").read_bytes()
        twice = {"Cookie": f"{SESSION_COOKIE}={'a' * 43}; {SESSION_COOKIE}={cookie}"}
        async with client.get(f"{url}/app/page.html", headers=twice) as response:
            await _nginx_problem(response, 400, "duplicate_cookie")
            assert response.headers["Cache-Control"] == "no-store"


def test_protected_app_serves_the_demo_site_directory_in_every_policy(
    tmp_path: Path, tls: TlsFiles
) -> None:
    for policy in POLICIES:
        files = render(_config(tmp_path, tls, policy, THREE))
        assert "include protected_app.conf;" in files["server.conf"]
        assert "include protected_app_maps.conf;" in files["http.conf"]
        assert f"alias {DEMO_SITE}/;" in files["protected_app.conf"]
    # A site elsewhere (a path with a space is quoted).
    elsewhere = tmp_path / "my site"
    config = NginxConfig(**{**_config(tmp_path, tls, "round_robin", THREE).__dict__})
    config = NginxConfig(**{**config.__dict__, "demo_site": elsewhere})
    assert f'alias "{elsewhere}/";' in render(config)["protected_app.conf"]
    assert (DEMO_SITE / "index.html").is_file()


def _readme_snippet() -> str:
    """The nginx block nginx/README.md tells users to copy under "Protect any app"."""
    readme = (default_template_dir() / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Protect any app") :]
    return section.split("```nginx\n", 1)[1].split("```", 1)[0]


async def test_the_readme_snippet_protects_an_app_as_written(
    tmp_path: Path, tls: TlsFiles, replicas: list[Upstream], auth: Upstream
) -> None:
    """The snippet runs in a real nginx with only its addresses and certificate filled
    in: the portal for strangers, the app (with the identity, never a forged one) for
    a session the auth service knows."""
    app = replicas[0]
    port = free_port()
    snippet = _readme_snippet()
    filled = {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{auth.port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "# ... ssl_certificate, ssl_certificate_key ...": (
            f"ssl_certificate {tls.cert}; ssl_certificate_key {tls.key};"
        ),
        "proxy_pass http://127.0.0.1:3000;": f"proxy_pass http://127.0.0.1:{app.port};",
    }
    for placeholder, value in filled.items():
        assert snippet.count(placeholder) == 1, placeholder
        snippet = snippet.replace(placeholder, value)
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"daemon off;\npid {prefix / 'nginx.pid'};\nerror_log stderr notice;\n"
        f"events {{}}\nhttp {{\n{temp_paths}\n    access_log off;\n{snippet}\n}}\n",
        encoding="utf-8",
    )
    server = NginxServer(prefix, conf, port=port, log_path=tmp_path / "nginx.log")
    await asyncio.to_thread(server.start)
    url = f"https://127.0.0.1:{port}"
    forged = {name: "forged" for name in IDENTITY_HEADERS}
    try:
        async with https_client(tls.ca_cert) as client:
            asked = f"{url}/reports/q3?team=a"
            async with client.get(asked, headers=forged, allow_redirects=False) as response:
                assert response.status == 302, await response.text()
                assert response.headers["Location"] == _portal_login(asked)
            _set_only_cookie(client, url, "session", "good")
            async with client.get(asked, headers=forged) as response:
                assert response.status == 200
                assert response.headers["X-Served-By"] == app.name
            async with client.get(f"{url}/auth/me") as response:
                assert await response.json() == {"service": "auth", "path": "/auth/me"}
    finally:
        await asyncio.to_thread(server.stop)
    (start,) = [seen for seen in auth.seen if seen.path == PORTAL_START]
    assert start.headers["X-Original-URL"] == asked
    assert start.method == "GET"
    (seen,) = app.seen
    assert seen.path == "/reports/q3?team=a"
    assert seen.headers["X-Tessera-User-Id"] == "user-1"
    assert seen.headers["X-Tessera-Username"] == "alice"


# -- the live page: /live/ in the local stack only, behind the portal -------------------------

LIVE_PORT = 18090
OPERATOR_SECRET_HEADER = "X-Operator-Secret"


def _with_live(config: NginxConfig, live_port: int | None = LIVE_PORT) -> NginxConfig:
    return NginxConfig(**{**config.__dict__, "live_port": live_port})


def _block(text: str, opening: str) -> str:
    """The block that starts at ``opening`` (``location /live/ {``), nested braces and all."""
    start = text.index(opening)
    depth = 0
    for index in range(start + len(opening) - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"{opening!r} is never closed")


def _directives(block: str) -> list[str]:
    """The block's directives, one a line, without comments."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_live_page_is_rendered_only_where_its_process_runs(
    policy: str, tmp_path: Path, tls: TlsFiles
) -> None:
    without = render(_config(tmp_path, tls, policy, THREE))
    assert "live_page.conf" not in without
    assert "include live_page.conf;" not in without["server.conf"]
    assert "# (no live page here: it runs in the local stack only)" in without["server.conf"]
    assert not any("location /live" in text for text in without.values())

    files = render(_with_live(_config(tmp_path, tls, policy, THREE)))
    assert set(files) == {*without, "live_page.conf"}
    assert "include live_page.conf;" in _directives(files["server.conf"])
    live = _directives(_block(files["live_page.conf"], "location /live/ {"))
    assert f"proxy_pass http://127.0.0.1:{LIVE_PORT};" in live
    # Every other file is as it was: the live page adds a location and nothing else.
    assert {
        name: text for name, text in files.items() if name not in ("server.conf", "live_page.conf")
    } == {name: text for name, text in without.items() if name != "server.conf"}


def test_the_live_page_proxies_to_the_stacks_host(tmp_path: Path, tls: TlsFiles) -> None:
    config = NginxConfig(
        **{**_config(tmp_path, tls, "round_robin", THREE).__dict__, "host": "10.1.2.3"}
    )
    live = render(_with_live(config, 9999))["live_page.conf"]
    assert "proxy_pass http://10.1.2.3:9999;" in live
    assert "{{" not in live


@pytest.mark.parametrize("live_port", [0, 65536, -1])
def test_an_invalid_live_port_is_refused(live_port: int, tmp_path: Path, tls: TlsFiles) -> None:
    with pytest.raises(StackError, match=f"invalid port {live_port} for the live page"):
        render(_with_live(_config(tmp_path, tls, "round_robin", THREE), live_port))


@pytest.mark.parametrize("policy", ["round_robin", "route_cookie", "forward_auth"])
def test_nginx_accepts_the_configuration_with_and_without_the_live_page(
    policy: str, tmp_path: Path, tls: TlsFiles
) -> None:
    """Also in one directory, one render after the other: the stack restarted without
    the live page leaves no stale live_page.conf behind."""
    directory = tmp_path / "nginx" / "conf"
    config = _config(tmp_path, tls, policy, THREE)
    with_live = render_to(_with_live(config), directory)
    nginx_check(with_live.entry, tmp_path / "nginx")
    assert (directory / "live_page.conf").is_file()
    without = render_to(config, directory)
    assert without.changed
    nginx_check(without.entry, tmp_path / "nginx")
    assert not (directory / "live_page.conf").exists()
    assert "{{" not in "".join(path.read_text() for path in directory.glob("*.conf"))


def test_the_app_and_the_live_page_share_one_portal_guard(tmp_path: Path, tls: TlsFiles) -> None:
    files = render(_with_live(_config(tmp_path, tls, "round_robin", THREE)))
    app = _directives(_block(files["protected_app.conf"], "location /app/ {"))
    live = _directives(_block(files["live_page.conf"], "location /live/ {"))
    assert "include portal_guard.conf;" in app
    assert "include portal_guard.conf;" in live
    # The guard lives in one file: neither location asks the auth service on its own.
    for location in (app, live):
        assert not any(line.startswith(("auth_request", "error_page 401")) for line in location)
    guard = _directives(files["portal_guard.conf"])
    assert "auth_request /_tessera/app-auth;" in guard
    assert "error_page 401 = @tessera_portal_start;" in guard
    # The live page's identity headers are cleared like every proxied location's.
    assert "include identity_cleared.conf;" in live


def test_the_portal_check_never_carries_the_operator_secret(tmp_path: Path, tls: TlsFiles) -> None:
    for live_port in (None, LIVE_PORT):
        files = render(_with_live(_config(tmp_path, tls, "round_robin", THREE), live_port))
        check = _directives(_block(files["protected_app.conf"], "location = /_tessera/app-auth {"))
        assert f'proxy_set_header {OPERATOR_SECRET_HEADER} "";' in check
        # proxy_set_header is inherited only by levels that set none: the clearing sits
        # after proxy.conf, in the same block, so it counts.
        assert "include proxy.conf;" in check


async def fake_live_page() -> Upstream:
    """Answers like the live page: its state, and 202 to a control."""
    upstream = Upstream("live")

    async def handler(request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.json_response({"status": "running"}, status=202)
        return web.json_response({"page": "live", "path": request.path})

    await _serve(upstream, handler)
    return upstream


@asynccontextmanager
async def running_nginx_with_live(
    tmp_path: Path, tls: TlsFiles, auth_port: int, live_port: int
) -> AsyncIterator[str]:
    https_port = free_port()
    config = _config(
        tmp_path, tls, "round_robin", THREE, https_port=https_port, auth_port=auth_port
    )
    target = render_to(_with_live(config, live_port), tmp_path / "nginx" / "conf")
    server = NginxServer(
        tmp_path / "nginx", target.entry, port=https_port, log_path=tmp_path / "logs" / "nginx.log"
    )
    await asyncio.to_thread(server.start)
    try:
        yield f"https://127.0.0.1:{https_port}"
    finally:
        await asyncio.to_thread(server.stop)


async def test_the_live_page_is_behind_the_portal_and_only_it_sees_the_operator_secret(
    tmp_path: Path, tls: TlsFiles, auth: Upstream
) -> None:
    live = await fake_live_page()
    forged = {name: "forged" for name in IDENTITY_HEADERS}
    operator = {OPERATOR_SECRET_HEADER: "the-operator-secret", **forged}
    try:
        async with (
            running_nginx_with_live(tmp_path, tls, auth.port, live.port) as url,
            https_client(tls.ca_cert) as client,
        ):
            async with client.get(
                f"{url}/live/", headers=operator, allow_redirects=False
            ) as response:
                assert response.status == 302, await response.text()
                assert response.headers["Location"] == _portal_login(f"{url}/live/")
            assert not live.seen

            _set_only_cookie(client, url, "session", "good")
            async with client.get(f"{url}/live/state", headers=operator) as response:
                assert response.status == 200
                assert await response.json() == {"page": "live", "path": "/live/state"}
                _assert_hsts(response)
            async with client.post(
                f"{url}/live/actions/row", json={"row": 4}, headers=operator
            ) as response:
                assert response.status == 202
            async with client.get(f"{url}/live", allow_redirects=False) as response:
                assert response.status == 301
                assert response.headers["Location"] == "/live/"
    finally:
        await live.stop()

    assert [(seen.method, seen.path) for seen in live.seen] == [
        ("GET", "/live/state"),
        ("POST", "/live/actions/row"),
    ]
    for seen in live.seen:
        assert seen.headers[OPERATOR_SECRET_HEADER] == "the-operator-secret"
        assert not any(name in seen.headers for name in IDENTITY_HEADERS)
    assert live.seen[1].body == b'{"row": 4}'
    checks = [seen for seen in auth.seen if seen.path == "/auth/forward"]
    assert [seen.headers["X-Original-URI"] for seen in checks][:2] == ["/live/", "/live/state"]
    for seen in checks:
        assert OPERATOR_SECRET_HEADER not in seen.headers


async def test_a_refused_request_to_the_live_page_does_not_take_the_operator_secret_to_the_portal(
    tmp_path: Path, tls: TlsFiles, auth: Upstream
) -> None:
    """A control sent after the session ended: the browser goes to the portal, the
    operator secret stays behind."""
    live = await fake_live_page()
    operator = {OPERATOR_SECRET_HEADER: "the-operator-secret"}
    try:
        async with (
            running_nginx_with_live(tmp_path, tls, auth.port, live.port) as url,
            https_client(tls.ca_cert) as client,
            client.get(f"{url}/live/state", headers=operator, allow_redirects=False) as response,
        ):
            assert response.status == 302, await response.text()
    finally:
        await live.stop()
    (start,) = [seen for seen in auth.seen if seen.path == PORTAL_START]
    assert OPERATOR_SECRET_HEADER not in start.headers
