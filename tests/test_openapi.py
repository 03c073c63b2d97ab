"""The OpenAPI descriptions (issue 12): valid OpenAPI 3.1, true to the route table both
ways, served at ``/openapi.json``, and kept by the live services under schemathesis.

The fuzzing runs against the real auth service and a real replica (every credential
kind on), on real sockets with real PostgreSQL and Redis. Every operation gets a
bounded, reproducible number of generated requests (``derandomize``), valid and
invalid, anonymous and signed in with a fresh credential of each kind, and every
answer must be described: no 5xx but a described 503, status, content type, body and
headers as the document says.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tessera_auth.app import create_app
from tessera_auth.openapi import api_description as auth_description
from tessera_auth.regulation import RegulationPolicy
from tessera_auth.routes_discovery import JWKS_PATH, METADATA_PATH
from tessera_auth.settings import Settings
from tessera_platform import openapi
from tessera_platform.openapi import OPENAPI_PATH, operations
from tessera_resource.app import create_app as create_resource_app
from tessera_resource.openapi import api_description as replica_description
from tessera_resource.settings import ResourceSettings
from tessera_verify.authenticators import FORWARD_SECRET_HEADER, FORWARD_USER_ID_HEADER
from tessera_verify.integration import LOCAL_SESSION_COOKIE
from tessera_verify.sessions import SESSION_COOKIE, SessionPolicy
from tessera_verify.verify_config import (
    ForwardConfig,
    JwtConfig,
    LocalSessionConfig,
    SharedSessionConfig,
    VerifyConfig,
)

from .conftest import FORWARD_SECRET, ResourceFactory

Client = TestClient[Any, Any]
INTROSPECTION_CLIENT = ("resource-api", "introspection-secret-0123456789")
PASSWORD = "correct horse battery staple"

#: Generated requests per operation and credential kind it accepts: bounded, so `make
#: test` stays quick; derandomized, so a failure found once is found again.
MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


# --- (a) valid OpenAPI 3.1 --------------------------------------------------------------


@pytest.mark.parametrize("describe", [auth_description, replica_description])
def test_the_description_is_valid_openapi_3_1(describe: Callable[[], dict[str, Any]]) -> None:
    document = describe()
    validate(document)
    assert document["openapi"].startswith("3.1.")


# --- (b) the route table, both ways -----------------------------------------------------


def _unconnected_auth_app() -> web.Application:
    """The auth app as it registers its routes; nothing connects until it starts."""
    return create_app(
        Settings(
            database_url="postgresql://unused/tessera",
            redis_url="redis://unused",
            session_hash_key=b"h" * 32,
            key_encryption_key=b"k" * 40,
        )
    )


def _unconnected_replica_app() -> web.Application:
    """A replica with every authentication method on, so every route it can have is there."""
    policy = SessionPolicy()
    verify = VerifyConfig(
        issuer="https://auth.tessera.test",
        audience="tessera-api",
        methods=(
            JwtConfig(jwks_url="http://auth.tessera.test/.well-known/jwks.json"),
            SharedSessionConfig(hash_key=b"h" * 32, policy=policy),
            LocalSessionConfig(policy=policy),
            ForwardConfig(secret=FORWARD_SECRET),
        ),
        redis_url="redis://unused",
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    return create_resource_app(
        ResourceSettings(
            database_url="postgresql://unused/tessera",
            auth_url="http://auth.tessera.test",
            verify=verify,
        )
    )


def _route_table(app: web.Application) -> set[tuple[str, str]]:
    """``(METHOD, path template)`` of every route; the HEAD aiohttp adds to each GET
    is that GET (RFC 9110 §9.3.2) and is checked to have one."""
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()}
    heads = {(method, path) for method, path in routes if method == "HEAD"}
    assert {("GET", path) for _, path in heads} <= routes, "a HEAD route without its GET"
    return routes - heads


@pytest.mark.parametrize(
    ("make_app", "describe"),
    [
        (_unconnected_auth_app, auth_description),
        (_unconnected_replica_app, replica_description),
    ],
    ids=["auth", "replica"],
)
def test_every_route_is_described_and_every_described_operation_is_a_route(
    make_app: Callable[[], web.Application], describe: Callable[[], dict[str, Any]]
) -> None:
    registered, described = _route_table(make_app()), operations(describe())
    assert registered - described == set(), "routes the description leaves out"
    assert described - registered == set(), "described operations no route serves"


def test_every_operation_says_who_may_call_it_and_answers_no_undescribed_5xx() -> None:
    for describe in (auth_description, replica_description):
        for path, item in describe()["paths"].items():
            for method, operation in item.items():
                assert "security" in operation, f"{method} {path}: no security"
                statuses = {int(status) for status in operation["responses"]}
                assert all(status < 500 or status == 503 for status in statuses), path


# --- live services ----------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """An introspection client, and no per-address throttle across accounts: the fuzzer
    sends every failed login from 127.0.0.1, and its own fresh logins must still pass."""
    client_id, secret = INTROSPECTION_CLIENT
    return replace(
        settings,
        introspection_clients=((client_id, secret.encode()),),
        regulation=RegulationPolicy(max_failures_per_address=0),
    )


async def test_each_service_serves_its_description_publicly_and_cacheably(
    auth: Client, make_replica: ResourceFactory
) -> None:
    replica = await make_replica()
    for client, describe in ((auth, auth_description), (replica, replica_description)):
        response = await client.get(OPENAPI_PATH)
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == json.loads(json.dumps(describe()))
        assert response.headers["Cache-Control"].startswith("public")
        etag = response.headers["ETag"]
        again = await client.get(OPENAPI_PATH, headers={"If-None-Match": etag})
        assert again.status == 304
        assert again.headers["ETag"] == etag
        assert (await client.get(OPENAPI_PATH, headers={"If-None-Match": '"old"'})).status == 200


# --- (c) schemathesis against the live services -----------------------------------------


@dataclass
class Credentials:
    """Fresh credentials of every kind for one user, logged in anew for each request
    (a fuzzed logout or password change may have revoked the last ones)."""

    auth_url: str
    replica_url: str | None = None
    username: str = field(default_factory=lambda: f"fuzz-{uuid.uuid4().hex[:10]}")
    http: requests.Session = field(default_factory=requests.Session)
    user_id: str = ""

    def register(self) -> None:
        response = self.http.post(
            self.auth_url + "/auth/register",
            json={"username": self.username, "password": PASSWORD},
        )
        assert response.status_code == 201, response.text
        self.user_id = response.json()["user"]["id"]

    def _login(self, url: str, **extra: str) -> requests.Response:
        response = self.http.post(
            url, json={"username": self.username, "password": PASSWORD, **extra}
        )
        assert response.status_code == 200, response.text
        return response

    def present(self, kind: str) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and cookies carrying a live credential of ``kind``."""
        if kind == "bearer":
            login = self._login(self.auth_url + "/auth/login", credential="token")
            return {"Authorization": f"Bearer {login.json()['access_token']}"}, {}
        if kind == "session":
            login = self._login(self.auth_url + "/auth/login")
            return {}, {SESSION_COOKIE: login.cookies[SESSION_COOKIE]}
        if kind == "local_session":
            assert self.replica_url is not None
            login = self._login(self.replica_url + "/api/login")
            return {}, {LOCAL_SESSION_COOKIE: login.cookies[LOCAL_SESSION_COOKIE]}
        if kind == "forward":
            return {
                FORWARD_USER_ID_HEADER: self.user_id,
                FORWARD_SECRET_HEADER: FORWARD_SECRET.decode(),
            }, {}
        if kind == "introspection_client":
            pair = ":".join(INTROSPECTION_CLIENT).encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}, {}
        raise AssertionError(kind)


