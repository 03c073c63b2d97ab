"""What the admin commands share: running against the same services the app uses."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from .app import create_app
from .settings import Settings

Runner = Callable[[Settings, argparse.Namespace], Awaitable[None]]


class CommandError(Exception):
    """An admin command could not do what it was asked (bad user name, unknown key...)."""

    #: The process's exit status.
    exit_status = 1


class UsageError(CommandError):
    """The command was called in a way that cannot work (exit status 2, as argparse's)."""

    exit_status = 2


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[web.Application]:
    """The auth app's services started (pools, key ring, revocation plane) without HTTP.

    Admin commands go through the same code paths as the HTTP API, so a revoke
    from the command line is published to replicas exactly like a logout.
    """
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()
