"""``keys``: signing-key status and rotation for operators.

keys status           every key: state, times, the schedule's next step (--json for JSON)
keys rotate           publish a new key now; the schedule activates it after the lead time
keys rotate --activate-now
                      ...and sign with it at once (emergencies: see the warning it prints)
keys retire-expired   retire the inactive keys whose tokens have all expired
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from . import app_state
from .cli_common import CommandError, running_app
from .keyring import KeyChange, KeyRing, KeyRotationUnsupported, KeyStatus
from .settings import VERIFIER_MIN_REFETCH_INTERVAL, Settings

_COLUMNS = ("kid", "alg", "state", "created", "activated", "deactivated", "retired", "next")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _row(key: KeyStatus) -> tuple[str, ...]:
    upcoming = "-"
    if key.next_change is not None:
        upcoming = f"{key.next_change} from {_when(key.next_change_at)}"
    return (
        key.kid,
        key.algorithm,
        str(key.state),
        _when(key.created_at),
        _when(key.activated_at),
        _when(key.deactivated_at),
        _when(key.retired_at),
        upcoming,
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _changes_json(changes: list[KeyChange]) -> list[dict[str, str]]:
    return [{"kid": change.kid, "state": str(change.state)} for change in changes]


def _policy_json(keyring: KeyRing) -> dict[str, Any]:
    policy = keyring.policy
    return {
        "algorithm": keyring.algorithm,
        "rotation_interval": policy.interval,
        "publish_lead_time": policy.publish_lead_time,
        "retire_after": policy.retire_after,
    }


async def keys_status(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        keyring = app[app_state.KEYRING]
        keys = await keyring.status(now=app[app_state.CLOCK].now())
    if keyring.shared_secret:
        print(
            f"tessera-auth: HS256 shared-secret mode: tokens are signed with the configured "
            f"secret (kid {keyring.active.kid}); no key rotation, and the keys below are unused",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({**_policy_json(keyring), "keys": [key.to_json() for key in keys]}))
        return
    print(_table([_COLUMNS, *(_row(key) for key in keys)]))


async def keys_rotate(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        keyring = app[app_state.KEYRING]
        try:
            rotation = await keyring.rotate(
                now=app[app_state.CLOCK].now(), activate_now=args.activate_now
            )
        except KeyRotationUnsupported as error:
            raise CommandError(str(error)) from None
        for change in rotation.changes:
            app[app_state.AUDIT].record(
                "key.rotation", kid=change.kid, state=change.state, by="admin command"
            )
        keys = {key.kid: key for key in await keyring.status(now=app[app_state.CLOCK].now())}
    if args.activate_now:
        print(
            "tessera-auth: WARNING: the new key signs from now on without the publish lead "
            "time. Verifiers that fetched the JWKS moments ago may reject new tokens for up to "
            f"their minimum JWKS refetch interval ({VERIFIER_MIN_REFETCH_INTERVAL:g} s by "
            "default), and third-party verifiers that only honour the JWKS cache lifetime for "
            "longer.",
            file=sys.stderr,
        )
    elif not rotation.changes:
        print(
            f"tessera-auth: key {rotation.kid} was already published and waiting; no new key",
            file=sys.stderr,
        )
    key = keys[rotation.kid]
    print(
        json.dumps(
            {
                "kid": rotation.kid,
                "state": str(key.state),
                "next_change": key.next_change,
                "next_change_at": key.to_json()["next_change_at"],
                "changes": _changes_json(rotation.changes),
            }
        )
    )


async def keys_retire_expired(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        try:
            changes = await app[app_state.KEYRING].retire_expired(now=app[app_state.CLOCK].now())
        except KeyRotationUnsupported as error:
            raise CommandError(str(error)) from None
    print(json.dumps({"retired": [change.kid for change in changes]}))


def add_commands(commands: Any) -> None:
    keys: argparse.ArgumentParser = commands.add_parser(
        "keys",
        help="show and rotate the JWT signing keys",
        description="Show and rotate the JWT signing keys. A new key is published in the "
        "JWKS first and signs only after TESSERA_KEY_PUBLISH_LEAD_TIME, so verifiers know "
        "it before they meet it.",
    )
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="list the signing keys and the schedule's next steps",
        description="List the signing keys: state, times and the schedule's next step.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=keys_status)
    rotate = sub.add_parser(
        "rotate",
        help="publish a new key now; it signs after the publish lead time",
        description="Publish a new key now; the schedule makes it sign after the publish "
        "lead time.",
    )
    rotate.add_argument(
        "--activate-now",
        action="store_true",
        help="sign with the new key at once (emergencies: freshly cached verifiers may "
        "reject new tokens briefly)",
    )
    rotate.set_defaults(run=keys_rotate)
    retire = sub.add_parser(
        "retire-expired",
        help="retire the inactive keys whose tokens have all expired",
        description="Retire the inactive keys whose tokens have all expired (they leave the JWKS).",
    )
    retire.set_defaults(run=keys_retire_expired)
