"""``users`` and ``sessions``: account administration for operators."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from aiohttp import web

from tessera_verify.errors import TesseraError

from . import appkeys
from .cli_common import CommandError, running_app
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
    user = await app[appkeys.ACCOUNTS].users.by_username(normalized)
    if user is None:
        raise CommandError(f"no user {normalized!r}")
    return user


async def users_create(settings: Settings, args: argparse.Namespace) -> None:
    password = _read_password(args)
    async with running_app(settings) as app:
        try:
            user = await app[appkeys.ACCOUNTS].register(args.username, password)
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
        await app[appkeys.ACCOUNTS].set_disabled(user.id, disable)
        print(json.dumps(_user_json(await _find(app, args.username))))


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
