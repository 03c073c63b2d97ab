"""A second fault pass: paused servers, and races between issuing and revoking.

Real PostgreSQL and Redis; the auth service and a resource replica run in-process
on real loopback sockets, on the wall clock (the races below are about what
happens between two requests' steps, which a frozen clock would blur).

- PostgreSQL paused with SIGSTOP (the postmaster and every backend): the process
  is there and its sockets accept, but nothing answers. Login, register, logout
  and refresh must answer 503 within the dependency timeout (plus a little), not
  hang; JWT validation on a replica goes on; after SIGCONT everything works
  again without a restart.
- A password change racing logins that present the old password: a login that
  checked the old password before the change is, at the latest, ordered before
  it, so whatever it hands out must be refused once the change has answered
  (within the 1 s propagation bound), wherever it is presented.
- Refreshes of one refresh token from many addresses racing a logout of its
  family: after the logout answered no refresh succeeds, and no pair handed out
  during the race works.
- Redis Cluster: the primary of the plane's slot SIGSTOPped (not killed) until its
  replica takes over, then SIGCONTed: revocations made meanwhile, after the
  failover and right after it returns are all refused by a replica within S, and
  the feed follows the slot to its new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.crc import key_slot

from tessera_auth.app import create_app
from tessera_auth.password_check import PasswordCheck
from tessera_auth.refresh_tokens import RefreshTokenStore
from tessera_auth.regulation import RegulationPolicy
from tessera_auth.settings import Settings
from tessera_resource.password_check import PasswordChecker
from tessera_stack import PostgresServer, free_port
from tessera_stack.redis_topologies import RedisClusterGroup
from tessera_stack.servers.redis_server import ask
from tessera_verify import redis_layout
from tessera_verify.clock import SystemClock
from tessera_verify.integration import LOCAL_SESSION_COOKIE, tessera_verify
from tessera_verify.sessions import SESSION_COOKIE

from .conftest import LoggedIn, ResourceFactory, log_in_with_everything, with_changes
from .fixtures_infra import running, until
from .test_revocation_failover import _logout, _me

Client = TestClient[Any, Any]
AuthFactory = Callable[..., Awaitable[Client]]
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "an entirely different passphrase"
TIMEOUT = 0.5  # the dependency timeout these tests run with
BOUND = 1.0  # the propagation bound when healthy
#: Throttling is not under test here: many logins of one account at once must not
#: be spaced out or refused by it (it has tests of its own).
NO_THROTTLE = RegulationPolicy(
    max_failures_per_account=0, max_failures_per_address=0, max_failures_per_pair=0
)


@pytest.fixture
def clock() -> SystemClock:
    """The wall clock for every app of this module (overrides conftest's manual one)."""
    return SystemClock()


@pytest.fixture
def make_auth(
    aiohttp_client: Callable[..., Awaitable[Client]],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    settings: Settings,
    clock: SystemClock,
) -> AuthFactory:
    """An auth service on a real socket (replicas fetch its JWKS) with changed settings."""

    async def make(**changes: Any) -> Client:
        changed = with_changes(settings, regulation=NO_THROTTLE, argon2_max_pending=1000, **changes)
        return await aiohttp_client(await aiohttp_server(create_app(changed, clock=clock)))

    return make


def _url(auth: Client) -> str:
    return str(auth.server.make_url("")).rstrip("/")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={session_id}"}


def _refresh_body(token: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "refresh_token": token}


async def _register(auth: Client) -> str:
    name = f"user-{uuid.uuid4().hex[:10]}"
    response = await auth.post("/auth/register", json={"username": name, "password": PASSWORD})
    assert response.status == 201, await response.text()
    return name


async def _login(auth: Client, name: str, credential: str = "both") -> dict[str, Any]:
    response = await auth.post(
        "/auth/login", json={"username": name, "password": PASSWORD, "credential": credential}
    )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    if SESSION_COOKIE in response.cookies:
        body["session_id"] = response.cookies[SESSION_COOKIE].value
    return body


async def _accepted_after(
    auth: Client, replica: Client, issued: dict[str, Any], seconds: float
) -> list[str]:
    """The credentials of ``issued`` that are still accepted ``seconds`` from now (each
    polled until refused, for at most that long); an empty list when all are refused."""

    async def token_refused() -> bool:
        response = await replica.get("/api/me", headers=_bearer(issued["access_token"]))
        return response.status == 401

    async def session_refused() -> bool:
        response = await auth.get("/auth/me", headers=_cookie(issued["session_id"]))
        return response.status == 401

    checks = {"access token on the replica": token_refused}
    if "session_id" in issued:
        checks["session on the auth service"] = session_refused
    outcomes = await asyncio.gather(*(until(check, seconds) for check in checks.values()))
    accepted = [what for what, refused in zip(checks, outcomes, strict=True) if not refused]
    # A refresh is not a read: it is tried once, after the bound (a success would rotate).
    response = await auth.post("/auth/token", json=_refresh_body(issued["refresh_token"]))
    if response.status != 400:
        accepted.append(f"refresh token ({response.status})")
    return accepted


async def _none_outlives(
    auth: Client, replica: Client, issued: list[dict[str, Any] | None], who: str, what: str
) -> None:
    """Assert that none of the credentials ``issued`` (None: refused) is accepted
    ``BOUND`` seconds from now: ``who`` got them racing ``what``."""
    handed_out = [body for body in issued if body is not None]
    accepted = await asyncio.gather(
        *(_accepted_after(auth, replica, body, BOUND) for body in handed_out)
    )
    survivors = [found for found in accepted if found]
    assert survivors == [], (
        f"{len(survivors)} of {len(handed_out)} {who} hold credentials still accepted "
        f"{BOUND} s after {what}: {survivors[:3]}"
    )


# --- PostgreSQL paused (SIGSTOP) --------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, which a test pauses."""
    with running(PostgresServer(tmp_path_factory.mktemp("paused-pg"), port=free_port())) as pg:
        yield pg


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the postmaster and its backends), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@contextlib.contextmanager
def _paused(server: PostgresServer) -> Iterator[None]:
    assert server.pid is not None
    pids = _process_tree(server.pid)
    stopped: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def test_a_paused_postgresql_answers_503_within_the_dependency_timeout_then_recovers(
    make_auth: AuthFactory, make_replica: ResourceFactory, own_postgres: PostgresServer
) -> None:
    """Every request that needs PostgreSQL answers 503 within the dependency timeout
    (README: ``TESSERA_DEPENDENCY_TIMEOUT``, "seconds for Redis/PostgreSQL calls before
    503") plus a little, while PostgreSQL is paused; JWTs keep verifying on a replica.

    Failed before the fix: each answered 503 only after ten times the dependency timeout (20 s
    with the default 2 s). A request handed a connection already in the pool waits for
    asyncpg's ``command_timeout``, which ``create_pool`` (tessera_platform.pg_migrations)
    sets to five times the dependency timeout; then giving the connection back to the
    pool waits as long again (asyncpg waits for the cancellation of the timed-out
    query, which needs a new connection to the paused postmaster, and resets the
    connection) before the error reaches the handler.
    """
    auth = await make_auth(database_url=own_postgres.url, dependency_timeout=TIMEOUT)
    replica = await make_replica(
        "r1", auth_url=_url(auth), database_url=own_postgres.url, dependency_timeout=TIMEOUT
    )
    name = await _register(auth)
    # Several logins at once: the pool holds several idle connections when PostgreSQL stops.
    issued = await asyncio.gather(*(_login(auth, name) for _ in range(4)))
    kept, logged_out, refreshed, _ = issued
    assert (await replica.get("/api/me", headers=_bearer(kept["access_token"]))).status == 200

    async def timed(request: Awaitable[aiohttp.ClientResponse]) -> tuple[int, float]:
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(request, 5 * TIMEOUT + 10)
        except TimeoutError:
            return 0, time.monotonic() - started  # no answer at all
        await response.read()
        return response.status, round(time.monotonic() - started, 2)

    with _paused(own_postgres):
        answers = await asyncio.gather(
            timed(auth.post("/auth/login", json={"username": name, "password": PASSWORD})),
            timed(auth.post("/auth/register", json={"username": name + "x", "password": PASSWORD})),
            timed(
                auth.post(
                    "/auth/logout",
                    headers=_bearer(logged_out["access_token"]),
                    json={"refresh_token": logged_out["refresh_token"]},
                )
            ),
            timed(auth.post("/auth/token", json=_refresh_body(refreshed["refresh_token"]))),
        )
        validation = await replica.get("/api/me", headers=_bearer(kept["access_token"]))
        assert validation.status == 200, await validation.text()  # validation goes on
    labels = ("login", "register", "logout", "refresh")
    late = {
        label: answer
        for label, answer in zip(labels, answers, strict=True)
        if answer[0] != 503 or answer[1] > TIMEOUT + 1.0
    }

    # After SIGCONT, without a restart: the refused logout and refresh work now.
    response = await auth.post(
        "/auth/logout",
        headers=_bearer(logged_out["access_token"]),
        json={"refresh_token": logged_out["refresh_token"]},
    )
    assert response.status == 200, await response.text()
    assert await _accepted_after(auth, replica, logged_out, BOUND) == []
    response = await auth.post("/auth/token", json=_refresh_body(refreshed["refresh_token"]))
    assert response.status == 200, await response.text()
    assert (
        await auth.post("/auth/register", json={"username": name + "y", "password": PASSWORD})
    ).status == 201
    assert late == {}, f"(status, seconds) of answers not 503 within {TIMEOUT} s + 1 s: {late}"


