"""The load-balancer demonstration against the real stack: nginx with TLS, Redis,
PostgreSQL, the auth service and three resource replicas, started by the launcher
in a temporary run directory on free ports.

Every row of DESIGN.md's table is run once by the demo driver (the same code as
``make demo``) and its report is checked here: who could use the site before a
replica was SIGKILLed, who could after, and what errors users saw. Simulated
users connect from distinct loopback addresses, one /24 each, so ``ip_hash``
treats them as different clients (see ``tessera_demo.users.source_address``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tessera_demo.rows_walk import RowReport, run_row
from tessera_demo.stack_control import StackControl
from tessera_demo.users import PASSWORD, DemoUser, Exchange, demo_users, login, register
from tessera_stack.rows import ROWS

from .private_stack import private_stack_fixture

pytestmark = pytest.mark.slow

USERS = 12
ROUNDS = 8


stack = private_stack_fixture(redis_db=7, name="stack")


@pytest.fixture(scope="module")
def reports(stack: StackControl) -> dict[int, RowReport]:
    """Every row, measured once: log in, burst, kill a replica, burst again."""

    async def run_all() -> dict[int, RowReport]:
        return {number: await run_row(stack, number, users=USERS, rounds=ROUNDS) for number in ROWS}

    return asyncio.run(run_all())


def _served(exchanges: list[Exchange]) -> set[str]:
    return {e.served_by for e in exchanges if e.served_by is not None}


def test_the_stack_runs_three_replicas_behind_nginx_at_row_4(stack: StackControl) -> None:
    env = stack.env()
    assert env["BASE_URL"].startswith("https://127.0.0.1:")
    assert env["ROW"] == "4"
    assert env["POLICY"] == "round_robin"
    assert len(env["REPLICA_URLS"].split(",")) == 3
    assert Path(env["CA_CERT"]).is_file()


async def test_auth_behind_nginx_issues_secure_host_cookies_and_an_https_issuer(
    stack: StackControl,
) -> None:
    base_url = stack.base_url
    async with demo_users(1, stack.ca_cert, prefix="tls-user-") as (user,):
        await register([user], base_url)
        async with user.session.get(f"{base_url}/.well-known/oauth-authorization-server") as r:
            assert r.status == 200
            assert (await r.json())["issuer"] == base_url
        async with user.session.post(
            f"{base_url}/auth/login", json={"username": user.name, "password": PASSWORD}
        ) as response:
            assert response.status == 200
            assert "X-Request-ID" in response.headers
            cookie = response.cookies["__Host-tessera_session"]
            assert cookie["secure"]
            assert cookie["httponly"]
            assert cookie["path"] == "/"
            assert not cookie["domain"]
        async with user.session.get(f"{base_url}/api/me") as response:
            assert response.status == 200
            assert response.headers["X-Auth-Method"] == "shared_session"
            assert response.headers["X-Served-By"] in {"r1", "r2", "r3"}
        user.session.cookie_jar.clear()
        async with user.session.get(f"{base_url}/api/me") as response:
            assert response.status == 401


def test_row_1_sessions_in_replica_memory_with_round_robin_fail_for_most_requests(
    reports: dict[int, RowReport],
) -> None:
    report = reports[1]
    assert not report.login_failures
    assert report.before.total == USERS * ROUNDS
    assert report.before.success_rate < 0.5
    # Everyone's login worked; it is the next replica that does not know them.
    assert _served(report.before.exchanges()) == set(report.replicas)
    assert report.before.errors == 0


@pytest.mark.parametrize("number", [2, 3, 4, 5, 6])
def test_rows_2_to_6_serve_every_request_while_all_replicas_live(
    number: int, reports: dict[int, RowReport]
) -> None:
    report = reports[number]
    assert not report.login_failures
    assert report.before.total == USERS * ROUNDS
    assert report.before.ok == report.before.total
    # Every replica takes a share of the users (sticky rows) or of the requests.
    assert _served(report.before.exchanges()) == set(report.replicas)
    expected_method = {2: "local_session", 3: "local_session", 4: "shared_session"}.get(
        number, {5: "jwt", 6: "forward"}.get(number)
    )
    assert {e.auth_method for e in report.before.exchanges()} == {expected_method}


@pytest.mark.parametrize("number", [2, 3])
def test_sticky_rows_keep_users_on_their_replica_and_lose_exactly_its_users_when_it_dies(
    number: int, reports: dict[int, RowReport]
) -> None:
    report = reports[number]
    for user in report.users:
        assert report.before.replicas_for(user) == {report.homes[user]}
    victims = set(report.users_of_killed)
    assert victims, f"no user lived on {report.killed}"
    assert set(report.lost_users) == victims
    for user in report.users:
        if user in victims:
            # Now on another replica, which does not know them: 401, not an error.
            assert report.after.ok_for(user) == 0
            assert report.killed not in _served(list(report.after.by_user[user]))
        else:
            assert report.after.ok_for(user) == ROUNDS
    assert report.errors == 0


@pytest.mark.parametrize("number", [4, 5, 6])
def test_shared_state_rows_lose_nobody_and_nobody_sees_an_error_when_a_replica_dies(
    number: int, reports: dict[int, RowReport]
) -> None:
    report = reports[number]
    assert report.lost_users == ()
    assert report.errors == 0
    # GETs in flight on the killed replica were retried by nginx elsewhere.
    assert report.during.ok == report.during.total
    assert report.after.ok == report.after.total == USERS * ROUNDS
    assert report.killed not in _served(report.after.exchanges())


def test_every_row_matches_the_design_table(reports: dict[int, RowReport]) -> None:
    assert {number: report.unexpected() for number, report in reports.items()} == {
        number: [] for number in ROWS
    }


async def test_adding_and_removing_a_replica_under_a_burst_of_gets_fails_no_request(
    stack: StackControl, reports: dict[int, RowReport]
) -> None:
    await stack.switch_row(4)  # also brings back the replica the last row killed
    base_url = stack.base_url
    max_requests = 2000  # per user: the streams end by themselves whatever happens
    after_removal = 5  # requests per user once r4 is gone
    phase = "steady"
    log: list[tuple[str, Exchange]] = []  # (phase when sent, outcome), in answer order
    new_replica_served = asyncio.Event()
    removal_observed = asyncio.Event()

    async def stream(user: DemoUser) -> None:
        sent_after_removal = 0
        for count in range(max_requests):
            sent_in = phase
            path = "/api/me" if count % 2 == 0 else "/api/comments"
            exchange = await user.request(base_url, "GET", path)
            log.append((sent_in, exchange))
            if exchange.served_by == "r4":
                new_replica_served.set()
            if sent_in == "removed":
                sent_after_removal += 1
                if sent_after_removal == after_removal:
                    removal_observed.set()
                    return

    async def first(event: asyncio.Event, streams: asyncio.Future[list[None]]) -> None:
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.wait({waiter, streams}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async with demo_users(6, stack.ca_cert, prefix="scale-user-") as users:
        await register(users, base_url)
        logins = await asyncio.gather(*(login(user, base_url, ROWS[4]) for user in users))
        assert [exchange.status for exchange in logins] == [200] * len(users)
        streams = asyncio.gather(*(stream(user) for user in users))
        await stack.cli("add-replica")
        phase = "added"
        await first(new_replica_served, streams)
        assert new_replica_served.is_set(), "r4 never served a request"
        await stack.cli("remove-replica", "r4")
        phase = "removed"
        await streams

    assert [exchange for _, exchange in log if not exchange.ok] == []
    assert any(exchange.served_by == "r4" for _, exchange in log)
    assert removal_observed.is_set()
    assert not any(sent == "removed" and e.served_by == "r4" for sent, e in log)
    assert [entry.id for entry in stack.state().replicas] == ["r1", "r2", "r3"]
