"""One conformance suite for every SessionStore, and the SessionManager's policy on top.

The Redis store runs against one server, a Sentinel group and a Cluster, each
opened by the factory every service uses (:func:`instrumented_redis`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tessera_verify import redis_layout
from tessera_verify.clock import ManualClock
from tessera_verify.dependency_metrics import instrumented_redis
from tessera_verify.session_store import (
    MemorySessionStore,
    RedisSessionStore,
    SessionRecord,
    SessionStore,
    StoredSession,
)
from tessera_verify.sessions import SessionManager, SessionPolicy


@pytest.fixture(params=["redis", "sentinel", "cluster", "memory"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The Redis URL of the store under test (None: the in-memory store)."""
    if request.param == "memory":
        return None
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return str(request.getfixturevalue(f"redis_{request.param}_group").url)


@pytest.fixture
async def store(store_url: str | None, clock: ManualClock) -> AsyncIterator[SessionStore]:
    if store_url is None:
        yield MemorySessionStore(clock)
        return
    client = instrumented_redis(store_url, timeout=5.0, latency=None)
    await client.flushdb()  # on a cluster: every primary
    try:
        yield RedisSessionStore(client, clock)
    finally:
        await client.aclose()


def _record(clock: ManualClock, user_id: str = "u1", lifetime: float = 3600) -> SessionRecord:
    now = clock.now()
    return SessionRecord(
        user_id=user_id,
        username="alice",
        public_id=secrets.token_urlsafe(8),
        created_at=now,
        last_seen_at=now,
        expires_at=now + lifetime,
        ip="127.0.0.1",
        user_agent="pytest",
    )


async def _loaded(store: SessionStore, key: str) -> StoredSession:
    stored = await store.load(key)
    assert stored is not None, key
    return stored


def _manager(store: SessionStore, clock: ManualClock, **policy: float) -> SessionManager:
    return SessionManager(
        store,
        hash_key=b"k" * 32,
        policy=SessionPolicy(**{"idle_timeout": 600, "absolute_timeout": 3600, **policy}),
        clock=clock,
    )


# --- the store contract --------------------------------------------------------------


async def test_saved_record_loads_back_equal_with_its_time_of_death(
    store: SessionStore, clock: ManualClock
) -> None:
    record = _record(clock)
    await store.save("key-1", record, clock.now() + 60)
    assert await store.load("key-1") == StoredSession(record, clock.now() + 60)


async def test_unknown_key_loads_none(store: SessionStore) -> None:
    assert await store.load("nope") is None


async def test_save_replaces_existing_record(store: SessionStore, clock: ManualClock) -> None:
    await store.save("key-1", _record(clock), clock.now() + 60)
    newer = _record(clock)
    await store.save("key-1", newer, clock.now() + 60)
    assert (await _loaded(store, "key-1")).record == newer


async def test_touch_moves_the_time_of_death_and_leaves_the_record(
    store: SessionStore, clock: ManualClock
) -> None:
    record = _record(clock)
    await store.save("key-1", record, clock.now() + 60)
    assert await store.touch("key-1", clock.now() + 90) is True
    assert await store.load("key-1") == StoredSession(record, clock.now() + 90)


async def test_touch_never_brings_a_deleted_record_back(
    store: SessionStore, clock: ManualClock
) -> None:
    record = _record(clock)
    await store.save("key-1", record, clock.now() + 60)
    assert (await _loaded(store, "key-1")).record == record  # a verifier read it ...
    await store.delete("key-1")  # ... then it was revoked ...
    assert await store.touch("key-1", clock.now() + 60) is False  # ... and its touch is refused
    assert await store.load("key-1") is None


async def test_delete_removes_record_and_reports_it(
    store: SessionStore, clock: ManualClock
) -> None:
    await store.save("key-1", _record(clock), clock.now() + 60)
    assert await store.delete("key-1") is True
    assert await store.load("key-1") is None
    assert await store.delete("key-1") is False


