"""The signing-key schedule as pure decisions (no PostgreSQL): every transition of
published -> active -> inactive -> retired, at the boundary second and just before."""

from __future__ import annotations

import pytest

from tessera_auth.key_schedule import KeyState, KeyTimes, RotationPolicy, Step, next_change, plan

POLICY = RotationPolicy(interval=1000.0, publish_lead_time=100.0, retire_after=50.0)
ALG = "ES256"


def _key(
    kid: str,
    state: KeyState,
    created: float,
    *,
    alg: str = ALG,
    activated_at: float | None = None,
    deactivated_at: float | None = None,
) -> KeyTimes:
    return KeyTimes(kid, alg, state, created, activated_at, deactivated_at)


def _plan(*keys: KeyTimes, now: float, policy: RotationPolicy = POLICY) -> Step:
    return plan(keys, algorithm=ALG, policy=policy, now=now)


def test_no_key_at_all_makes_an_active_one() -> None:
    assert _plan(now=0) == Step(create_active=True)


def test_a_fresh_active_key_leaves_nothing_to_do() -> None:
    assert _plan(_key("a", KeyState.ACTIVE, 0, activated_at=0), now=999).idle


@pytest.mark.parametrize(("now", "publish"), [(999.0, False), (1000.0, True)])
def test_an_active_key_gets_a_successor_published_at_its_interval(
    now: float, publish: bool
) -> None:
    assert _plan(_key("a", KeyState.ACTIVE, 0, activated_at=0), now=now).publish is publish


def test_no_successor_when_one_is_already_waiting_or_rotation_is_off() -> None:
    active = _key("a", KeyState.ACTIVE, 0, activated_at=0)
    waiting = _key("b", KeyState.PUBLISHED, 1000)
    assert not _plan(active, waiting, now=1050).publish
    off = RotationPolicy(interval=0, publish_lead_time=100, retire_after=50)
    assert _plan(active, now=10**9, policy=off).idle


@pytest.mark.parametrize(("now", "activate"), [(1099.0, None), (1100.0, "b")])
def test_a_published_key_signs_only_after_its_lead_time(now: float, activate: str | None) -> None:
    active = _key("a", KeyState.ACTIVE, 0, activated_at=0)
    step = _plan(active, _key("b", KeyState.PUBLISHED, 1000), now=now)
    assert step.activate == activate
    assert not step.publish and not step.create_active


def test_the_oldest_due_key_is_activated_first() -> None:
    step = _plan(_key("c", KeyState.PUBLISHED, 20), _key("b", KeyState.PUBLISHED, 10), now=500)
    assert step == Step(activate="b")


@pytest.mark.parametrize(("now", "retired"), [(1149.0, ()), (1150.0, ("old",))])
def test_an_inactive_key_retires_once_its_tokens_have_expired(
    now: float, retired: tuple[str, ...]
) -> None:
    old = _key("old", KeyState.INACTIVE, 0, activated_at=0, deactivated_at=1100)
    active = _key("a", KeyState.ACTIVE, 1000, activated_at=1100)
    assert _plan(old, active, now=now).retire == retired


def test_another_algorithms_keys_only_ever_retire() -> None:
    other = _key("rsa", KeyState.PUBLISHED, 0, alg="RS256")
    other_old = _key("rsa-old", KeyState.INACTIVE, 0, deactivated_at=0, alg="RS256")
    step = _plan(other, other_old, now=10**6)
    assert step == Step(retire=("rsa-old",), create_active=True)


def test_next_change_says_what_plan_will_do_and_when() -> None:
    active = _key("a", KeyState.ACTIVE, 0, activated_at=10)
    assert next_change(active, own=True, successor_waiting=False, policy=POLICY) == (
        "publish successor",
        1010,
    )
    assert next_change(active, own=True, successor_waiting=True, policy=POLICY) == (None, None)
    published = _key("b", KeyState.PUBLISHED, 1000)
    assert next_change(published, own=True, successor_waiting=True, policy=POLICY) == (
        "activate",
        1100,
    )
    assert next_change(published, own=False, successor_waiting=True, policy=POLICY) == (
        None,
        None,
    )
    inactive = _key("c", KeyState.INACTIVE, 0, deactivated_at=5)
    assert next_change(inactive, own=False, successor_waiting=False, policy=POLICY) == (
        "retire",
        55,
    )
    # What next_change announces is what plan does at that second.
    assert _plan(active, now=1010).publish
    assert _plan(active, published, now=1100).activate == "b"
    assert _plan(inactive, active, now=55).retire == ("c",)
