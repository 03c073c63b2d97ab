"""Throttling of password guesses that holds under concurrency and cannot lock the owner out.

Reserve, then verify. Before any Argon2 work, :meth:`Regulator.reserve` counts
the attempt as a failure, atomically (one Lua script per hash slot), and only
if the budgets below still allow it; a correct password then gives the
reservation back (:meth:`Reservation.succeeded`). So a burst of simultaneous
guesses gets exactly as many verifications as the budget has left, never
"all of them, because each checked before any recorded".

Three budgets, each over the current and the previous window (so a burst
straddling a boundary still counts):

- per (account, address), a hard limit: one address that keeps guessing one
  account is refused for that account only;
- per address, a hard limit across accounts (password spraying);
- per account, a *soft* limit: past it, guesses from anywhere are spaced out,
  one per backoff slot (1 s, doubling, at most ``max_backoff``), never banned
  outright. An attacker with one address cannot reach it (the pair limit is
  lower), so the owner's own login from another address goes through; an
  attacker with many addresses gets a few guesses a minute, and the owner
  waits at most ``max_backoff`` for a slot.

A global budget is the bounded Argon2 work queue of each process. What an
address has already spent ranks its next attempt there (:attr:`Reservation.rank`,
see :class:`~tessera_auth.passwords.PasswordHasher`): an address that keeps
failing waits behind, and is refused before, one that has not.

The account's script and the address's go to Redis in one round trip (a login
makes four; ``make bench``, part 3). A guess one budget refuses is therefore also
counted, for a moment, by the other, and given back at once: a flood at one
account costs Redis a decrement per refused guess, and while it lasts the
address's count may read one higher for another guess, never lower.

Account names are counted whether or not they exist, so answers tell nothing
about which names are registered; all names and addresses are hashed before
they become Redis keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from tessera_platform.service_errors import DEPENDENCY_ERRORS
from tessera_verify import redis_layout
from tessera_verify.clock import Clock
from tessera_verify.errors import TooManyAttempts


@dataclass(frozen=True)
class RegulationPolicy:
    max_failures_per_account: int = 10  # soft: past it, one guess per backoff slot
    max_failures_per_address: int = 100
    window: int = 300  # seconds
    max_failures_per_pair: int = 5  # one address on one account: hard
    max_backoff: float = 30.0
    max_registrations_per_address: int = 0  # 0: off (read from the environment: 20)

    @property
    def enabled(self) -> bool:
        return (
            self.max_failures_per_account > 0
            or self.max_failures_per_address > 0
            or self.max_failures_per_pair > 0
        )


# KEYS: pair now, pair before, account now, account before, account's next slot.
# ARGV: now, pair limit, account limit, key TTL, max backoff.
# Returns {1, 0} when reserved (counted in both "now" buckets), or {0, seconds to wait}.
_RESERVE_ACCOUNT = """
local now = tonumber(ARGV[1])
local pair = tonumber(redis.call('GET', KEYS[1]) or '0')
  + tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > 0 and pair >= tonumber(ARGV[2]) then return {0, -1} end
local account = tonumber(redis.call('GET', KEYS[3]) or '0')
  + tonumber(redis.call('GET', KEYS[4]) or '0')
local limit = tonumber(ARGV[3])
if limit > 0 and account >= limit then
  local slot = tonumber(redis.call('GET', KEYS[5]) or '0')
  if now < slot then return {0, math.ceil(slot - now)} end
  local backoff = math.min(tonumber(ARGV[5]), 2 ^ (account - limit))
  redis.call('SET', KEYS[5], tostring(now + backoff), 'EX', ARGV[4])
end
for i = 1, 3, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return {1, 0}
"""

# KEYS: address now, address before. ARGV: limit, key TTL.
# Returns the count before this one when reserved, -1 over the limit.
_RESERVE_ADDRESS = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
  + tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) > 0 and count >= tonumber(ARGV[1]) then return -1 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return count
"""


def _hashed(value: str) -> str:
    # Attacker-chosen names never become raw Redis key material.
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


def _window_keys(subject: str, current: int) -> list[str]:
    """The counters of ``subject``'s current and previous windows."""
    return [
        redis_layout.login_failures(subject, current),
        redis_layout.login_failures(subject, current - 1),
    ]


@dataclass
class Reservation:
    """One attempt, counted as a failure until :meth:`succeeded` says otherwise."""

    _regulator: Regulator | None
    _keys: list[str] = field(default_factory=list)
    #: Attempts its address has counted in the windows before this one (its Argon2 rank).
    rank: int = 0

    async def succeeded(self) -> None:
        """The password was right: this attempt was no failure after all."""
        if self._regulator is not None and self._keys:
            keys, self._keys = self._keys, []
            await self._regulator.give_back(keys)


