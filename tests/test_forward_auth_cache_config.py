"""forward_auth's reuse of the auth service's answers (issue 14; opt-in, off by
default), as rendered and as a real nginx applies it in front of a stand-in auth service.

nginx keeps a 200 of ``/auth/forward`` for the whole credential (Authorization and
every cookie) within the clock second its request started in, and nothing else:
never a refusal or a 503, never for a request without a credential, never longer
than the services' staleness bound S allows (the stack turns it off below 1 s).
The real auth service, logout and two users at once are in
``tests/test_forward_auth_cache.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tessera_stack import StackError, free_port
from tessera_stack.nginx_conf import (
    CACHE_VARIABLE,
    FORWARD_AUTH_CACHE_SECONDS,
    SERVICES_DEFAULT_STALENESS,
    STALENESS_VARIABLE,
    NginxConfig,
    Replica,
    forward_auth_cache_seconds,
    render,
    render_to,
)
from tessera_stack.servers import NginxServer, nginx_check
from tessera_stack.tls import TlsFiles
from tessera_verify.revocation_cache import DEFAULT_MAX_STALENESS
from tessera_verify.verify_config import CacheConfig
from tests.stack_clients import https_client

SECRET = "forward-secret-" + "y" * 40


def _config(
    tmp_path: Path,
    tls: TlsFiles,
    *,
    cache_seconds: int = FORWARD_AUTH_CACHE_SECONDS,
    staleness: float | None = SERVICES_DEFAULT_STALENESS,
    https_port: int = 8443,
    auth_port: int = 8080,
    replica_port: int = 18081,
) -> NginxConfig:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return NginxConfig(
        policy="forward_auth",
        nginx_dir=tmp_path / "nginx",
        log_dir=tmp_path / "logs",
        https_port=https_port,
        auth_port=auth_port,
        replicas=(Replica("r1", replica_port),),
        tls_cert=tls.cert,
        tls_key=tls.key,
        forward_secret=SECRET,
        worker_processes="2",
        forward_auth_cache_seconds=cache_seconds,
        revocation_max_staleness=staleness,
    )


def _directives(text: str, name: str) -> list[str]:
    return [
        line.strip()[len(name) + 1 :].rstrip(";")
        for line in text.splitlines()
        if line.strip().startswith(f"{name} ")
    ]


# -- rendering -------------------------------------------------------------------------


def test_the_forward_auth_cache_is_off_unless_configured(tmp_path: Path, tls: TlsFiles) -> None:
    entry = render(_config(tmp_path, tls, cache_seconds=0, staleness=None))["nginx.conf"]
    assert _directives(entry, "proxy_cache") == ["off"]
    assert _directives(entry, "proxy_cache_path") == []


def test_the_cache_keys_answers_by_second_and_whole_credential_and_keeps_only_200s(
    tmp_path: Path, tls: TlsFiles
) -> None:
    target = render_to(_config(tmp_path, tls), tmp_path / "conf")
    nginx_check(target.entry, tmp_path / "nginx")
    entry = target.entry.read_text(encoding="utf-8")
    location = entry[entry.index("location = /_tessera/forward-auth") :]
    location = location[: location.index("}")]
    assert _directives(location, "proxy_cache") == ["tessera_forward_auth"]
    assert _directives(location, "proxy_cache_key") == [
        '"$tessera_forward_auth_second|$http_authorization|$http_cookie"'
    ]
    # Only 200s, for the second; nothing served stale, refreshed or revalidated.
    assert _directives(location, "proxy_cache_valid") == ["200 1s"]
    for name in (
        "proxy_cache_use_stale",
        "proxy_cache_background_update",
        "proxy_cache_revalidate",
        "proxy_cache_lock",
    ):
        assert _directives(location, name) == ["off"]
    # The auth service's Set-Cookie and Vary still stop an answer from being kept.
    (ignored,) = _directives(location, "proxy_ignore_headers")
    assert set(ignored.split()) == {"Cache-Control", "Expires", "X-Accel-Expires"}
    assert _directives(location, "proxy_no_cache") == ["$tessera_forward_auth_skip"]
    assert _directives(location, "proxy_cache_bypass") == ["$tessera_forward_auth_skip"]
    # The cache lives under the stack's nginx directory, readable by nginx's workers only.
    (path,) = _directives(entry, "proxy_cache_path")
    cache = tmp_path / "nginx" / "cache" / "forward_auth"
    assert path.split()[0] == str(cache)
    assert cache.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("cache_seconds", "staleness", "problem"),
    [
        (2, 5.0, "lasts 0 or 1 s"),
        (1, None, "needs the services' staleness bound"),
        (1, 0.5, "would outlive the services' staleness bound S (0.5 s)"),
        (1, 0.0, "would outlive the services' staleness bound S (0 s)"),
    ],
)
def test_a_cache_longer_than_the_propagation_bound_or_s_is_refused(
    tmp_path: Path, tls: TlsFiles, cache_seconds: int, staleness: float | None, problem: str
) -> None:
    config = _config(tmp_path, tls, cache_seconds=cache_seconds, staleness=staleness)
    with pytest.raises(StackError, match=re.escape(problem)):
        render(config)


@pytest.mark.parametrize(
    ("environment", "seconds"),
    [
        ({}, 0),
        ({CACHE_VARIABLE: "0"}, 0),
        ({STALENESS_VARIABLE: "5"}, 0),
        ({CACHE_VARIABLE: "1"}, 1),
        ({CACHE_VARIABLE: "1", STALENESS_VARIABLE: "5"}, 1),
        ({CACHE_VARIABLE: "1", STALENESS_VARIABLE: "1"}, 1),
        ({CACHE_VARIABLE: "1", STALENESS_VARIABLE: "0.5"}, 0),
        ({CACHE_VARIABLE: "1", STALENESS_VARIABLE: "0"}, 0),
        ({CACHE_VARIABLE: "1", STALENESS_VARIABLE: "-1"}, 0),
        ({CACHE_VARIABLE: "1", STALENESS_VARIABLE: "soon"}, 0),
    ],
)
def test_the_stack_caches_only_when_asked_to_and_the_staleness_bound_allows(
    environment: dict[str, str], seconds: int
) -> None:
    assert forward_auth_cache_seconds(environment) == seconds


@pytest.mark.parametrize("requested", ["2", "yes", "0.5"])
def test_the_stack_refuses_a_cache_of_any_other_length(requested: str) -> None:
    with pytest.raises(StackError, match=CACHE_VARIABLE):
        forward_auth_cache_seconds({CACHE_VARIABLE: requested})


def test_the_stack_knows_the_services_default_staleness_bound() -> None:
    assert SERVICES_DEFAULT_STALENESS == DEFAULT_MAX_STALENESS
    assert CacheConfig().revocation_max_staleness == SERVICES_DEFAULT_STALENESS


# -- a real nginx in front of a stand-in auth service ------------------------------------


@dataclass
class StandIn:
    """An auth service whose verdict per session cookie the test sets, and a replica
    that echoes the identity nginx forwarded."""

    verdicts: dict[str, int] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    auth_port: int = 0
    replica_port: int = 0


async def _stand_ins() -> tuple[StandIn, list[web.AppRunner]]:
    stand_in = StandIn()

    async def forward(request: web.Request) -> web.Response:
        session = request.cookies.get("session", "")
        stand_in.checks.append(session)
        status = stand_in.verdicts.get(session, 401)
        if status == 200:
            return web.Response(
                headers={
                    "X-Tessera-User-Id": f"id-{session}",
                    "X-Tessera-Username": session,
                    "X-Tessera-Auth-Method": "shared_session",
                    "Cache-Control": "no-store",
                }
            )
        headers = {"Retry-After": "1"} if status == 503 else {}
        return web.Response(status=status, headers={**headers, "Cache-Control": "no-store"})

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"username": request.headers.get("X-Tessera-Username")})

    runners = []
    for handler, attribute in ((forward, "auth_port"), (me, "replica_port")):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        setattr(stand_in, attribute, port)
        runners.append(runner)
    return stand_in, runners


@pytest.fixture
async def nginx_and_stand_ins(tmp_path: Path, tls: TlsFiles) -> AsyncIterator[tuple[str, StandIn]]:
    stand_in, runners = await _stand_ins()
    https_port = free_port()
    config = _config(
        tmp_path,
        tls,
        https_port=https_port,
        auth_port=stand_in.auth_port,
        replica_port=stand_in.replica_port,
    )
    target = render_to(config, tmp_path / "nginx" / "conf")
    server = NginxServer(
        tmp_path / "nginx", target.entry, port=https_port, log_path=tmp_path / "logs" / "nginx.log"
    )
    await asyncio.to_thread(server.start)
    try:
        yield f"https://127.0.0.1:{https_port}", stand_in
    finally:
        await asyncio.to_thread(server.stop)
        for runner in runners:
            await runner.cleanup()


async def _get(client: aiohttp.ClientSession, url: str, session: str | None) -> int:
    headers = {"Cookie": f"session={session}"} if session is not None else {}
    async with client.get(f"{url}/api/me", headers=headers) as response:
        await response.read()
        return response.status


async def test_refusals_and_503s_are_never_kept_so_the_next_request_asks_again(
    nginx_and_stand_ins: tuple[str, StandIn], tls: TlsFiles
) -> None:
    url, stand_in = nginx_and_stand_ins
    async with https_client(tls.ca_cert) as client:
        client.cookie_jar.clear()
        for status in (401, 403, 503):
            stand_in.verdicts["later"] = status
            for _ in range(3):
                assert await _get(client, url, "later") == status
        stand_in.verdicts["later"] = 200
        assert await _get(client, url, "later") == 200
    # Every refusal was asked for; the 200 came at once.
    assert stand_in.checks == ["later"] * 10


async def test_an_answer_is_reused_only_within_its_second_and_only_for_its_credential(
    nginx_and_stand_ins: tuple[str, StandIn], tls: TlsFiles
) -> None:
    url, stand_in = nginx_and_stand_ins
    stand_in.verdicts.update(alice=200, bob=200)
    async with https_client(tls.ca_cert) as client:
        client.cookie_jar.clear()
        started = asyncio.get_running_loop().time()
        for _ in range(5):
            assert await _get(client, url, "alice") == 200
        assert await _get(client, url, "bob") == 200
        assert await _get(client, url, None) == 401
        assert await _get(client, url, None) == 401
        elapsed = asyncio.get_running_loop().time() - started
        asked = stand_in.checks.count("alice")
        # Alice is refused from now on: nginx hears it once her answer's second is over.
        stand_in.verdicts["alice"] = 401
        deadline = asyncio.get_running_loop().time() + FORWARD_AUTH_CACHE_SECONDS + 2
        while await _get(client, url, "alice") == 200:
            assert asyncio.get_running_loop().time() < deadline, "a 200 outlived its second"
    # At most one check per clock second the five requests spanned.
    assert 1 <= asked <= int(elapsed) + 2
    assert stand_in.checks.count("bob") == 1
    # No credential: asked every time, never answered from what another had.
    assert stand_in.checks.count("") == 2
