"""The Argon2 work queue is bounded: a flood of registrations and logins gets 503
``server_busy`` with ``Retry-After`` past the bound, never a backlog, and cheap refusals
(a taken name, a weak password) cost no Argon2 at all.

Concurrency is counted, not timed: an instrumented Argon2 hasher records how many
jobs run at once, and a gate holds the admitted jobs while the rest are answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import argon2
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tessera_auth import app_state, passwords
from tessera_auth.passwords import PasswordHasher
from tessera_auth.settings import Argon2Parameters
from tessera_verify.errors import ServerBusy

from .conftest import AuthClientFactory

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"
LOCALHOST = (ipaddress.ip_network("127.0.0.1/32"),)
# Long enough for a held job to stay held if the bound leaked; never reached when it holds.
SAFETY_TIMEOUT = 60.0


class CountingArgon2:
    """Wraps argon2's hasher: counts calls and jobs running at once; ``gate`` holds them."""

    def __init__(self, inner: argon2.PasswordHasher) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.running = 0
        self.most_running = 0

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.gate.wait(SAFETY_TIMEOUT)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    def hash(self, password: str) -> str:
        self._enter()
        try:
            return self._inner.hash(password)
        finally:
            self._leave()

    def verify(self, password_hash: str, password: str) -> bool:
        self._enter()
        try:
            return self._inner.verify(password_hash, password)
        finally:
            self._leave()

    def check_needs_rehash(self, password_hash: str) -> bool:
        return self._inner.check_needs_rehash(password_hash)


def _instrument(client: Client) -> tuple[PasswordHasher, CountingArgon2]:
    hasher = client.app[app_state.ACCOUNTS].hasher
    counting = CountingArgon2(hasher._hasher)
    hasher._hasher = counting  # type: ignore[assignment]
    return hasher, counting


@pytest.fixture
def released() -> Iterator[list[CountingArgon2]]:
    """Opens every gate at the end, so a failed test never leaves threads held."""
    gates: list[CountingArgon2] = []
    yield gates
    for counting in gates:
        counting.gate.set()


async def _register(client: Client, username: str, password: str = PASSWORD) -> ClientResponse:
    return await client.post("/auth/register", json={"username": username, "password": password})


async def _busy(response: ClientResponse) -> None:
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "1"
    body = await response.json()
    assert body["error"] == "server_busy"


# --- cheap refusals first ---------------------------------------------------------------


async def test_a_taken_username_is_409_without_any_argon2_work(auth_client: Client) -> None:
    assert (await _register(auth_client, "alice")).status == 201
    _, counting = _instrument(auth_client)
    for again in ("alice", "ALICE", "ａｌｉｃｅ"):
        response = await _register(auth_client, again, "another long passphrase")
        assert response.status == 409
        assert (await response.json())["error"] == "username_taken"
    assert counting.calls == 0


async def test_a_weak_password_is_400_without_any_argon2_work(auth_client: Client) -> None:
    _, counting = _instrument(auth_client)
    response = await _register(auth_client, "alice", "password")
    assert response.status == 400
    assert counting.calls == 0


# --- the bound under a flood ------------------------------------------------------------


