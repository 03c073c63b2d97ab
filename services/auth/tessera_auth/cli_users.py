"""``users`` and ``sessions``: account administration for operators.

Every command goes through the same services as the HTTP API, so a revocation
made here reaches the replicas over the revocation feed like a logout.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from aiohttp import web

from tessera_verify.errors import TesseraError

from . import app_state
from .cli_common import CommandError, running_app
from .session_views import session_details
from .settings import Settings
from .users import User, normalize_username


def _user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "created_at": user.created_at.isoformat(),
        "password_changed_at": user.password_changed_at.isoformat(),
        "disabled": user.disabled,
    }


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise CommandError("the passwords differ")
    return first


async def _find(app: web.Application, username: str) -> User:
    try:
        normalized = normalize_username(username)
    except TesseraError as error:
        raise CommandError(error.message) from None
    user = await app[app_state.ACCOUNTS].users.by_username(normalized)
    if user is None:
        raise CommandError(f"no user {normalized!r}")
    return user


async def users_create(settings: Settings, args: argparse.Namespace) -> None:
    password = _read_password(args)
    async with running_app(settings) as app:
        try:
            user = await app[app_state.ACCOUNTS].register(args.username, password)
        except TesseraError as error:
            raise CommandError(error.message) from None
    print(json.dumps(_user_json(user)))


async def users_show(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        print(json.dumps(_user_json(await _find(app, args.username))))


async def users_set_disabled(settings: Settings, args: argparse.Namespace) -> None:
    disable = args.users_command == "disable"
    async with running_app(settings) as app:
        user = await _find(app, args.username)
        await app[app_state.ACCOUNTS].set_disabled(user.id, disable)
        app[app_state.AUDIT].record(
            "user.disabled" if disable else "user.enabled",
            user_id=user.id,
            username=user.username,
            by="admin command",
        )
        if disable:
            await app[app_state.REVOKER].revoke_everything(user.id, reason="account disabled")
        print(json.dumps(_user_json(await _find(app, args.username))))


async def sessions_list(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        user = await _find(app, args.username)
        sessions = await app[app_state.SESSIONS].list_for_user(user.id)
        families = await app[app_state.REFRESH_TOKENS].families_of(user.id)
    listing = {
        "user": user.username,
        "sessions": [session_details(s) for s in sessions],
        "refresh_token_families": [
            {"id": f.family_id, "session_link": f.session_link, "expires_at": f.expires_at}
            for f in families
        ],
    }
    print(json.dumps(listing, indent=2))


async def sessions_revoke(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        user = await _find(app, args.username)
        for session in await app[app_state.SESSIONS].list_for_user(user.id):
            if session.record.public_id == args.session_id:
                await app[app_state.REVOKER].revoke_session(session)
                print(json.dumps({"revoked": {"session": args.session_id}}))
                return
    raise CommandError(f"{user.username} has no session {args.session_id!r}")


async def sessions_revoke_all(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        user = await _find(app, args.username)
        summary = await app[app_state.REVOKER].revoke_everything(user.id, reason="admin command")
    print(json.dumps({"revoked": summary.to_json()}))


def add_commands(commands: Any) -> None:
    users: argparse.ArgumentParser = commands.add_parser("users", help="user accounts")
    sub = users.add_subparsers(dest="users_command", required=True)
    create = sub.add_parser("create", help="create a user (password from a prompt or stdin)")
    create.add_argument("username")
    create.add_argument("--password-stdin", action="store_true")
    create.set_defaults(run=users_create)
    for name, help_text in (("disable", "disable a user"), ("enable", "enable a user again")):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("username")
        parser.set_defaults(run=users_set_disabled)
    show = sub.add_parser("show", help="show a user")
    show.add_argument("username")
    show.set_defaults(run=users_show)

    sessions: argparse.ArgumentParser = commands.add_parser(
        "sessions", help="a user's sessions and tokens"
    )
    sub = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sub.add_parser("list", help="list a user's sessions and refresh-token families")
    listing.add_argument("username")
    listing.set_defaults(run=sessions_list)
    revoke = sub.add_parser("revoke", help="revoke one session (and tokens issued with it)")
    revoke.add_argument("username")
    revoke.add_argument("session_id")
    revoke.set_defaults(run=sessions_revoke)
    revoke_all = sub.add_parser(
        "revoke-all", help="log a user out everywhere: sessions, refresh and access tokens"
    )
    revoke_all.add_argument("username")
    revoke_all.set_defaults(run=sessions_revoke_all)


async def audit_list(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        user_id = None if args.user is None else (await _find(app, args.user)).id
        events = await app[app_state.AUDIT].query(user_id=user_id, kind=args.kind, limit=args.limit)
    for event in events:
        print(json.dumps(event))


def add_audit_command(commands: Any) -> None:
    audit: argparse.ArgumentParser = commands.add_parser(
        "audit", help="the audit trail of security events, newest first (JSON lines)"
    )
    audit.add_argument("--user", help="only this user's events")
    audit.add_argument("--kind", help="only this kind (e.g. login, revocation, key.rotation)")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(run=audit_list)