@dataclass
class FuzzReport:
    operations: int = 0
    requests: int = 0
    failures: list[str] = field(default_factory=list)


#: Credential headers and cookies schemathesis generates from the security schemes:
#: dropped when the case is sent with a real credential instead.
GENERATED_CREDENTIALS = {
    "authorization",
    FORWARD_SECRET_HEADER.lower(),
    FORWARD_USER_ID_HEADER.lower(),
}


#: The credential sent for each security scheme an operation names.
CREDENTIAL_KINDS = {
    openapi.BEARER: "bearer",
    openapi.SESSION: "session",
    openapi.LOCAL_SESSION: "local_session",
    openapi.FORWARD_SECRET: "forward",
    openapi.INTROSPECTION_CLIENT: "introspection_client",
}


def _credential_kinds(operation: Mapping[str, Any]) -> list[str]:
    """Anonymous always, then a live credential of each kind the operation accepts."""
    schemes = {name for requirement in operation.get("security", []) for name in requirement}
    return ["anonymous"] + [kind for name, kind in CREDENTIAL_KINDS.items() if name in schemes]


def fuzz(document: dict[str, Any], base_url: str, credentials: Credentials) -> FuzzReport:
    """Run schemathesis over every operation of ``document`` at ``base_url`` (the
    document the service serves: the test above holds them equal; schemathesis leaves
    out the operation it would load a description from).

    Blocking (requests, Hypothesis): run it in a thread while the loop serves the apps.
    """
    schema = schemathesis.openapi.from_dict(document)
    report = FuzzReport()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        kinds = _credential_kinds(operation.definition.raw)
        report.operations += 1
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @hypothesis_settings(
            max_examples=MAX_EXAMPLES * len(kinds),
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # no shrinking: the report names the case as sent
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=strategy, kind=st.sampled_from(kinds))
        def run(case: schemathesis.Case, kind: str) -> None:
            headers: dict[str, str] = {}
            cookies: dict[str, str] = {}
            if kind != "anonymous":
                headers, cookies = credentials.present(kind)
                if case.headers:
                    case.headers = {
                        name: value
                        for name, value in case.headers.items()
                        if name.lower() not in GENERATED_CREDENTIALS
                    }
                case.cookies = {}
            report.requests += 1
            case.call_and_validate(
                base_url=base_url,
                session=session,
                headers=headers,
                cookies=cookies,
                checks=CHECKS,
            )

        try:
            run()
        except FailureGroup as failure:
            report.failures.append(f"{operation.label}: {failure}")
    return report


