"""The local stack when its Redis or PostgreSQL dies, against real processes.

One stack for the module, on a PostgreSQL and a durable Redis the launcher
runs itself (as ``make up`` does), with nginx, the auth service and three
replicas at row 4 (shared sessions, round-robin). The tests kill those
servers (SIGKILL, SIGSTOP), run ``up`` again, and check what clients see
through nginx: 503 with the JSON error while a dependency is away, never
502; the sessions of before a Redis crash still valid after it (AOF); and
``up`` restarting exactly what needs it. The outage figures (seconds from
Redis back to the first 2xx, requests failed) are recorded as JUnit
properties, never asserted against a time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tessera_demo.outage import probe_redis_outage
from tessera_demo.users import DemoUser, demo_users, login, register
from tessera_stack.processes import is_alive, port_is_open
from tessera_stack.rows import ROWS
from tessera_stack.services import AUTH_PROGRAM, REPLICA_PROGRAM, running_pid
from tessera_stack.state import AUTH

from .private_stack import OwnStack, own_stack

pytestmark = pytest.mark.slow

POLL = 0.05
MAX_POLLS = 400  # 20 s in 50 ms steps


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnStack]:
    with own_stack(tmp_path_factory.mktemp("outage-stack")) as control:
        yield control


async def _poll(predicate: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    for _ in range(MAX_POLLS):
        outcome = predicate()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"{what}: not within {MAX_POLLS} polls")


def _pids(stack: OwnStack) -> dict[str, int | None]:
    """Every tessera process and nginx, by name: what ``up`` must not restart needlessly."""
    state = stack.state()
    layout = stack.layout
    assert state.https_port is not None
    pids = {
        AUTH: running_pid(layout, AUTH, AUTH_PROGRAM),
        "nginx": layout.nginx_server(state.https_port).pid,
    }
    for entry in state.replicas:
        pids[entry.id] = running_pid(layout, entry.process, REPLICA_PROGRAM)
    return pids


def _kill(pid: int | None, sig: signal.Signals = signal.SIGKILL) -> None:
    assert pid is not None
    os.kill(pid, sig)


async def _status(user: DemoUser, url: str) -> tuple[int, str | None]:
    """A GET's status and, for a JSON error, its code."""
    async with user.session.get(url) as response:
        error = None
        if response.status >= 400 and response.content_type.endswith("json"):
            error = (await response.json()).get("error")
        await response.read()
        return response.status, error


# -- durability and restarts ------------------------------------------------------------


async def test_the_stacks_redis_keeps_an_aof_on_the_port_recorded_in_its_state(
    stack: OwnStack,
) -> None:
    state = stack.state()
    assert state.redis == "managed"
    assert state.redis_port is not None
    # stack.env holds the administrator's URL; the services log in as their roles' users.
    admin_password = stack.layout.redis_password("default")
    assert stack.env()["REDIS_URL"] == f"redis://:{admin_password}@127.0.0.1:{state.redis_port}/0"
    client = Redis.from_url(stack.env()["REDIS_URL"])
    try:
        users = {entry["user"] for entry in await client.client_list()}
        assert {"tessera-auth", "tessera-replica"} <= users
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
        assert await client.config_get("appendfsync") == {"appendfsync": "everysec"}
        directory = (await client.config_get("dir"))["dir"]
    finally:
        await client.aclose()
    assert Path(directory) == stack.layout.data / "redis"


# The two crash tests below mirror each other on purpose (one store each, the same `up`
# after a SIGKILL): what each store must keep differs (sessions in Redis's AOF, accounts
# in PostgreSQL), and so do the checks.


async def test_up_after_a_redis_crash_brings_it_back_with_the_sessions_and_restarts_nothing_else(
    stack: OwnStack,
) -> None:
    state = stack.state()
    port = state.redis_port
    assert port is not None
    redis_url = stack.env()["REDIS_URL"]
    before = _pids(stack)
    base = stack.base_url
    async with demo_users(3, stack.ca_cert, prefix="aof-user-") as users:
        await register(users, base)
        logins = await asyncio.gather(*(login(user, base, ROWS[4]) for user in users))
        assert [exchange.status for exchange in logins] == [200] * 3
        for user in users:
            assert await _status(user, f"{base}/api/me") == (200, None)

        _kill(stack.layout.redis(port).pid)
        await _poll(lambda: not port_is_open(port), "Redis's port closed")

        # While Redis is away: the designed 503, never a 502 from nginx.
        seen: list[tuple[int, str | None]] = []

        async def refused() -> bool:
            seen.append(await _status(users[0], f"{base}/api/me"))
            return seen[-1][0] != 200

        await _poll(refused, "a refusal from a replica")
        assert set(seen) <= {(200, None), (503, "dependency_unavailable")}
        # The auth service is another process: it too may accept in the moment before its
        # revocation feed reads the closed connection (invariant b), then refuses.
        answers: list[tuple[int, str | None]] = []

        async def auth_refused() -> bool:
            answers.append(await _status(users[1], f"{base}/auth/me"))
            return answers[-1][0] != 200

        await _poll(auth_refused, "a refusal from the auth service")
        assert answers[-1] == (503, "dependency_unavailable")

        output = await stack.up()

        assert f"starting Redis on its port {port} with its data" in output
        assert stack.state().redis_port == port
        assert stack.env()["REDIS_URL"] == redis_url
        assert _pids(stack) == before
        # Sessions created before the crash, from the AOF: the auth service and the
        # replicas answer 2xx at once, nobody logs in again.
        for user in users:
            assert await _status(user, f"{base}/auth/me") == (200, None)
            assert await _status(user, f"{base}/api/me") == (200, None)


