"""The signing-key schedule as pure decisions: what to do now, and what happens next.

Keys move published -> active -> inactive -> retired. A key is published for
``publish_lead_time`` before it signs (so verifiers have it in their JWKS
before any token they see was signed with it); an active key is succeeded
once it is ``interval`` old; an inactive key leaves the JWKS ``retire_after``
after it stopped signing (when every token it signed has expired). The key
ring (:mod:`tessera_auth.keyring`) reads the keys, asks :func:`plan`, and
applies the step under its advisory lock; nothing here touches PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .settings import Settings

#: Seconds an inactive key outlives the last token it can have signed: covers the
#: verifiers' expiry leeway (5 s) and clock skew between hosts.
RETIRE_LEEWAY = 60.0


class KeyState(StrEnum):
    PUBLISHED = "published"
    ACTIVE = "active"
    INACTIVE = "inactive"
    RETIRED = "retired"


@dataclass(frozen=True)
class RotationPolicy:
    """When keys change state, in seconds."""

    interval: float  # an active key's age at which its successor is published; 0: never
    publish_lead_time: float  # how long a new key is published before it signs
    retire_after: float  # how long after it stops signing a key leaves the JWKS

    @classmethod
    def from_settings(cls, settings: Settings) -> RotationPolicy:
        return cls(
            interval=settings.key_rotation_interval,
            publish_lead_time=settings.key_publish_lead_time,
            retire_after=settings.access_token_ttl + settings.key_reload_interval + RETIRE_LEEWAY,
        )


@dataclass(frozen=True)
class KeyTimes:
    """A stored key as the schedule sees it (Unix times)."""

    kid: str
    algorithm: str
    state: KeyState
    created_at: float
    activated_at: float | None = None
    deactivated_at: float | None = None


@dataclass(frozen=True)
class Step:
    """What the schedule does now, in this order."""

    activate: str | None = None  # a published key whose lead time is over
    retire: tuple[str, ...] = ()  # inactive keys whose tokens have all expired
    create_active: bool = False  # no key signs and none is on its way
    publish: bool = False  # the active key is due a successor

    @property
    def idle(self) -> bool:
        return self == Step()


def plan(keys: Sequence[KeyTimes], *, algorithm: str, policy: RotationPolicy, now: float) -> Step:
    """The step for ``algorithm``'s keys at ``now`` (retirement: any algorithm's keys)."""
    own = sorted((k for k in keys if k.algorithm == algorithm), key=lambda k: k.created_at)
    active = next((k for k in own if k.state is KeyState.ACTIVE), None)
    published = [k for k in own if k.state is KeyState.PUBLISHED]
    due = [k for k in published if k.created_at + policy.publish_lead_time <= now]
    retire = tuple(
        k.kid
        for k in keys
        if k.state is KeyState.INACTIVE
        and k.deactivated_at is not None
        and k.deactivated_at + policy.retire_after <= now
    )
    publish = (
        active is not None
        and not published
        and policy.interval > 0
        and active.activated_at is not None
        and active.activated_at + policy.interval <= now
    )
    return Step(
        activate=due[0].kid if due else None,
        retire=retire,
        create_active=active is None and not published,
        publish=publish,
    )


def next_change(
    key: KeyTimes, *, own: bool, successor_waiting: bool, policy: RotationPolicy
) -> tuple[str | None, float | None]:
    """What the schedule will do to ``key`` next, and the earliest time it may.

    ``own``: the key is of the algorithm this service signs with (others only retire).
    """
    if key.state is KeyState.INACTIVE and key.deactivated_at is not None:
        return "retire", key.deactivated_at + policy.retire_after
    if own and key.state is KeyState.PUBLISHED:
        return "activate", key.created_at + policy.publish_lead_time
    if (
        own
        and key.state is KeyState.ACTIVE
        and policy.interval > 0
        and not successor_waiting
        and key.activated_at is not None
    ):
        return "publish successor", key.activated_at + policy.interval
    return None, None
