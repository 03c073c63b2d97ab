"""Signing-key rotation: publish -> activate -> inactive -> retire, never breaking a live token.

Real PostgreSQL and Redis; time moves by the shared ManualClock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tessera_auth import app_state
from tessera_auth.__main__ import main
from tessera_auth.key_schedule import KeyState
from tessera_auth.keyring import KeyChange, KeyRing, KeyRotationUnsupported
from tessera_auth.settings import ConfigError, Settings, load_settings
from tessera_verify import integration
from tessera_verify.access_tokens import AccessTokenVerifier
from tessera_verify.clock import ManualClock
from tessera_verify.errors import InvalidTokenError
from tessera_verify.principal import AuthMethod
from tessera_verify.verification_keys import JWKSCache

from .conftest import AuthClientFactory, ResourceFactory, register_and_login

Client = TestClient[Any, Any]
LEAD = 60  # Settings.key_publish_lead_time's default
HS256_SECRET = b"tessera-test-shared-secret-0123456789abcdef"


def _ring(client: Client) -> KeyRing:
    app: web.Application = client.app
    return app[app_state.KEYRING]


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _jwks_kids(client: Client) -> set[str]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status == 200
    return {key["kid"] for key in json.loads(await response.read())["keys"]}


async def _states(ring: KeyRing, clock: ManualClock) -> dict[str, KeyState]:
    return {key.kid: key.state for key in await ring.status(now=clock.now())}


async def _token(client: Client, login: dict[str, Any]) -> str:
    response = await client.post(
        "/auth/login",
        json={
            "username": login["user"]["username"],
            "password": login["password"],
            "credential": "token",
        },
    )
    assert response.status == 200, await response.text()
    return str((await response.json())["access_token"])


def _jwt_replica(make_replica: ResourceFactory, replica_id: str) -> Awaitable[Client]:
    """A resource replica verifying JWTs against the auth server's JWKS."""
    return make_replica(replica_id, auth_methods=(AuthMethod.JWT,))


# --- the life cycle ----------------------------------------------------------


async def test_a_rotated_key_is_published_before_it_signs(auth: Client, clock: ManualClock) -> None:
    ring = _ring(auth)
    first = ring.active.kid
    login = await register_and_login(auth, credential="token")

    rotation = await ring.rotate(now=clock.now())

    assert rotation.kid != first
    assert await _states(ring, clock) == {first: KeyState.ACTIVE, rotation.kid: KeyState.PUBLISHED}
    assert await _jwks_kids(auth) == {first, rotation.kid}
    assert _kid(await _token(auth, login)) == first


async def test_a_published_key_signs_only_after_the_lead_time(
    auth: Client, clock: ManualClock
) -> None:
    ring = _ring(auth)
    first = ring.active.kid
    login = await register_and_login(auth, credential="token")
    new = (await ring.rotate(now=clock.now())).kid

    clock.advance(LEAD - 1)
    assert await ring.run_schedule(now=clock.now()) == []
    assert _kid(await _token(auth, login)) == first

    clock.advance(1)
    changes = await ring.run_schedule(now=clock.now())

    assert {(c.kid, c.state) for c in changes} == {
        (first, KeyState.INACTIVE),
        (new, KeyState.ACTIVE),
    }
    assert _kid(await _token(auth, login)) == new
    assert await _jwks_kids(auth) == {first, new}  # the old key still verifies
    keys = {key.kid: key for key in await ring.status(now=clock.now())}
    assert keys[first].deactivated_at is not None
    assert keys[first].deactivated_at == keys[new].activated_at