async def test_up_after_a_postgresql_crash_brings_it_back_with_its_users_and_restarts_nothing_else(
    stack: OwnStack,
) -> None:
    state = stack.state()
    port = state.postgres_port
    assert port is not None
    database_url = stack.env()["DATABASE_URL"]
    before = _pids(stack)
    base = stack.base_url
    async with demo_users(1, stack.ca_cert, prefix="pg-user-") as (user,):
        await register([user], base)
        postgres = stack.layout.postgres(port)
        pid = postgres.pid
        _kill(pid)
        await _poll(lambda: not port_is_open(port), "PostgreSQL's port closed")
        assert pid is not None
        await _poll(lambda: not is_alive(pid), "PostgreSQL gone")

        output = await stack.up()

        assert f"starting PostgreSQL on its port {port} with its data" in output
        assert stack.env()["DATABASE_URL"] == database_url
        assert _pids(stack) == before
        # The account registered before the crash is still there.
        assert (await login(user, base, ROWS[4])).status == 200
        assert await _status(user, f"{base}/api/me") == (200, None)


async def test_up_restarts_a_dead_replica_and_a_dead_redis_and_leaves_the_live_ones(
    stack: OwnStack,
) -> None:
    await stack.cli("kill-replica", "r2")
    state = stack.state()
    assert state.redis_port is not None
    _kill(stack.layout.redis(state.redis_port).pid)
    before = _pids(stack)
    assert before["r2"] is None

    output = await stack.up()

    after = _pids(stack)
    assert after["r2"] is not None
    assert {name: pid for name, pid in after.items() if name != "r2"} == {
        name: pid for name, pid in before.items() if name != "r2"
    }
    assert "starting replicas r2 " in output
    assert "starting Redis on its port" in output
    assert "restarting" not in output


async def test_a_recorded_port_taken_by_another_program_stops_up_instead_of_moving_redis(
    stack: OwnStack,
) -> None:
    state = stack.state()
    port = state.redis_port
    assert port is not None
    before = _pids(stack)
    _kill(stack.layout.redis(port).pid)
    await _poll(lambda: not port_is_open(port), "Redis's port closed")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        code, output = await asyncio.to_thread(stack.run, "up")
        assert code == 1
        assert f"port {port} on 127.0.0.1, where the stack keeps it" in output
        assert "in use by another program" in output
        assert stack.state().redis_port == port
        assert _pids(stack) == before
    await stack.up()
    assert stack.state().redis_port == port


# -- what clients see, measured -------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_redis_outage_under_a_stream_of_gets_is_a_503_never_a_502_and_ends_with_a_2xx(
    how: str, stack: OwnStack, record_property: Callable[[str, object], None]
) -> None:
    before = _pids(stack)

    report = await probe_redis_outage(stack, how=how, users=4, hold=2.0, bring_back=stack.up)

    for key, value in report.figures().items():
        record_property(f"redis_{how}_{key}", value)
    during = [a for a in report.answers if report.down_at <= a.answered < report.back_at]
    assert [a for a in during if not a.ok and not a.refused] == []
    assert report.bad_gateway == 0
    assert report.other_failures == ()
    assert report.refused > 0
    assert report.seconds_to_first_ok is not None
    assert report.users_lost == ()
    assert _pids(stack) == before


# -- addresses ------------------------------------------------------------------------------


async def test_up_with_another_redis_url_restarts_every_service_that_holds_the_old_one(
    stack: OwnStack, redis_url: str
) -> None:
    # Last in the module: the stack stays on the other Redis.
    before = _pids(stack)
    other = redis_url.rsplit("/", 1)[0] + "/11"  # a database no other test uses

    output = await stack.up(REDIS_URL=other)

    after = _pids(stack)
    for name in (AUTH, "r1", "r2", "r3"):
        assert after[name] is not None
        assert after[name] != before[name], name
    assert after["nginx"] == before["nginx"]  # reloaded, not restarted
    assert "restarting the auth service: REDIS_URL" in output
    assert stack.state().redis == "external"
    assert stack.env()["REDIS_URL"] == other
    assert not stack.layout.redis().running
    for name, addresses in stack.state().addresses.items():
        assert addresses["REDIS_URL"] == other, name
    async with demo_users(1, stack.ca_cert, prefix="moved-user-") as (user,):
        await register([user], stack.base_url)
        assert (await login(user, stack.base_url, ROWS[4])).status == 200
        assert await _status(user, f"{stack.base_url}/api/me") == (200, None)
    # A later `up` without REDIS_URL keeps the stack where it is.
    assert "restarting" not in await stack.up()
    assert _pids(stack) == after