class Regulator:
    def __init__(self, redis: Redis, clock: Clock, policy: RegulationPolicy) -> None:
        self._redis = redis
        self._clock = clock
        self.policy = policy
        self._reserve_address = redis.register_script(_RESERVE_ADDRESS)

    def _windows(self) -> tuple[int, int]:
        """The current window's number, and the seconds until both counted windows age out."""
        now = self._clock.now()
        current = math.floor(now / self.policy.window)
        return current, (current + 2) * self.policy.window - math.floor(now)

    def _ttl(self) -> int:
        return 2 * self.policy.window

    async def _reserve_on_address(self, subject: str, limit: int) -> tuple[str, int] | None:
        """Count one attempt for ``subject``: its key and the count before it, or None
        when over ``limit``."""
        keys = _window_keys(subject, self._windows()[0])
        before = int(await self._reserve_address(keys=keys, args=[limit, self._ttl()]))
        return None if before < 0 else (keys[0], before)

    async def reserve(self, account: str, address: str) -> Reservation:
        """Count a password guess for ``account`` from ``address`` before verifying it;
        :class:`TooManyAttempts` (with an honest Retry-After) when no budget is left."""
        policy = self.policy
        if not policy.enabled:
            return Reservation(None)
        current, aged_out_in = self._windows()
        account_id = _hashed(account)
        pair = f"account:{account_id}:from:{_hashed(address)}"
        # The pair's keys carry the account's hash tag: one slot, one script.
        keys = [
            redis_layout.login_failures(f"account:{account_id}", current, name=pair),
            redis_layout.login_failures(f"account:{account_id}", current - 1, name=pair),
            redis_layout.login_failures(f"account:{account_id}", current),
            redis_layout.login_failures(f"account:{account_id}", current - 1),
            redis_layout.login_failures(f"account:{account_id}", 0, name="next-slot"),
        ]
        address_keys = _window_keys("address:" + _hashed(address), current)
        # The address is another slot, so another script; both go in one round trip
        # (EVAL, not EVALSHA: a pipeline of registered scripts costs a SCRIPT EXISTS
        # first). Each script checks and counts atomically on its own, so concurrent
        # guesses never pass a budget; when one refuses, what the other counted is
        # given back. Meanwhile it can only make another guess of the same address
        # or account look over budget, never under.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.eval(
                _RESERVE_ACCOUNT,
                len(keys),
                *keys,
                repr(self._clock.now()),
                policy.max_failures_per_pair,
                policy.max_failures_per_account,
                self._ttl(),
                repr(policy.max_backoff),
            )
            pipe.eval(
                _RESERVE_ADDRESS, 2, *address_keys, policy.max_failures_per_address, self._ttl()
            )
            account_reply, address_reply = await pipe.execute(raise_on_error=False)
        if isinstance(account_reply, Exception) or isinstance(address_reply, Exception):
            # One script failed (a shard failing over, out of memory) and the other may
            # have counted: give that back, or a Redis fault would outlive itself as a
            # spent budget. Then fail as the script did (the caller answers 503).
            await self._give_back_after_error(account_reply, address_reply, keys, address_keys)
            raise (account_reply if isinstance(account_reply, Exception) else address_reply)
        reserved, wait = account_reply
        rank = int(address_reply)
        if int(reserved) != 1:
            if rank >= 0:
                await self.give_back(address_keys[:1])
            raise TooManyAttempts(retry_after=aged_out_in if int(wait) < 0 else max(1, int(wait)))
        if rank < 0:
            await self.give_back([keys[0], keys[2]])
            raise TooManyAttempts(retry_after=aged_out_in)
        return Reservation(self, [address_keys[0], keys[0], keys[2]], rank=rank)

    async def _give_back_after_error(
        self, account_reply: Any, address_reply: Any, keys: list[str], address_keys: list[str]
    ) -> None:
        counted: list[str] = []
        if not isinstance(account_reply, Exception) and int(account_reply[0]) == 1:
            counted += [keys[0], keys[2]]
        if not isinstance(address_reply, Exception) and int(address_reply) >= 0:
            counted.append(address_keys[0])
        if counted:
            with contextlib.suppress(*DEPENDENCY_ERRORS):  # best effort: Redis is failing
                await self.give_back(counted)

    async def give_back(self, keys: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.decr(key)
            await pipe.execute()

    async def reserve_registration(self, address: str) -> int:
        """Count a registration from ``address`` (it costs an Argon2 hash): 429 past the
        limit; else its Argon2 rank (the address's registrations before it)."""
        limit = self.policy.max_registrations_per_address
        if limit <= 0:
            return 0
        on_address = await self._reserve_on_address("register:" + _hashed(address), limit)
        if on_address is None:
            raise TooManyAttempts(retry_after=self._windows()[1])
        return on_address[1]