# --- a password change racing logins with the old password ------------------------------


async def _interrupted(
    monkeypatch: pytest.MonkeyPatch,
    pause_after: tuple[type, str],
    request: Awaitable[aiohttp.ClientResponse],
    meanwhile: Callable[[], Awaitable[aiohttp.ClientResponse]],
) -> aiohttp.ClientResponse:
    """``request``'s response, where the first call of the coroutine method
    ``pause_after`` made while serving it waits, once returned, until ``meanwhile``
    has answered 200 (later calls run straight through)."""
    owner, name = pause_after
    reached, release = asyncio.Event(), asyncio.Event()
    original = getattr(owner, name)

    async def pausing(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        if not reached.is_set():
            reached.set()
            await release.wait()
        return result

    monkeypatch.setattr(owner, name, pausing)
    started = asyncio.ensure_future(request)
    try:
        await asyncio.wait_for(reached.wait(), 10)
        response = await meanwhile()
        assert response.status == 200, await response.text()
    finally:
        release.set()
    return await asyncio.wait_for(started, 10)


def _password_change(auth: Client, owner: dict[str, Any]) -> Awaitable[aiohttp.ClientResponse]:
    return auth.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=_bearer(owner["access_token"]),
    )


async def test_a_login_that_checked_the_old_password_gets_nothing_that_outlives_the_change(
    make_auth: AuthFactory, make_replica: ResourceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving made deterministic: a login has checked the (old) password; the
    owner changes it, which answers 200 ("everything issued before is revoked"); then
    the login issues its session and token pair. Either that login is refused, or all
    it hands out must be refused within the propagation bound: it was obtained with a
    password that was no longer valid when the change answered.

    Failed before the fix: the session and the access token stayed valid (the refresh token was
    refused). The login issues after the change's "revoke everything" was recorded,
    and both credentials are dated after it: the session's ``created_at`` is the
    time of issue, and ``AccessTokenIssuer.issue`` even moves ``iat`` past the user's
    valid-after time on purpose ("never born revoked"). Nothing re-checks that the
    password checked is still the user's password when the credentials are made.
    """
    auth = await make_auth()
    replica = await make_replica("r1", auth_url=_url(auth))
    name = await _register(auth)
    owner = await _login(auth, name, credential="token")
    response = await _interrupted(
        monkeypatch,
        (PasswordCheck, "check"),
        auth.post(
            "/auth/login", json={"username": name, "password": PASSWORD, "credential": "both"}
        ),
        lambda: _password_change(auth, owner),
    )
    if response.status != 200:
        assert response.status == 401, await response.text()
        return
    issued = await response.json()
    issued["session_id"] = response.cookies[SESSION_COOKIE].value
    accepted = await _accepted_after(auth, replica, issued, BOUND)
    assert accepted == [], f"still accepted {BOUND} s after the password change: {accepted}"


async def test_logins_racing_a_password_change_get_nothing_that_outlives_it(
    make_auth: AuthFactory, make_replica: ResourceFactory
) -> None:
    """The same without help: 20 logins with the old password, started 2 ms apart, the
    password change among them. Every credential any of them got must be refused
    within the bound after the change answered. (Failed before the fix in most rounds; see the
    deterministic test above for why.)"""
    auth = await make_auth()
    replica = await make_replica("r1", auth_url=_url(auth))
    for _ in range(3):  # rounds, each on a user of its own
        name = await _register(auth)
        owner = await _login(auth, name, credential="token")

        async def login(delay: float, who: str = name) -> dict[str, Any] | None:
            await asyncio.sleep(delay)
            response = await auth.post(
                "/auth/login", json={"username": who, "password": PASSWORD, "credential": "both"}
            )
            if response.status != 200:
                assert response.status == 401, await response.text()
                return None
            body: dict[str, Any] = await response.json()
            body["session_id"] = response.cookies[SESSION_COOKIE].value
            return body

        async def change(delay: float, token: str = owner["access_token"]) -> int:
            await asyncio.sleep(delay)
            response = await auth.post(
                "/auth/password",
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                headers=_bearer(token),
            )
            return response.status

        changed, *logins = await asyncio.gather(
            change(0.015), *(login(0.002 * i) for i in range(20))
        )
        assert changed == 200
        await _none_outlives(auth, replica, logins, "logins with the old password", "the change")


async def test_a_replica_login_that_checked_the_old_password_keeps_no_session_past_the_change(
    make_auth: AuthFactory, make_replica: ResourceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same interleaving on a replica that keeps its own sessions (rows 1-3): the
    auth service has said the (old) password is right; the owner changes it (200);
    then the replica starts its session. It must be refused within the bound.

    Failed before the fix, twice over: a replica's own sessions were never checked
    against the revocation plane (a password change or a logout everywhere left them
    all alive), and the session was dated when the replica made it, after the
    change's "revoke everything". Now they are checked like shared sessions, and
    dated from when the auth service began the check (``checked_at``)."""
    auth = await make_auth()
    replica = await make_replica("r1", auth_url=_url(auth))
    name = await _register(auth)
    owner = await _login(auth, name, credential="token")
    response = await _interrupted(
        monkeypatch,
        (PasswordChecker, "check"),
        replica.post("/api/login", json={"username": name, "password": PASSWORD}),
        lambda: _password_change(auth, owner),
    )
    assert response.status == 200, await response.text()
    cookie = {"Cookie": f"{LOCAL_SESSION_COOKIE}={response.cookies[LOCAL_SESSION_COOKIE].value}"}

    async def refused() -> bool:
        return (await replica.get("/api/me", headers=cookie)).status == 401

    assert await until(refused, BOUND), "the replica's session outlived the password change"


# --- refreshes of one token racing a logout of its family ------------------------------


async def test_a_refresh_claimed_before_a_logout_everywhere_hands_out_nothing_that_outlives_it(
    make_auth: AuthFactory, make_replica: ResourceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh has passed every check and spent its token; the owner logs out
    everywhere (200: "every access token issued so far"); then the refresh makes its
    pair. Either it is refused, or what it hands out is refused within the bound.

    Failed before the fix: the pair was made after the revocation was recorded, and
    ``TokenPairs.issue`` dates the access token after the user's "valid after" time,
    so the new access token lived its whole lifetime. Now the revocation flags the
    refresh families before it is dated, and the refresh, once its pair is made,
    hands it out only if its family still stands."""
    auth = await make_auth()
    replica = await make_replica("r1", auth_url=_url(auth))
    login = await _login(auth, await _register(auth), credential="token")
    response = await _interrupted(
        monkeypatch,
        (RefreshTokenStore, "claim"),
        auth.post("/auth/token", json=_refresh_body(login["refresh_token"])),
        lambda: auth.post("/auth/logout-all", headers=_bearer(login["access_token"])),
    )
    if response.status != 200:
        body = await response.json()
        assert (response.status, body["error"]) == (400, "invalid_grant"), body
        return
    pair = await response.json()
    accepted = await _accepted_after(auth, replica, pair, BOUND)
    assert accepted == [], f"still accepted {BOUND} s after logout-all answered: {accepted}"


async def test_refreshes_racing_a_logout_everywhere_hand_out_nothing_that_outlives_it(
    make_auth: AuthFactory,
    make_replica: ResourceFactory,
    from_addresses: Callable[[int], aiohttp.ClientSession],
) -> None:
    """The same without help: one refresh each of 20 logins of one user, from distinct
    addresses, started 1 ms apart, the logout everywhere among them."""
    auth = await make_auth()
    replica = await make_replica("r1", auth_url=_url(auth))
    url = _url(auth) + "/auth/token"
    for _ in range(3):  # rounds, each on a user of its own
        name = await _register(auth)
        logins = [await _login(auth, name, credential="token") for _ in range(20)]

        async def refresh(n: int, token: str) -> dict[str, Any] | None:
            await asyncio.sleep(0.001 * n)
            async with from_addresses(n + 1).post(url, json=_refresh_body(token)) as response:
                body: dict[str, Any] = await response.json()
                assert response.status in (200, 400), (response.status, body)
                return body if response.status == 200 else None

        async def logout_everywhere(bearer: str = logins[0]["access_token"]) -> int:
            await asyncio.sleep(0.008)
            return (await auth.post("/auth/logout-all", headers=_bearer(bearer))).status

        status, *pairs = await asyncio.gather(
            logout_everywhere(), *(refresh(n, b["refresh_token"]) for n, b in enumerate(logins))
        )
        assert status == 200
        await _none_outlives(auth, replica, pairs, "refreshes", "logout-all answered")


async def test_refreshes_racing_a_logout_of_their_family_hand_out_nothing_that_works_after(
    make_auth: AuthFactory,
    make_replica: ResourceFactory,
    from_addresses: Callable[[int], aiohttp.ClientSession],
) -> None:
    auth = await make_auth()
    replica = await make_replica("r1", auth_url=_url(auth))
    url = _url(auth) + "/auth/token"
    for _ in range(5):  # rounds, each on a login of its own
        login = await _login(auth, await _register(auth), credential="token")
        done_at: list[float] = []

        async def refresh(n: int, token: str = login["refresh_token"]) -> tuple[float, Any]:
            await asyncio.sleep(0.002 * n)
            sent = time.monotonic()
            async with from_addresses(n).post(url, json=_refresh_body(token)) as response:
                body = await response.json()
                assert response.status in (200, 400), (response.status, body)
                return sent, body if response.status == 200 else None

        async def logout(
            bearer: str = login["access_token"],
            refresh_token: str = login["refresh_token"],
            done: list[float] = done_at,
        ) -> None:
            await asyncio.sleep(0.02)
            response = await auth.post(
                "/auth/logout", headers=_bearer(bearer), json={"refresh_token": refresh_token}
            )
            assert response.status == 200, await response.text()
            done.append(time.monotonic())

        refreshes, _ = await asyncio.gather(
            asyncio.gather(*(refresh(n) for n in range(1, 26))), logout()
        )
        after = [body for sent, body in refreshes if sent > done_at[0] and body is not None]
        assert after == [], "a refresh sent after the logout answered succeeded"
        pairs = {body["refresh_token"]: body for _, body in refreshes if body is not None}
        for pair in pairs.values():
            assert await _accepted_after(auth, replica, pair, BOUND) == []
        # The token the family started with is dead too.
        response = await auth.post("/auth/token", json=_refresh_body(login["refresh_token"]))
        assert response.status == 400


# --- Redis Cluster: the plane's primary paused (SIGSTOP) until a replica takes over ------


def _slot_owner(group: RedisClusterGroup, slot: int, *, skip: int) -> int | None:
    """The port of the node that owns ``slot``, as the nodes other than ``skip`` say."""
    for node in group.nodes:
        if node.port == skip:
            continue
        with contextlib.suppress(Exception):
            for start, end, owner, *_ in ask(node.port, "CLUSTER", "SLOTS", timeout=0.5) or []:
                if int(start) <= slot <= int(end):
                    return int(owner[1])
    return None


async def test_a_paused_cluster_primary_of_the_plane_reopens_nothing_and_the_feed_follows(
    redis_cluster_group: RedisClusterGroup,
    make_auth: AuthFactory,
    make_replica: ResourceFactory,
) -> None:
    """The node owning the plane's slot is SIGSTOPped (not killed: it keeps its sockets
    and comes back calling itself primary) until its replica takes the slot over, then
    SIGCONTed. A revocation made while it is paused, after the failover and right after
    it returns must each be refused by the replica within S; a credential revoked before
    is never accepted; the live user is only ever answered 200 or 503."""
    group = redis_cluster_group
    staleness, timeout = 2.0, 1.0
    auth = await make_auth(
        redis_url=group.url, revocation_max_staleness=staleness, dependency_timeout=timeout
    )
    replica = await make_replica(
        "r1", redis_url=group.url, revocation_max_staleness=staleness, dependency_timeout=timeout
    )
    cache = tessera_verify(replica.app).revocations
    assert cache is not None
    assert await cache.wait_fresh(10.0)
    before, live, during, after_failover, after_resume = [
        await log_in_with_everything(auth) for _ in range(5)
    ]
    assert await _logout(auth, before) == 200
    slot = key_slot(redis_layout.revocation_generation().encode())
    paused = group.primary_for(redis_layout.revocation_generation())
    assert paused is not None and paused.pid is not None

    seen: dict[str, set[int]] = {"before": set(), "live": set()}
    stop = asyncio.Event()

    async def ask_continuously() -> None:
        while not stop.is_set():
            seen["before"].update(await _me(replica, before))
            seen["live"].update(await _me(replica, live))
            await asyncio.sleep(0.02)

    async def refused_within(user: LoggedIn, seconds: float) -> bool:
        async def refused() -> bool:
            return await _me(replica, user) == (401, 401)

        return await until(refused, seconds)

    asker = asyncio.create_task(ask_continuously())
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        # Redis cannot take it now: a 503 (kept in PostgreSQL, in the next rebuild) or,
        # once the failover is over, a 200. Never a 500, never a hang.
        status = await asyncio.wait_for(_logout(auth, during), 5 * timeout + 10)
        assert status in (200, 503)
        for _ in range(300):  # the cluster marks it failed after cluster-node-timeout (1 s)
            owner = await asyncio.to_thread(_slot_owner, group, slot, skip=paused.port)
            if owner not in (None, paused.port):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no replica took the plane's slot over")
        assert await refused_within(during, staleness + 3.0), "revoked while paused"
        assert await _logout(auth, after_failover) == 200
        assert await refused_within(after_failover, staleness), "revoked after the failover"
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    try:
        assert await _logout(auth, after_resume) == 200
        assert await refused_within(after_resume, staleness), "revoked after SIGCONT"
        await asyncio.to_thread(group.wait_healthy, 60.0)
        assert await _me(replica, live) == (200, 200)
        for user in (before, during, after_failover, after_resume):
            assert await _me(replica, user) == (401, 401)
    finally:
        stop.set()
        await asyncio.gather(asker, return_exceptions=True)
    assert seen["before"] == {401}, seen
    assert seen["live"] <= {200, 503}, seen
