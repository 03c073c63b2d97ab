"""What every background loop (feeds, watchers, counters) needs to stop when asked."""

from __future__ import annotations

import asyncio


def reraise_if_cancelling(exc: BaseException) -> None:
    """Raise :class:`asyncio.CancelledError` if this task is being cancelled.

    redis-py can surface a cancellation that arrives mid-command as a connection
    or timeout error; a loop that retries on those errors would then swallow
    the stop and keep its app's shutdown waiting forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def stop_if_cancelling() -> None:
    """Raise :class:`asyncio.CancelledError` if a cancellation of this task was swallowed
    on the way here (see above): the stop it asked for happens now. Call it once per
    turn of a loop that never ends by itself."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def pause(seconds: float) -> None:
    """``asyncio.sleep`` at the turn of a background loop, after :func:`stop_if_cancelling`."""
    stop_if_cancelling()
    await asyncio.sleep(seconds)