async def test_schemathesis_finds_no_server_error_and_no_answer_the_description_lacks(
    auth_server: TestServer, make_replica: ResourceFactory
) -> None:
    auth_url = str(auth_server.make_url("")).rstrip("/")
    replica = await make_replica("r1")
    replica_url = str(replica.make_url("")).rstrip("/")

    def run_both() -> tuple[FuzzReport, FuzzReport]:
        credentials = Credentials(auth_url, replica_url)
        credentials.register()
        return (
            fuzz(auth_description(), auth_url, credentials),
            fuzz(replica_description(), replica_url, credentials),
        )

    auth_report, replica_report = await asyncio.to_thread(run_both)
    failures = auth_report.failures + replica_report.failures
    assert not failures, "\n\n".join(failures)
    assert auth_report.operations == len(operations(auth_description()))
    assert replica_report.operations == len(operations(replica_description()))
    print(
        f"schemathesis: auth {auth_report.operations} operations, {auth_report.requests} "
        f"requests; replica {replica_report.operations} operations, "
        f"{replica_report.requests} requests"
    )


# --- the described answers fuzzing rarely reaches ----------------------------------------


@dataclass
class Described:
    """Requests written out, sent to a live service and held to its description by the
    same checks as the fuzzing: the success answers random data cannot reach (a valid
    login, a token refresh, a live introspection) are described too."""

    document: dict[str, Any]
    base_url: str
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.schema = schemathesis.openapi.from_dict(self.document)

    def send(
        self,
        method: str,
        path: str,
        status: int,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        path_parameters: dict[str, str] | None = None,
    ) -> schemathesis.Response:
        operation = self.schema[path][method]
        if form is not None:
            case = operation.Case(body=form, media_type="application/x-www-form-urlencoded")
        elif json_body is not None:
            case = operation.Case(body=json_body, media_type="application/json")
        else:
            case = operation.Case()
        if path_parameters:
            case.path_parameters = path_parameters
        response = case.call_and_validate(
            base_url=self.base_url,
            session=self.http,
            headers=headers or {},
            cookies=cookies or {},
            checks=CHECKS,
        )
        assert response.status_code == status, (method, path, response.text)
        return response