def _flood(users: list[str], newcomers: int) -> list[tuple[str, dict[str, str], str]]:
    """Registrations, right and wrong password checks and unknown users, each from its own
    address."""
    check = "/auth/password-check"
    requests: list[tuple[str, dict[str, str]]] = []
    for name in users:
        requests.append((check, {"username": name, "password": PASSWORD}))
    for name in users[: len(users) // 2]:
        requests.append((check, {"username": name, "password": "not the password"}))
    for _ in range(newcomers):
        requests.append(("/auth/register", {"username": f"new-{uuid.uuid4().hex[:8]}"}))
    requests.append((check, {"username": "nobody-at-all", "password": PASSWORD}))
    flood = []
    for n, (path, body) in enumerate(requests):
        body.setdefault("password", PASSWORD)
        flood.append((path, body, f"10.1.{n // 250}.{n % 250 + 1}"))
    return flood


async def _send(client: Client, path: str, body: dict[str, str], ip: str) -> ClientResponse:
    response = await client.post(path, json=body, headers={"X-Forwarded-For": ip})
    await response.read()
    return response


async def test_past_the_bound_requests_get_503_and_the_admitted_ones_finish(
    make_auth_client: AuthClientFactory, released: list[CountingArgon2]
) -> None:
    bound = 3
    client = await make_auth_client(argon2_max_pending=bound, trusted_proxies=LOCALHOST)
    users = [f"user-{n}" for n in range(12)]
    for name in users:
        assert (await _register(client, name)).status == 201
    hasher, counting = _instrument(client)
    released.append(counting)
    counting.gate.clear()  # every admitted job is held until the rest have been answered

    flood = _flood(users, newcomers=20)
    tasks = [asyncio.create_task(_send(client, *request)) for request in flood]
    turned_away = len(tasks) - bound
    done: set[asyncio.Task[ClientResponse]] = set()
    pending: set[asyncio.Task[ClientResponse]] = set(tasks)
    while len(done) < turned_away:
        finished, pending = await asyncio.wait(
            pending, timeout=SAFETY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        assert finished, f"only {len(done)} of {turned_away} answered: a job leaked past the bound"
        done |= finished
    assert len(done) == turned_away
    assert hasher.pending == bound  # queued or running: exactly the bound, no backlog
    for task in done:
        await _busy(task.result())

    counting.gate.set()
    admitted = await asyncio.gather(*pending)
    assert len(admitted) == bound
    assert all(response.status in (200, 201, 401) for response in admitted)
    assert counting.most_running <= bound
    assert hasher.pending == 0


async def test_a_flood_never_runs_more_jobs_than_the_bound_and_nothing_else_fails(
    make_auth_client: AuthClientFactory,
) -> None:
    """Real Argon2, no gate: whatever interleaving happens, only 2xx, 401 and 503 busy."""
    bound = 2
    client = await make_auth_client(
        argon2_max_pending=bound,
        trusted_proxies=LOCALHOST,
        argon2=Argon2Parameters(memory_kib=8 * 1024, time_cost=2, parallelism=1),
    )
    users = [f"user-{n}" for n in range(20)]
    for name in users:
        assert (await _register(client, name)).status == 201
    hasher, counting = _instrument(client)

    flood = _flood(users, newcomers=20)
    responses = await asyncio.gather(*(_send(client, *request) for request in flood))
    statuses = [response.status for response in responses]
    assert set(statuses) <= {200, 201, 401, 503}, statuses
    for response in responses:
        if response.status == 503:
            await _busy(response)
    assert counting.most_running <= bound
    assert counting.calls <= len(flood)  # one Argon2 job per request at most (ASCII input)
    assert hasher.pending == 0


async def test_the_default_bound_is_twice_the_cpus_plus_two() -> None:
    from tessera_auth.passwords import cpu_count

    hasher = PasswordHasher(Argon2Parameters(memory_kib=1024, time_cost=1))
    try:
        assert hasher.max_pending == 2 * cpu_count() + 2
    finally:
        hasher.close()


# --- ranked admission: an address that keeps failing cannot keep a clean one out -----------


class OrderedGate:
    """Stands in for argon2's hasher: records the order jobs start in, holds them at ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started: list[str] = []

    def verify(self, password_hash: str, password: str) -> bool:
        self.started.append(password)
        self.gate.wait(SAFETY_TIMEOUT)
        return False

    def check_needs_rehash(self, password_hash: str) -> bool:
        return False


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PasswordHasher, OrderedGate]]:
    """A hasher with one Argon2 thread and room for three jobs, its work held at a gate."""
    monkeypatch.setattr(passwords, "cpu_count", lambda: 1)
    hasher = PasswordHasher(Argon2Parameters(memory_kib=1024, time_cost=1), max_pending=3)
    ordered = OrderedGate()
    hasher._hasher = ordered  # type: ignore[assignment]
    yield hasher, ordered
    ordered.gate.set()
    hasher.close()


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail("the hasher never got there")


async def test_a_clean_address_takes_the_place_of_one_that_keeps_failing(
    one_thread: tuple[PasswordHasher, OrderedGate],
) -> None:
    hasher, ordered = one_thread

    def job(name: str, rank: int) -> asyncio.Task[bool]:
        return asyncio.create_task(hasher.verify("hash", name, rank=rank))

    running = job("spray-1", 9)
    await _until(lambda: ordered.started == ["spray-1"])
    waiting = [job("spray-2", 9), job("spray-3", 9)]
    await _until(lambda: hasher.pending == 3)  # full: one running, two waiting

    user = job("user", 0)
    await _until(lambda: waiting[1].done())
    with pytest.raises(ServerBusy):
        waiting[1].result()  # the latest of the worst ranked gave up its place
    with pytest.raises(ServerBusy):
        await hasher.verify("hash", "spray-4", rank=9)  # nobody ranks worse: refused
    second = job("user-2", 0)
    await _until(lambda: waiting[0].done())
    with pytest.raises(ServerBusy):
        waiting[0].result()  # the last of the flood made way too
    with pytest.raises(ServerBusy):
        await hasher.verify("hash", "user-3", rank=0)  # equal ranks: first come, first served

    ordered.gate.set()
    assert await asyncio.gather(running, user, second) == [False, False, False]
    assert ordered.started == ["spray-1", "user", "user-2"]  # the flood never went first
    assert hasher.pending == 0


async def test_a_request_that_gives_up_while_waiting_frees_its_place(
    one_thread: tuple[PasswordHasher, OrderedGate],
) -> None:
    hasher, ordered = one_thread
    running = asyncio.create_task(hasher.verify("hash", "first", rank=0))
    await _until(lambda: ordered.started == ["first"])
    gone = [asyncio.create_task(hasher.verify("hash", f"gone-{n}", rank=0)) for n in range(2)]
    await _until(lambda: hasher.pending == 3)
    for task in gone:
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    assert hasher.pending == 1
    later = asyncio.create_task(hasher.verify("hash", "later", rank=5))
    clean = asyncio.create_task(hasher.verify("hash", "clean", rank=0))
    await _until(lambda: hasher.pending == 3)
    ordered.gate.set()
    assert await asyncio.gather(running, later, clean) == [False, False, False]
    # The cancelled ones never ran; the clean address, though it came last, went first.
    assert ordered.started == ["first", "clean", "later"]
    assert hasher.pending == 0
