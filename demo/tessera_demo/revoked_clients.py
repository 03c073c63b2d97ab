"""Clients that keep presenting credentials already logged out: is any of them accepted?

The outage probe runs these beside its streaming users, so a fault of the
shared store is attacked the way a revocation is attacked in practice:

- *revoked before*: users log in (a session cookie and an access token at
  once, ``credential: both``), check that what they hold is accepted, log
  out, and from then on present the cookie alone and the bearer token alone,
  in turn, for the whole probe;
- *revoked during*: users logged in before the fault whose logout starts
  the moment the store is taken away; from its 2xx on, they present what
  they held, as the revoked-before users do;
- *churners*: users that log in, present their credentials, log out and
  present them again, over and over, while the fault happens. Their logouts
  may meet the fault (a 503): a logout is tried again until it answers 2xx,
  and only from that answer on is the credential revoked.

Every check of a revoked credential is a ``GET /api/me`` through nginx sent
after the logout's 2xx arrived; a 2xx to it is a revoked credential
*accepted*, which tessera promises never happens (README, "Revocation
invariants"). Each user connects from its own loopback address
(127.0.N.1, as the demo's users do). Loops are bounded in count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tessera_demo.users import PASSWORD, DemoUser

__all__ = ["RevocationCheck", "RevokedClients"]

PATH = "/api/me"
KINDS = ("cookie", "bearer")
# Between two checks of one revoked-before user; keeps the attack from starving the stack.
PAUSE = 0.02
CHECKS_PER_REVOCATION = 6  # per churn cycle: cookie, bearer, cookie, ...
MAX_CHECKS_PER_USER = 5000
MAX_CHURN_CYCLES = 300
# Between two churn cycles: a login is an Argon2 hash, and the stack has other work.
CHURN_PAUSE = 0.1
# A login or logout is tried again after a 503 or a failed connection, every
# RETRY_PAUSE, for as long as a fault may last (a single Redis's restart, a failover).
ATTEMPTS = 1200
RETRY_PAUSE = 0.05


@dataclass(frozen=True)
class Held:
    """What one login handed a client: the session cookie and the access token."""

    cookie: str  # "name=value", as a Cookie header
    bearer: str
    refresh: str


@dataclass(frozen=True)
class RevocationCheck:
    """One presentation of a credential; ``revoked_at`` is when its logout answered 2xx
    (``None``: still live, a control check before the logout)."""

    user: str
    kind: str  # cookie | bearer
    sent: float
    answered: float
    status: int | None
    revoked_at: float | None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def of_revoked(self) -> bool:
        return self.revoked_at is not None and self.sent >= self.revoked_at


@dataclass
class RevokedClients:
    """The revoked-before users and the churners of one probe (module doc)."""

    base_url: str
    checks: list[RevocationCheck] = field(default_factory=list)
    #: Each logout answered 2xx: the user, when it was first tried, when the 2xx came,
    #: and what the answer says it revoked.
    revocations: list[tuple[str, float, float, str]] = field(default_factory=list)
    logouts_unanswered: int = 0
    logins_failed: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    # -- figures ----------------------------------------------------------------

    def of_revoked(self) -> list[RevocationCheck]:
        return [c for c in self.checks if c.of_revoked]

    def accepted(self) -> list[RevocationCheck]:
        """Every 2xx answered to a credential already logged out: must stay empty."""
        return [c for c in self.of_revoked() if c.accepted]

    def revoked_between(self, start: float, end: float) -> int:
        """Logouts under way between ``start`` and ``end`` (tried before the end, their
        2xx after the start): those that met the fault."""
        return sum(1 for _, tried, at, _ in self.revocations if tried <= end and at >= start)

    def checks_between(self, start: float, end: float) -> int:
        return sum(1 for c in self.of_revoked() if start <= c.sent <= end)

    def armed(self) -> set[str]:
        """The kinds the row accepts at all (a live control check got a 2xx):
        only those could show a revoked credential accepted."""
        return {c.kind for c in self.checks if c.revoked_at is None and c.accepted}

    # -- clients ----------------------------------------------------------------

    async def _present(
        self, user: DemoUser, held: Held, kind: str, revoked_at: float | None
    ) -> None:
        headers = (
            {"Cookie": held.cookie}
            if kind == "cookie"
            else {"Authorization": f"Bearer {held.bearer}"}
        )
        user.session.cookie_jar.clear()  # only what is presented explicitly
        sent = time.monotonic()
        try:
            async with user.session.get(self.base_url + PATH, headers=headers) as response:
                await response.read()
                status: int | None = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = None
        self.checks.append(
            RevocationCheck(user.name, kind, sent, time.monotonic(), status, revoked_at)
        )

    async def _login(self, user: DemoUser) -> Held | None:
        for _ in range(ATTEMPTS):
            if self.stopped.is_set():
                return None
            user.session.cookie_jar.clear()
            held = await _login_both(user, self.base_url)
            if held is not None:
                return held
            await asyncio.sleep(RETRY_PAUSE)
        self.logins_failed += 1
        return None

    async def _logout(self, user: DemoUser, held: Held) -> float | None:
        """Log out until a 2xx; the moment it arrived, or ``None`` if none did."""
        tried = time.monotonic()
        body = {"refresh_token": held.refresh}
        headers = {"Cookie": held.cookie, "Authorization": f"Bearer {held.bearer}"}
        for _ in range(ATTEMPTS):
            if self.stopped.is_set():
                break
            user.session.cookie_jar.clear()
            try:
                async with user.session.post(
                    self.base_url + "/auth/logout", json=body, headers=headers
                ) as response:
                    text = await response.text()
                    if 200 <= response.status < 300:
                        acked = time.monotonic()
                        self.revocations.append((user.name, tried, acked, text))
                        return acked
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(RETRY_PAUSE)
        self.logouts_unanswered += 1
        return None

    async def _log_in_and_out(self, user: DemoUser) -> tuple[Held, float] | None:
        held = await self._login(user)
        if held is None:
            return None
        for kind in KINDS:  # controls: what the row accepts while the credential is live
            await self._present(user, held, kind, None)
        revoked_at = await self._logout(user, held)
        if revoked_at is None:
            return None
        return held, revoked_at

    async def revoke_before(self, users: Sequence[DemoUser]) -> list[tuple[Held, float]]:
        """Log ``users`` in and out; what each held and when its logout answered."""
        done = await asyncio.gather(*(self._log_in_and_out(user) for user in users))
        if any(entry is None for entry in done):
            raise RuntimeError("revoked clients: a login or logout before the fault failed")
        return [entry for entry in done if entry is not None]

    async def log_in(self, users: Sequence[DemoUser]) -> list[Held]:
        """Log ``users`` in (cookie and token) and check what they hold; for :meth:`revoke_now`."""

        async def one(user: DemoUser) -> Held | None:
            held = await self._login(user)
            if held is not None:
                for kind in KINDS:
                    await self._present(user, held, kind, None)
            return held

        done = await asyncio.gather(*(one(user) for user in users))
        if any(held is None for held in done):
            raise RuntimeError("revoked clients: a login before the fault failed")
        return [held for held in done if held is not None]

    async def revoke_now(self, user: DemoUser, held: Held) -> None:
        """Log out now (the fault has just begun: tried until a 2xx), then keep presenting."""
        revoked_at = await self._logout(user, held)
        if revoked_at is not None:
            await self.keep_presenting(user, held, revoked_at)

    async def keep_presenting(self, user: DemoUser, held: Held, revoked_at: float) -> None:
        """Present ``held``'s credentials, in turn, until :attr:`stopped`."""
        for index in range(MAX_CHECKS_PER_USER):
            if self.stopped.is_set():
                return
            await self._present(user, held, KINDS[index % 2], revoked_at)
            await asyncio.sleep(PAUSE)

    async def churn(self, user: DemoUser) -> None:
        """Log in, present, log out, present again; until :attr:`stopped`."""
        for _ in range(MAX_CHURN_CYCLES):
            if self.stopped.is_set():
                return
            entry = await self._log_in_and_out(user)
            if entry is None:
                continue
            held, revoked_at = entry
            for index in range(CHECKS_PER_REVOCATION):
                await self._present(user, held, KINDS[index % 2], revoked_at)
            await asyncio.sleep(CHURN_PAUSE)


async def _login_both(user: DemoUser, base_url: str) -> Held | None:
    """POST /auth/login asking for a session cookie and tokens; ``None`` unless 200."""
    credentials: dict[str, Any] = {
        "username": user.name,
        "password": PASSWORD,
        "credential": "both",
    }
    try:
        async with user.session.post(base_url + "/auth/login", json=credentials) as response:
            if response.status != 200:
                await response.read()
                return None
            payload = await response.json(content_type=None)
            cookies = {name: morsel.value for name, morsel in response.cookies.items()}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    if not isinstance(payload, dict) or len(cookies) != 1:
        return None
    ((name, value),) = cookies.items()
    bearer, refresh = payload.get("access_token"), payload.get("refresh_token")
    if not isinstance(bearer, str) or not isinstance(refresh, str):
        return None
    return Held(f"{name}={value}", bearer, refresh)