def _set_cookie(response: schemathesis.Response, name: str) -> dict[str, str]:
    for line in response.headers.get("set-cookie", []):
        if line.startswith(name + "="):
            return {name: line.split(";", 1)[0].split("=", 1)[1]}
    raise AssertionError(f"no {name} cookie set")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _walk_the_auth_service(auth: Described) -> dict[str, Any]:
    name, client = f"walk-{uuid.uuid4().hex[:8]}", Credentials(auth.base_url)
    basic = client.present("introspection_client")[0]
    user = {"username": name, "password": PASSWORD}
    auth.send("POST", "/auth/register", 201, json_body=user)
    auth.send("POST", "/auth/register", 409, json_body=user)
    auth.send("POST", "/auth/password-check", 200, json_body=user)
    with_session = auth.send("POST", "/auth/login", 200, json_body=user)
    cookie = _set_cookie(with_session, SESSION_COOKIE)
    pair = auth.send("POST", "/auth/login", 200, json_body={**user, "credential": "both"}).json()
    token, refresh = pair["access_token"], pair["refresh_token"]
    auth.send("GET", "/auth/me", 200, cookies=cookie)
    auth.send("GET", "/auth/me", 200, headers=_bearer(token))
    auth.send("GET", "/auth/forward", 200, headers=_bearer(token))
    sessions = auth.send("GET", "/auth/sessions", 200, cookies=cookie).json()["sessions"]
    for credential in (token, refresh, "not-a-credential"):
        auth.send("POST", "/auth/introspect", 200, form={"token": credential}, headers=basic)
    auth.send("POST", "/auth/introspect", 401, form={"token": token})
    rotated = auth.send(
        "POST", "/auth/token", 200, form={"grant_type": "refresh_token", "refresh_token": refresh}
    ).json()
    auth.send(
        "POST",
        "/auth/token",
        200,
        json_body={"grant_type": "refresh_token", "refresh_token": rotated["refresh_token"]},
    )
    auth.send(
        "POST", "/auth/token", 400, form={"grant_type": "refresh_token", "refresh_token": "nope"}
    )
    auth.send("POST", "/auth/revoke", 200, json_body={"token": rotated["access_token"]})
    session_id = next(s["id"] for s in sessions if not s["current"])
    auth.send(
        "DELETE",
        "/auth/sessions/{session_id}",
        200,
        cookies=cookie,
        path_parameters={"session_id": session_id},
    )
    again = auth.send("POST", "/auth/login", 200, json_body={**user, "credential": "both"}).json()
    auth.send(
        "POST",
        "/auth/logout",
        200,
        form={"refresh_token": again["refresh_token"]},
        headers=_bearer(again["access_token"]),
    )
    fresh = auth.send("POST", "/auth/login", 200, json_body={**user, "credential": "token"})
    new_password = PASSWORD + " and more"
    auth.send(
        "POST",
        "/auth/password",
        200,
        json_body={"current_password": PASSWORD, "new_password": new_password},
        headers=_bearer(fresh.json()["access_token"]),
    )
    last = auth.send(
        "POST", "/auth/login", 200, json_body={"username": name, "password": new_password}
    )
    auth.send("POST", "/auth/logout-all", 200, cookies=_set_cookie(last, SESSION_COOKIE))
    stranger = {"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": "wrong " * 3}
    for _ in range(5):  # an address's budget of failures on one name, then 429
        auth.send("POST", "/auth/login", 401, json_body=stranger)
    auth.send("POST", "/auth/login", 429, json_body=stranger)
    for path in ("/healthz", "/readyz", "/metrics", JWKS_PATH, METADATA_PATH):
        auth.send("GET", path, 200)
    return {"username": name, "password": new_password}


def _walk_a_replica(auth: Described, replica: Described, user: dict[str, Any]) -> None:
    token = auth.send("POST", "/auth/login", 200, json_body={**user, "credential": "token"})
    bearer = _bearer(token.json()["access_token"])
    replica.send("GET", "/api/me", 200, headers=bearer)
    replica.send("POST", "/api/comments", 201, json_body={"body": "  hello  "}, headers=bearer)
    replica.send("POST", "/api/comments", 400, json_body={"body": "nul\x00"}, headers=bearer)
    replica.send("GET", "/api/comments", 200, headers=bearer)
    replica.send("POST", "/api/logout", 400, headers=bearer)  # not a local session
    local = _set_cookie(
        replica.send("POST", "/api/login", 200, json_body=user), LOCAL_SESSION_COOKIE
    )
    replica.send(
        "POST",
        "/api/comments",
        403,
        json_body={"body": "from elsewhere"},
        cookies=local,
        headers={"Origin": "https://elsewhere.example"},
    )
    replica.send("GET", "/api/me", 200, cookies=local)
    replica.send("POST", "/api/logout", 200, cookies=local)
    replica.send("GET", "/api/me", 401, cookies=local)
    for path in ("/healthz", "/readyz", "/metrics"):
        replica.send("GET", path, 200)


async def test_the_success_answers_fuzzing_cannot_reach_are_described(
    auth_server: TestServer, make_replica: ResourceFactory
) -> None:
    auth_url = str(auth_server.make_url("")).rstrip("/")
    replica_url = str((await make_replica("r1")).make_url("")).rstrip("/")

    def walk() -> None:
        auth = Described(auth_description(), auth_url)
        user = _walk_the_auth_service(auth)
        _walk_a_replica(auth, Described(replica_description(), replica_url), user)

    await asyncio.to_thread(walk)


async def test_the_fuzzing_reports_an_answer_the_description_lacks(
    auth_server: TestServer,
) -> None:
    """The harness itself: a description that lies about one answer is caught."""
    auth_url = str(auth_server.make_url("")).rstrip("/")
    document = copy.deepcopy(auth_description())
    document["paths"] = {"/healthz": document["paths"]["/healthz"]}
    health = document["components"]["schemas"]["Health"]
    health["properties"]["status"] = {"const": "never"}
    report = await asyncio.to_thread(fuzz, document, auth_url, Credentials(auth_url))
    assert report.operations == 1
    assert len(report.failures) == 1
    assert "/healthz" in report.failures[0]
