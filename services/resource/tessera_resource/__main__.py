"""``python -m tessera_resource serve|migrate`` (``tessera-resource``): one replica."""

from __future__ import annotations

import argparse
import asyncio
import os
from functools import partial

from tessera_platform import serve
from tessera_platform.observability import configure_logging
from tessera_platform.pg_migrations import migrate_database
from tessera_platform.process_settings import load_or_exit, warn_unread_variables
from tessera_platform.program import distribution_version, usage_name
from tessera_verify.env import RecordedEnviron

from .app import MIGRATOR, create_app
from .settings import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=usage_name("tessera_resource"),
        description="A tessera resource replica: verifies credentials and serves /api/. "
        "Its configuration comes from the environment (README, 'Configuration').",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tessera-resource {distribution_version('tessera-resource')}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run one resource replica until SIGTERM")
    commands.add_parser("migrate", help="apply the resource service's database migrations")
    args = parser.parse_args(argv)
    environ = RecordedEnviron(os.environ)
    settings = load_or_exit(load_settings, "tessera-resource", environ)
    # A partial, not a closure: with TESSERA_WORKERS > 1 each worker runs it too.
    setup_logging = partial(
        configure_logging,
        f"resource-{settings.replica_id}",
        settings.process.log_level,
        json_logs=settings.process.log_json,
        access_log_enabled=settings.process.access_log,
    )
    setup_logging()
    warn_unread_variables(environ)
    if args.command == "migrate":
        print(asyncio.run(migrate_database(settings.database_url, MIGRATOR)))
        return
    serve.run(partial(create_app, settings), settings.process, worker_setup=setup_logging)


if __name__ == "__main__":
    main()