async def test_list_for_user_returns_only_that_users_sessions(
    store: SessionStore, clock: ManualClock
) -> None:
    a1, a2, b1 = _record(clock, "a"), _record(clock, "a"), _record(clock, "b")
    dies_at = clock.now() + 60
    await store.save("a1", a1, dies_at)
    await store.save("a2", a2, dies_at)
    await store.save("b1", b1, dies_at)
    assert sorted(await store.list_for_user("a"), key=lambda kv: kv[0]) == [
        ("a1", StoredSession(a1, dies_at)),
        ("a2", StoredSession(a2, dies_at)),
    ]
    await store.delete("a1")
    assert await store.list_for_user("a") == [("a2", StoredSession(a2, dies_at))]
    assert await store.list_for_user("nobody") == []


async def test_ping_succeeds_on_a_live_store(store: SessionStore) -> None:
    await store.ping()


async def test_redis_store_record_carries_a_ttl(redis: Redis, clock: ManualClock) -> None:
    store = RedisSessionStore(redis, clock)
    await store.save("key-1", _record(clock), time.time() + 42)
    ttl_ms = await redis.pttl(redis_layout.session("key-1"))
    # The time of death is written in whole milliseconds, rounded up: one more at most.
    assert 0 < ttl_ms <= 42_001
    assert 0 < await redis.ttl(redis_layout.user_sessions("u1")) <= 3600


async def test_memory_store_forgets_after_ttl(clock: ManualClock) -> None:
    store = MemorySessionStore(clock)
    await store.save("key-1", _record(clock), clock.now() + 30)
    clock.advance(29)
    assert await store.load("key-1") is not None
    clock.advance(2)
    assert await store.load("key-1") is None
    assert len(store) == 0