async def test_old_token_verifies_until_it_expires_and_its_key_retires_after(
    auth: Client,
    make_replica: ResourceFactory,
    settings: Settings,
    clock: ManualClock,
) -> None:
    ring = _ring(auth)
    replica = await _jwt_replica(make_replica, "r1")
    login = await register_and_login(auth, credential="token")
    old_token = login["access_token"]
    old = _kid(old_token)
    issued_at = clock.now()
    assert (await replica.get("/api/me", headers=_bearer(old_token))).status == 200

    new = (await ring.rotate(now=clock.now())).kid
    clock.advance(LEAD)
    await ring.run_schedule(now=clock.now())
    deactivated_at = clock.now()
    assert ring.active.kid == new

    # Until its own expiry the old token is good everywhere: on the auth service and replicas.
    clock.set(issued_at + settings.access_token_ttl - 1)
    await ring.run_schedule(now=clock.now())
    assert (await auth.get("/auth/me", headers=_bearer(old_token))).status == 200
    assert (await replica.get("/api/me", headers=_bearer(old_token))).status == 200
    new_token = await _token(auth, login)
    assert _kid(new_token) == new
    assert (await replica.get("/api/me", headers=_bearer(new_token))).status == 200

    # Its key stays published until every token it can have signed has expired...
    retire_at = deactivated_at + ring.policy.retire_after
    assert ring.policy.retire_after >= settings.access_token_ttl + settings.key_reload_interval
    clock.set(retire_at - 1)
    assert await ring.run_schedule(now=clock.now()) == []
    assert (await _states(ring, clock))[old] is KeyState.INACTIVE
    assert old in await _jwks_kids(auth)

    # ...and then leaves the JWKS.
    clock.set(retire_at)
    changes = await ring.run_schedule(now=clock.now())
    assert [(c.kid, c.state) for c in changes] == [(old, KeyState.RETIRED)]
    assert await _jwks_kids(auth) == {new}
    assert (await replica.get("/api/me", headers=_bearer(old_token))).status == 401


