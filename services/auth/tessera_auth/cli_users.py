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
from .cli_common import CommandError, UsageError, running_app
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


def read_new_password(*, from_stdin: bool) -> str:
    """A new password: the first line of stdin (``--password-stdin``), else asked twice
    on the terminal. Without either there is nobody to ask: a :class:`UsageError`, said
    before anything is connected to, rather than an EOFError from the prompt."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin: standard input gave no password")
        return password
    if not sys.stdin.isatty():
        raise UsageError(
            "no terminal to ask for the password on; write it to standard input "
            "and pass --password-stdin (e.g. `... --password-stdin < password.txt`)"
        )
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise UsageError("no password given") from None
    if first != again:
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
    password = read_new_password(from_stdin=args.password_stdin)
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


_USERNAME_HELP = "the user's name (compared case-insensitively)"


def _subcommand(
    sub: Any, name: str, summary: str, run: Any, description: str | None = None
) -> argparse.ArgumentParser:
    """One subcommand whose ``--help`` opens with its summary; it runs ``run``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description or summary[0].upper() + summary[1:] + "."
    )
    parser.set_defaults(run=run)
    return parser


def add_commands(commands: Any) -> None:
    users: argparse.ArgumentParser = commands.add_parser(
        "users",
        help="create, show, disable and enable user accounts",
        description="Create, show, disable and enable user accounts. Each command prints "
        "the user as JSON.",
    )
    sub = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    create = _subcommand(
        sub,
        "create",
        "create a user",
        users_create,
        "Create a user. The password is asked for twice on the terminal; scripts write "
        "it to standard input and pass --password-stdin. The password policy of the "
        "HTTP API applies.",
    )
    create.add_argument(
        "username", help="3-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of a prompt",
    )
    _subcommand(sub, "show", "show a user", users_show).add_argument(
        "username", help=_USERNAME_HELP
    )
    disable = _subcommand(
        sub,
        "disable",
        "disable a user and revoke everything of theirs",
        users_set_disabled,
        "Disable a user: they can no longer log in, and their sessions, refresh tokens "
        "and access tokens are revoked at once (replicas hear of it on the revocation feed).",
    )
    disable.add_argument("username", help=_USERNAME_HELP)
    _subcommand(sub, "enable", "let a disabled user log in again", users_set_disabled).add_argument(
        "username", help=_USERNAME_HELP
    )

    sessions: argparse.ArgumentParser = commands.add_parser(
        "sessions",
        help="list and revoke a user's sessions and tokens",
        description="List and revoke a user's sessions and tokens.",
    )
    sub = sessions.add_subparsers(dest="sessions_command", required=True, metavar="COMMAND")
    listing = _subcommand(
        sub,
        "list",
        "list a user's sessions and refresh-token families (JSON)",
        sessions_list,
    )
    listing.add_argument("username", help=_USERNAME_HELP)
    revoke = _subcommand(
        sub, "revoke", "revoke one session and the tokens issued with it", sessions_revoke
    )
    revoke.add_argument("username", help=_USERNAME_HELP)
    revoke.add_argument("session_id", help="the session's id, as `sessions list` shows it")
    revoke_all = _subcommand(
        sub,
        "revoke-all",
        "log a user out everywhere: sessions, refresh and access tokens",
        sessions_revoke_all,
    )
    revoke_all.add_argument("username", help=_USERNAME_HELP)


async def audit_list(settings: Settings, args: argparse.Namespace) -> None:
    async with running_app(settings) as app:
        user_id = None if args.user is None else (await _find(app, args.user)).id
        events = await app[app_state.AUDIT].query(user_id=user_id, kind=args.kind, limit=args.limit)
    for event in events:
        print(json.dumps(event))


def add_audit_command(commands: Any) -> None:
    audit: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="print the audit trail of security events, newest first (JSON lines)",
        description="Print the audit trail of security events (logins, revocations, key "
        "rotations, ...), newest first, one JSON object per line.",
    )
    audit.add_argument("--user", metavar="USERNAME", help="only this user's events")
    audit.add_argument("--kind", help="only this kind (e.g. login, revocation, key.rotation)")
    audit.add_argument(
        "--limit", type=int, default=100, help="at most this many events (default 100)"
    )
    audit.set_defaults(run=audit_list)
