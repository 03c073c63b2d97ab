"""``python -m tessera_auth``: run the service, and the operators' admin commands.

serve      validate the configuration, reach every dependency, run
check      validate the configuration and reach every dependency
migrate    apply pending database migrations
users ...  create, disable, enable, show users (see ``users --help``)
sessions . list and revoke a user's sessions and tokens
keys ...   key status and rotation
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from tessera_platform import serve
from tessera_platform.observability import configure_logging
from tessera_platform.pg_migrations import migrate_database
from tessera_platform.process_settings import load_or_exit, warn_unread_variables
from tessera_verify.env import RecordedEnviron

from . import cli_keys, cli_users, db
from .app import create_app
from .cli_common import CommandError
from .settings import Settings, load_settings
from .startup import check_dependencies


def _check_or_exit(settings: Settings) -> None:
    problems = asyncio.run(check_dependencies(settings))
    if problems:
        print(
            "tessera-auth: dependencies not ready:\n  - " + "\n  - ".join(problems), file=sys.stderr
        )
        raise SystemExit(3)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tessera_auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="validate the configuration and run the service")
    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser("check", help="validate the configuration and reach every dependency")
    cli_users.add_commands(commands)
    cli_keys.add_commands(commands)
    cli_users.add_audit_command(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    environ = RecordedEnviron(os.environ)
    settings = load_or_exit(load_settings, "tessera-auth", environ)
    configure_logging(
        "auth",
        settings.process.log_level,
        json_logs=settings.process.log_json,
        access_log_enabled=settings.process.access_log,
    )
    warn_unread_variables(environ)
    if args.command == "migrate":
        print(asyncio.run(migrate_database(settings.database_url, db.MIGRATOR)))
        return
    if args.command not in ("serve", "check"):
        try:
            asyncio.run(args.run(settings, args))
        except CommandError as error:
            print(f"tessera-auth: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        return
    _check_or_exit(settings)
    if args.command == "check":
        print("configuration and dependencies: ok")
        return
    serve.run(create_app(settings), settings.process)


if __name__ == "__main__":
    main()
