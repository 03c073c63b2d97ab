"""The attacker of part 6: streams of requests that would each cost the auth service a
password hash, sent at a fixed rate, each stream from a pool of source addresses of its own.

The four streams are the ways in to Argon2 that need no password:

- wrong passwords against **one account** (``POST /auth/login``);
- wrong passwords **sprayed** over many account names, each guessed in turn
  (unknown names cost the same dummy verification as real ones, by design);
- **registrations** of fresh names with strong passwords (``POST /auth/register``);
- **password changes** with a wrong current password, on a stolen access token
  (``POST /auth/password``).

Each answer says where the request ended: 429 (the regulator refused it before
any hashing), 503 ``server_busy`` (the bounded Argon2 queue was full), another
503 (a dependency failed, e.g. the service's Redis connections ran out), or the
answer that only comes after a hash (:attr:`Stream.hashed_status`). The
schedule is open-loop: the n-th request is due ``n / rate`` seconds in, sent
from the pool's next address in turn, whatever happened to the ones before;
at most ``max_in_flight`` wait for their answers at once (the rest are
counted as not sent), so the flood is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = [
    "BUSY",
    "THROTTLED",
    "Request",
    "Stream",
    "Tally",
    "flood",
    "guesses_on_many_accounts",
    "guesses_on_one_account",
    "password_changes",
    "read_answer",
    "registrations",
    "unavailable",
]

#: The answers of the throttles (see :func:`read_answer`): the regulator, and the
#: bounded Argon2 queue.
THROTTLED, BUSY = "429", "503 server_busy"


async def read_answer(response: aiohttp.ClientResponse) -> str:
    """The answer as the tallies count it: its status, and for a 503 also its error code
    (``server_busy`` is the Argon2 queue; any other code, a dependency that failed)."""
    body = await response.read()
    if response.status != 503:
        return str(response.status)
    try:
        code = json.loads(body).get("error")
    except (ValueError, AttributeError):
        code = None
    return f"503 {code or 'unknown'}"


def unavailable(answers: Mapping[str, int]) -> int:
    """How many of ``answers`` were 503s other than ``server_busy``."""
    return sum(
        count for answer, count in answers.items() if answer.startswith("503 ") and answer != BUSY
    )


@dataclass(frozen=True)
class Request:
    path: str
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """One kind of attacker request; ``request(n)`` is the n-th."""

    key: str
    label: str
    #: The answer that only comes after Argon2 ran (a wrong password verified, a name hashed).
    hashed_status: int
    request: Callable[[int], Request]


@dataclass
class Tally:
    """Where a stream's requests ended."""

    answers: Counter[str] = field(default_factory=Counter)
    no_answer: int = 0
    #: Due, but ``max_in_flight`` requests were still waiting: never sent.
    not_sent: int = 0

    def to_json(self, stream: Stream) -> dict[str, Any]:
        sent = sum(self.answers.values()) + self.no_answer
        counted = {
            "throttled": self.answers[THROTTLED],
            "busy": self.answers[BUSY],
            "unavailable": unavailable(self.answers),
            "hashed": self.answers[str(stream.hashed_status)],
        }
        return {
            "label": stream.label,
            "sent": sent,
            **counted,
            "other": sent - sum(counted.values()) - self.no_answer,
            "no_answer": self.no_answer,
            "not_sent": self.not_sent,
            "answers": dict(sorted(self.answers.items())),
        }


def _guess(n: int) -> str:
    return f"guess-{n}-{secrets.token_hex(4)}"


def _strong_password() -> str:
    return secrets.token_urlsafe(18)


def guesses_on_one_account(username: str) -> Stream:
    return Stream(
        "one_account",
        "wrong passwords, one account",
        401,
        lambda n: Request(
            "/auth/login", {"username": username, "password": _guess(n), "credential": "session"}
        ),
    )


def guesses_on_many_accounts(prefix: str, accounts: int) -> Stream:
    return Stream(
        "many_accounts",
        f"wrong passwords sprayed over {accounts} accounts",
        401,
        lambda n: Request(
            "/auth/login",
            {"username": f"{prefix}{n % accounts}", "password": _guess(n), "credential": "session"},
        ),
    )


def registrations(prefix: str) -> Stream:
    return Stream(
        "registrations",
        "registrations (fresh names, strong passwords)",
        201,
        lambda n: Request(
            "/auth/register", {"username": f"{prefix}{n}", "password": _strong_password()}
        ),
    )


def password_changes(access_token: str) -> Stream:
    return Stream(
        "password_changes",
        "password changes, wrong current password (stolen token)",
        403,
        lambda n: Request(
            "/auth/password",
            {"current_password": _guess(n), "new_password": _strong_password()},
            {"Authorization": f"Bearer {access_token}"},
        ),
    )


async def flood(
    base_url: str,
    stream: Stream,
    clients: Sequence[aiohttp.ClientSession],
    *,
    rate: float,
    seconds: float,
    max_in_flight: int,
) -> Tally:
    """Send ``stream`` at ``rate`` requests/s for ``seconds``, the n-th from ``clients[n % len]``;
    returns once every answer is in."""
    tally = Tally()
    waiting: set[asyncio.Task[None]] = set()

    async def send(n: int) -> None:
        request = stream.request(n)
        client = clients[n % len(clients)]
        try:
            async with client.post(
                base_url + request.path, json=dict(request.body), headers=dict(request.headers)
            ) as response:
                tally.answers[await read_answer(response)] += 1
        except (aiohttp.ClientError, TimeoutError):
            tally.no_answer += 1

    started = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(waiting) >= max_in_flight:
            tally.not_sent += 1
            continue
        task = asyncio.create_task(send(n))
        waiting.add(task)
        task.add_done_callback(waiting.discard)
    if waiting:
        await asyncio.gather(*waiting)
    return tally
