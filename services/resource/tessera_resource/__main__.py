"""``python -m tessera_resource serve|migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import asyncpg
from aiohttp import web

from .app import MIGRATOR, create_app
from .settings import ConfigError, ResourceSettings, load_settings


def _load_or_exit() -> ResourceSettings:
    try:
        return load_settings()
    except ConfigError as error:
        print(f"tessera-resource: {error}", file=sys.stderr)
        raise SystemExit(2) from None


async def _migrate(settings: ResourceSettings) -> None:
    connection = await asyncpg.connect(settings.database_url)
    try:
        applied = await MIGRATOR.migrate(connection)
    finally:
        await connection.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to apply"
    print(f"migrations: {names}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tessera_resource", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run one resource replica")
    commands.add_parser("migrate", help="apply the resource service's migrations")
    args = parser.parse_args(argv)
    settings = _load_or_exit()
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {settings.replica_id} %(name)s: %(message)s",
    )
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=10.0,
    )


if __name__ == "__main__":
    main()