async def test_memory_store_never_holds_more_than_max_entries(clock: ManualClock) -> None:
    store = MemorySessionStore(clock, max_entries=3)
    for n in range(5):
        await store.save(f"key-{n}", _record(clock, user_id=f"u{n}"), clock.now() + 600)
    assert len(store) == 3
    assert [await store.load(f"key-{n}") is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert await store.list_for_user("u0") == []


async def test_memory_store_evicts_expired_entries_before_live_ones(clock: ManualClock) -> None:
    store = MemorySessionStore(clock, max_entries=3)
    await store.save("live-old", _record(clock), clock.now() + 1000)
    await store.save("short", _record(clock), clock.now() + 10)
    await store.save("live", _record(clock), clock.now() + 1000)
    clock.advance(20)
    await store.save("new", _record(clock), clock.now() + 1000)
    assert len(store) == 3
    for key in ("live-old", "live", "new"):
        assert await store.load(key) is not None, key


async def test_memory_store_evicts_the_least_recently_written_live_entry(
    clock: ManualClock,
) -> None:
    store = MemorySessionStore(clock, max_entries=2)
    await store.save("a", _record(clock), clock.now() + 600)
    await store.save("b", _record(clock), clock.now() + 600)
    assert await store.touch("a", clock.now() + 600)
    await store.save("c", _record(clock), clock.now() + 600)
    assert await store.load("b") is None
    assert await store.load("a") is not None and await store.load("c") is not None


async def test_memory_store_sweeps_expired_entries_nobody_asks_for(clock: ManualClock) -> None:
    store = MemorySessionStore(clock)
    for n in range(200):
        await store.save(f"key-{n}", _record(clock, user_id=f"u{n}"), clock.now() + 10)
    clock.advance(11)
    await store.save("fresh", _record(clock, user_id="fresh"), clock.now() + 10)
    assert len(store) == 1
    assert store.users_indexed() == 1


async def test_memory_store_sweeps_records_refreshed_many_times_only_once(
    clock: ManualClock,
) -> None:
    store = MemorySessionStore(clock)
    await store.save("key", _record(clock), clock.now() + 10)
    for _ in range(1000):
        clock.advance(5)
        assert await store.touch("key", clock.now() + 10)
    assert store.pending_expiries() <= 64
    clock.advance(11)
    await store.save("other", _record(clock, user_id="u2"), clock.now() + 10)
    assert len(store) == 1


# --- the manager's policy, on every store ---------------------------------------------


async def test_session_id_has_256_bits_and_store_sees_only_its_keyed_hash(
    store: SessionStore, clock: ManualClock
) -> None:
    manager = _manager(store, clock)
    session_id, session = await manager.create(
        user_id="u1", username="alice", ip="127.0.0.1", user_agent="pytest"
    )
    assert len(session_id) == 43  # 32 random bytes, base64url without padding
    assert session.storage_key != session_id
    assert session_id not in session.storage_key
    assert await store.load(session_id) is None
    assert (await _loaded(store, session.storage_key)).record == session.record


async def test_two_sessions_never_share_an_id(store: SessionStore, clock: ManualClock) -> None:
    manager = _manager(store, clock)
    ids = {
        (await manager.create(user_id="u1", username="a", ip="", user_agent=""))[0]
        for _ in range(50)
    }
    assert len(ids) == 50


async def test_session_expires_after_idle_timeout(store: SessionStore, clock: ManualClock) -> None:
    manager = _manager(store, clock, idle_timeout=600, touch_interval=60)
    session_id, _ = await manager.create(user_id="u1", username="a", ip="", user_agent="")
    clock.advance(599)
    assert await manager.load(session_id) is not None  # activity resets the idle timer
    clock.advance(599)
    assert await manager.load(session_id) is not None
    clock.advance(601)
    assert await manager.load(session_id) is None
    assert await manager.list_for_user("u1") == []


async def test_session_expires_at_absolute_timeout_despite_activity(
    store: SessionStore, clock: ManualClock
) -> None:
    manager = _manager(store, clock, idle_timeout=600, absolute_timeout=1800, touch_interval=60)
    session_id, _ = await manager.create(user_id="u1", username="a", ip="", user_agent="")
    for _ in range(5):
        clock.advance(300)
        assert await manager.load(session_id) is not None
    clock.advance(300)  # 1800 s after creation
    assert await manager.load(session_id) is None


async def test_idle_refresh_writes_at_most_once_per_touch_interval(
    store: SessionStore, clock: ManualClock
) -> None:
    manager = _manager(store, clock, idle_timeout=600, touch_interval=60)
    session_id, session = await manager.create(user_id="u1", username="a", ip="", user_agent="")
    created = session.record.last_seen_at
    for _ in range(10):
        clock.advance(5)
        await manager.load(session_id)
    assert (await _loaded(store, session.storage_key)).dies_at == created + 600  # no write
    clock.advance(15)  # 65 s after the last write
    await manager.load(session_id)
    assert (await _loaded(store, session.storage_key)).dies_at == clock.now() + 600
    listed = await manager.list_for_user("u1")
    assert [s.record.last_seen_at for s in listed] == [clock.now()]


async def test_destroy_deletes_server_side(store: SessionStore, clock: ManualClock) -> None:
    manager = _manager(store, clock)
    session_id, session = await manager.create(user_id="u1", username="a", ip="", user_agent="")
    assert await manager.destroy(session_id) is True
    assert await manager.load(session_id) is None
    assert await store.load(session.storage_key) is None


async def test_per_user_index_lists_and_destroys_all(
    store: SessionStore, clock: ManualClock
) -> None:
    manager = _manager(store, clock)
    ids = [
        (await manager.create(user_id="u1", username="a", ip="", user_agent=""))[0]
        for _ in range(3)
    ]
    other, _ = await manager.create(user_id="u2", username="b", ip="", user_agent="")
    assert len(await manager.list_for_user("u1")) == 3
    assert await manager.destroy_all_for_user("u1") == 3
    for session_id in ids:
        assert await manager.load(session_id) is None
    assert await manager.load(other) is not None


@pytest.mark.parametrize("cookie", ["", "short", "x" * 43 + "!", "../../etc", "a" * 500])
async def test_malformed_session_ids_are_rejected_without_lookup(
    store: SessionStore, clock: ManualClock, cookie: str
) -> None:
    assert await _manager(store, clock).load(cookie) is None