async def test_the_schedule_publishes_a_successor_when_the_active_key_is_due(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(key_rotation_interval=3600)
    ring = _ring(client)
    first = ring.active.kid

    clock.advance(3599)
    assert await ring.run_schedule(now=clock.now()) == []
    clock.advance(1)
    [published] = await ring.run_schedule(now=clock.now())
    assert published.state is KeyState.PUBLISHED
    assert await ring.run_schedule(now=clock.now()) == []  # one successor, not one per step

    clock.advance(LEAD)
    await ring.run_schedule(now=clock.now())
    assert ring.active.kid == published.kid
    assert (await _states(ring, clock))[first] is KeyState.INACTIVE

    clock.advance(3599)  # the interval counts from the new key's activation
    changes = await ring.run_schedule(now=clock.now())
    assert [(c.kid, c.state) for c in changes] == [(first, KeyState.RETIRED)]
    clock.advance(1)
    [successor] = await ring.run_schedule(now=clock.now())
    assert successor.state is KeyState.PUBLISHED


async def test_interval_zero_turns_automatic_rotation_off_but_manual_rotation_still_activates(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(key_rotation_interval=0)
    ring = _ring(client)
    first = ring.active.kid

    clock.advance(400 * 24 * 3600)
    assert await ring.run_schedule(now=clock.now()) == []
    assert await _states(ring, clock) == {first: KeyState.ACTIVE}

    new = (await ring.rotate(now=clock.now())).kid
    clock.advance(LEAD)
    await ring.run_schedule(now=clock.now())
    assert ring.active.kid == new


async def test_two_replicas_rotating_at_once_publish_one_key(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    a, b = await make_auth_client(), await make_auth_client()
    rotations = await asyncio.gather(
        _ring(a).rotate(now=clock.now()), _ring(b).rotate(now=clock.now())
    )
    assert rotations[0].kid == rotations[1].kid
    assert sorted(len(r.changes) for r in rotations) == [0, 1]
    states = await _states(_ring(a), clock)
    assert sorted(states.values()) == sorted([KeyState.ACTIVE, KeyState.PUBLISHED])


async def test_two_replicas_running_a_due_schedule_at_once_make_one_key(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    rings = [_ring(await make_auth_client(key_rotation_interval=3600)) for _ in range(3)]
    clock.advance(3600)
    results = await asyncio.gather(*(ring.run_schedule(now=clock.now()) for ring in rings))
    assert sorted(len(changes) for changes in results) == [0, 0, 1]
    assert list((await _states(rings[0], clock)).values()).count(KeyState.PUBLISHED) == 1

    clock.advance(LEAD)
    results = await asyncio.gather(*(ring.run_schedule(now=clock.now()) for ring in rings))
    assert sorted(len(changes) for changes in results) == [0, 0, 2]  # one activation
    assert len({ring.active.kid for ring in rings}) == 1


async def test_another_replica_signs_with_the_new_key_once_it_reloads(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    a, b = await make_auth_client(), await make_auth_client()
    login = await register_and_login(a, credential="token")
    first = _ring(b).active.kid

    new = (await _ring(a).rotate(now=clock.now())).kid
    assert new not in await _jwks_kids(b)  # not until b reloads
    await _ring(b).reload()
    assert new in await _jwks_kids(b)
    assert _kid(await _token(b, login)) == first  # published, not signing

    clock.advance(LEAD)
    await _ring(a).run_schedule(now=clock.now())
    assert _kid(await _token(a, login)) == new
    stale_token = await _token(b, login)  # b has not reloaded yet: still the old key...
    assert _kid(stale_token) == first
    assert (await a.get("/auth/me", headers=_bearer(stale_token))).status == 200  # ...still valid

    await _ring(b).reload()
    assert _kid(await _token(b, login)) == new


async def test_activate_now_signs_with_the_new_key_at_once(
    auth: Client, clock: ManualClock
) -> None:
    ring = _ring(auth)
    first = ring.active.kid
    pending = (await ring.rotate(now=clock.now())).kid

    rotation = await ring.rotate(now=clock.now(), activate_now=True)

    assert rotation.kid == pending  # the key already waiting is the one activated
    assert ring.active.kid == pending
    assert await _states(ring, clock) == {first: KeyState.INACTIVE, pending: KeyState.ACTIVE}
    assert await _jwks_kids(auth) == {first, pending}


async def test_only_activate_now_can_outrun_a_verifier_that_just_fetched_the_jwks(
    auth: Client, make_replica: ResourceFactory, clock: ManualClock
) -> None:
    ring = _ring(auth)
    replica = await _jwt_replica(make_replica, "r1")
    login = await register_and_login(auth, credential="token")
    assert (await replica.get("/api/me", headers=_bearer(login["access_token"]))).status == 200

    # Scheduled: the key signs a lead time after it was published; the replica refetches.
    await ring.rotate(now=clock.now())
    clock.advance(LEAD)
    await ring.run_schedule(now=clock.now())
    scheduled = await _token(auth, login)
    assert (await replica.get("/api/me", headers=_bearer(scheduled))).status == 200

    # Emergency: signing at once, right after the replica fetched the JWKS, is refused
    # until the replica may refetch (min_refetch_interval, 5 s): what the CLI warns about.
    await ring.rotate(now=clock.now(), activate_now=True)
    emergency = await _token(auth, login)
    assert (await replica.get("/api/me", headers=_bearer(emergency))).status == 401
    clock.advance(5)
    assert (await replica.get("/api/me", headers=_bearer(emergency))).status == 200
    assert (await replica.get("/api/me", headers=_bearer(scheduled))).status == 200


async def test_retire_expired_retires_only_keys_whose_tokens_have_expired(
    auth: Client, clock: ManualClock
) -> None:
    ring = _ring(auth)
    first = ring.active.kid
    second = (await ring.rotate(now=clock.now(), activate_now=True)).kid
    clock.advance(100)
    third = (await ring.rotate(now=clock.now(), activate_now=True)).kid

    clock.advance(ring.policy.retire_after - 100)
    assert [(c.kid, c.state) for c in await ring.retire_expired(now=clock.now())] == [
        (first, KeyState.RETIRED)
    ]
    assert await _states(ring, clock) == {
        first: KeyState.RETIRED,
        second: KeyState.INACTIVE,
        third: KeyState.ACTIVE,
    }
    assert await _jwks_kids(auth) == {second, third}
    assert await ring.retire_expired(now=clock.now()) == []


async def test_hs256_mode_refuses_rotation(
    make_auth_client: AuthClientFactory, clock: ManualClock
) -> None:
    client = await make_auth_client(jwt_algorithm="HS256", hs256_secret=HS256_SECRET)
    ring = _ring(client)
    with pytest.raises(KeyRotationUnsupported, match="HS256 shared-secret mode"):
        await ring.rotate(now=clock.now())
    with pytest.raises(KeyRotationUnsupported):
        await ring.retire_expired(now=clock.now())
    clock.advance(400 * 24 * 3600)
    assert await ring.run_schedule(now=clock.now()) == []
    assert await _jwks_kids(client) == set()


async def test_the_background_loop_runs_the_schedule_on_the_injected_clock(
    make_auth_client: AuthClientFactory, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop's cadence is real time (short here); its decisions follow the clock.
    client = await make_auth_client(key_reload_interval=0.02)
    ring = _ring(client)
    changed = asyncio.Event()
    run_schedule = ring.run_schedule

    async def observed(*, now: float) -> list[KeyChange]:
        changes = await run_schedule(now=now)
        if changes:
            changed.set()
        return changes

    monkeypatch.setattr(ring, "run_schedule", observed)
    new = (await ring.rotate(now=clock.now())).kid
    clock.advance(LEAD)

    await asyncio.wait_for(changed.wait(), timeout=10)
    assert ring.active.kid == new


# --- settings ---------------------------------------------------------------


def _environ(**extra: str) -> dict[str, str]:
    return {
        "TESSERA_ENV": "development",
        "DATABASE_URL": "postgresql://localhost/tessera",
        "REDIS_URL": "redis://localhost:6379/0",
        **extra,
    }


def test_key_rotation_settings_have_safe_defaults() -> None:
    settings = load_settings(_environ())
    assert settings.key_rotation_interval == 30 * 24 * 3600
    assert settings.key_publish_lead_time == 60
    assert settings.key_reload_interval == 30.0
    off = load_settings(_environ(TESSERA_KEY_ROTATION_INTERVAL="0"))
    assert off.key_rotation_interval == 0


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"TESSERA_KEY_PUBLISH_LEAD_TIME": "30"}, "TESSERA_KEY_PUBLISH_LEAD_TIME must be at least"),
        (
            {"TESSERA_KEY_RELOAD_INTERVAL": "120", "TESSERA_KEY_PUBLISH_LEAD_TIME": "100"},
            "TESSERA_KEY_PUBLISH_LEAD_TIME must be at least",
        ),
        ({"TESSERA_KEY_RELOAD_INTERVAL": "0"}, "TESSERA_KEY_RELOAD_INTERVAL must be positive"),
        ({"TESSERA_KEY_ROTATION_INTERVAL": "-1"}, "TESSERA_KEY_ROTATION_INTERVAL must be 0"),
        ({"TESSERA_KEY_ROTATION_INTERVAL": "10"}, "TESSERA_KEY_ROTATION_INTERVAL must be 0"),
        ({"TESSERA_KEY_ROTATION_INTERVAL": "monthly"}, "is not an integer"),
    ],
)
def test_key_rotation_settings_are_validated(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_environ(**environ))
    assert any(problem in line for line in raised.value.problems), raised.value.problems


# --- the admin command --------------------------------------------------------


@dataclass
class Cli:
    """``python -m tessera_auth`` run in-process (on its own thread: it calls asyncio.run)."""

    capsys: pytest.CaptureFixture[str]

    async def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            await asyncio.to_thread(main, list(args))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *args: str) -> Any:
        code, out, err = await self.run(*args)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings
) -> Cli:
    environ = {
        "TESSERA_ENV": "development",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "TESSERA_KEY_ENCRYPTION_KEY": settings.key_encryption_key.decode(),
        "TESSERA_LOG_LEVEL": "WARNING",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return Cli(capsys)


async def test_keys_commands_show_rotate_and_retire(cli: Cli, settings: Settings) -> None:
    status = await cli.json("keys", "status", "--json")
    [first] = status["keys"]
    assert first["state"] == "active" and first["alg"] == "ES256"
    assert status["publish_lead_time"] == 60
    assert first["next_change"] == "publish successor"

    rotated = await cli.json("keys", "rotate")
    assert rotated["state"] == "published"
    assert rotated["next_change"] == "activate"
    assert rotated["changes"] == [{"kid": rotated["kid"], "state": "published"}]
    again = await cli.json("keys", "rotate")  # the waiting key is reused
    assert again["kid"] == rotated["kid"] and again["changes"] == []

    code, out, err = await cli.run("keys", "rotate", "--activate-now")
    assert code == 0
    assert "WARNING" in err and "may reject new tokens" in err
    assert json.loads(out)["state"] == "active"

    code, out, _ = await cli.run("keys", "status")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["kid", "alg", "state"]
    assert {row.split()[0]: row.split()[2] for row in rows} == {
        first["kid"]: "inactive",
        rotated["kid"]: "active",
    }

    assert await cli.json("keys", "retire-expired") == {"retired": []}
    # Pretend the old key stopped signing long ago: its tokens have all expired.
    connection = await asyncpg.connect(settings.database_url)
    try:
        await connection.execute(
            "UPDATE signing_keys SET deactivated_at = now() - interval '1 day' WHERE kid = $1",
            first["kid"],
        )
    finally:
        await connection.close()
    assert await cli.json("keys", "retire-expired") == {"retired": [first["kid"]]}
    states = {k["kid"]: k["state"] for k in (await cli.json("keys", "status", "--json"))["keys"]}
    assert states == {first["kid"]: "retired", rotated["kid"]: "active"}


async def test_keys_rotate_refuses_in_hs256_mode(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_JWT_ALG", "HS256")
    monkeypatch.setenv("TESSERA_JWT_HS256_SECRET", HS256_SECRET.decode())
    for command in (["keys", "rotate"], ["keys", "retire-expired"]):
        code, _, err = await cli.run(*command)
        assert code == 1
        assert "not available in the HS256 shared-secret mode" in err
    code, _, err = await cli.run("keys", "status")
    assert code == 0
    assert "no key rotation" in err


# --- rotation under load ------------------------------------------------------

STEP = 20.0  # simulated seconds per step of the schedule (the real loop: every 30 s)
STEPS = 48
ROTATE_AT = (1, 13, 25, 37)
CLIENTS = 4
OLD_TOKEN_MARGIN = 100.0  # reuse tokens only while far from expiry: a 401 is then a failure


def _reached(counts: list[int], targets: list[int]) -> bool:
    return all(count >= target for count, target in zip(counts, targets, strict=True))


async def test_rotation_under_load_rejects_no_valid_token(
    auth: Client,
    make_replica: ResourceFactory,
    settings: Settings,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caches: list[JWKSCache] = []

    class CountingJWKSCache(JWKSCache):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            caches.append(self)

    monkeypatch.setattr(integration, "JWKSCache", CountingJWKSCache)
    ring = _ring(auth)
    # The replicas verify with their JWKS caches; the auth service with its own key ring.
    verifiers = [("auth", auth, "/auth/me")]
    verifiers += [
        (name, await _jwt_replica(make_replica, name), "/api/me") for name in ("r1", "r2", "r3")
    ]
    assert len(caches) == 3
    logins = [
        await register_and_login(auth, credential="none", username=f"load-{uuid.uuid4().hex[:8]}")
        for _ in range(CLIENTS)
    ]

    rounds = [0] * CLIENTS
    progress = asyncio.Condition()
    done = asyncio.Event()
    outcomes: list[tuple[str, int]] = []  # (verifier, status)
    issued: list[tuple[str, float]] = []  # (token, exp)
    verified_with_inactive_key = 0
    late_rejections: list[str] = []
    http = aiohttp.ClientSession()

    async def client(index: int) -> None:
        nonlocal verified_with_inactive_key
        held: list[tuple[str, float]] = []  # (token, exp)
        while not done.is_set() and rounds[index] < 50 * STEPS:
            token = await _token(auth, logins[index])
            held.append((token, jwt.decode(token, options={"verify_signature": False})["exp"]))
            issued.append(held[-1])
            held = [(t, exp) for t, exp in held if exp - clock.now() >= OLD_TOKEN_MARGIN]
            for use in {token, held[0][0]}:
                for name, verifier, path in verifiers:
                    response = await verifier.get(path, headers=_bearer(use))
                    outcomes.append((name, response.status))
                    if response.status == 200 and _kid(use) != ring.active.kid:
                        verified_with_inactive_key += 1
            async with progress:
                rounds[index] += 1
                progress.notify_all()

    async def late_verifier_accepts_every_live_token() -> None:
        """A verifier starting now (or whose caches just expired): nothing seen, nothing cached.

        The replicas above remember verified tokens and keys, which would hide a key
        retired too early; this one checks every live token against the JWKS as it is.
        """
        verifier = AccessTokenVerifier(
            JWKSCache(str(auth.make_url("/.well-known/jwks.json")), http, clock=clock),
            issuer=settings.issuer,
            audience=settings.audience,
            algorithms=[settings.jwt_algorithm],
            clock=clock,
        )
        live = {_kid(token): token for token, exp in issued if exp > clock.now()}
        for kid, token in live.items():  # one live token per key: the key must be published
            try:
                await verifier.verify(token)
            except InvalidTokenError as error:
                late_rejections.append(f"{kid}: {error!r}")

    async def schedule() -> None:
        """The auth replica's background loop, one step per STEP seconds of simulated time."""
        try:
            for step in range(STEPS):
                # Every client finishes a round between steps: load overlaps every change.
                target = [count + 1 for count in rounds]
                async with progress:
                    await asyncio.wait_for(
                        progress.wait_for(functools.partial(_reached, rounds, target)), timeout=30
                    )
                clock.advance(STEP)
                if step in ROTATE_AT:
                    await ring.rotate(now=clock.now())
                await ring.run_schedule(now=clock.now())
                await late_verifier_accepts_every_live_token()
        finally:
            done.set()

    try:
        await asyncio.gather(schedule(), *(client(i) for i in range(CLIENTS)))
    finally:
        await http.close()

    rejected = [outcome for outcome in outcomes if outcome[1] != 200]
    assert rejected == []
    assert late_rejections == []
    assert len(outcomes) >= STEPS * CLIENTS * len(verifiers)
    kids_issued = {_kid(token) for token, _ in issued}
    assert len(kids_issued) == 1 + len(ROTATE_AT)  # every rotation signed tokens under load
    assert verified_with_inactive_key > 0  # old tokens outlived their key's activity
    states = list((await _states(ring, clock)).values())
    assert states.count(KeyState.RETIRED) >= 2
    assert len(await _jwks_kids(auth)) == states.count(KeyState.ACTIVE) + states.count(
        KeyState.INACTIVE
    )
    # Each replica fetched the JWKS once at the start, once per new kid, and when its copy
    # grew older than max_age (300 s) in simulated time: never once per request.
    bound = 1 + len(ROTATE_AT) + math.ceil(STEPS * STEP / 300.0)
    assert all(1 <= cache.fetch_count <= bound for cache in caches), [
        cache.fetch_count for cache in caches
    ]
