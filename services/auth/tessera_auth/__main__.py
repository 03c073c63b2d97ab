"""``python -m tessera_auth`` (``tessera-auth``): run the service, and the operators'
admin commands.

The command line is parsed here (:func:`build_parser`); ``users``, ``sessions`` and
``audit`` are :mod:`tessera_auth.cli_users`, ``keys`` :mod:`tessera_auth.cli_keys`.
Every command reads the service's configuration from the environment first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from functools import partial

from tessera_platform import serve
from tessera_platform.observability import configure_logging
from tessera_platform.pg_migrations import migrate_database
from tessera_platform.process_settings import load_or_exit, warn_unread_variables
from tessera_platform.program import distribution_version, usage_name
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


DESCRIPTION = """\
tessera's auth service, and the operators' commands on its accounts, sessions
and keys. Every command reads the service's configuration from the environment
(DATABASE_URL, REDIS_URL, TESSERA_*: README, "Configuration"); on the local
stack, `./tessera users ...` (and sessions, keys, audit) sets it for you."""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``prog`` names the program in usage lines (default: as called)."""
    parser = argparse.ArgumentParser(
        prog=prog or usage_name("tessera_auth"),
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tessera-auth {distribution_version('tessera-auth')}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="check the configuration and every dependency, then run the service",
        description="Check the configuration and every dependency, then serve HTTP until "
        "SIGTERM (in-flight requests finish).",
    )
    commands.add_parser(
        "check",
        help="check the configuration and every dependency, and exit",
        description="Check the configuration (exit 2 listing every problem) and reach "
        "Redis and PostgreSQL (exit 3 naming what is unreachable or unmigrated).",
    )
    commands.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply pending database migrations (under an advisory lock: several "
        "processes may run it at once).",
    )
    cli_users.add_commands(commands)
    cli_keys.add_commands(commands)
    cli_users.add_audit_command(commands)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run one command; ``prog`` names the program in usage lines (the ``tessera``
    front end passes its own name)."""
    args = build_parser(prog).parse_args(argv)
    environ = RecordedEnviron(os.environ)
    settings = load_or_exit(load_settings, "tessera-auth", environ)
    # A partial, not a closure: with TESSERA_WORKERS > 1 each worker runs it too.
    setup_logging = partial(
        configure_logging,
        "auth",
        settings.process.log_level,
        json_logs=settings.process.log_json,
        access_log_enabled=settings.process.access_log,
    )
    setup_logging()
    warn_unread_variables(environ)
    if args.command == "migrate":
        print(asyncio.run(migrate_database(settings.database_url, db.MIGRATOR)))
        return
    if args.command not in ("serve", "check"):
        try:
            asyncio.run(args.run(settings, args))
        except CommandError as error:
            print(f"tessera-auth: {error}", file=sys.stderr)
            raise SystemExit(error.exit_status) from None
        return
    _check_or_exit(settings)
    if args.command == "check":
        print("configuration and dependencies: ok")
        return
    serve.run(partial(create_app, settings), settings.process, worker_setup=setup_logging)


if __name__ == "__main__":
    main()
